// The catalog cache: layer catalogs (SQLite files) kept in the cache directory's catalogs/, verified by a streamed
// hash each time a layer loads one (never read whole into memory), fetched from the store when missing or damaged.
// A loaded layer's catalog is pinned in the cache index (it counts against the quota but stays); released, it is an
// ordinary LRU entry and may be evicted.
import type { Logger } from '../util/log.js';
import type { CacheDir } from './cache-dir.js';
import type { CacheCounters } from './counters.js';
import type { ChunkFetcher } from './fetcher.js';
import type { CacheIndex } from './quota.js';
import { errno, fdClose, openVerified } from './verify.js';
import { stat } from 'node:fs/promises';

export interface CatalogParts {
  dir: CacheDir;
  index: CacheIndex;
  fetcher: ChunkFetcher;
  counters: CacheCounters;
  log: Logger;
}

const keyOf = (hash: string) => `c:${hash}`;

export class CatalogCache {
  constructor(private readonly p: CatalogParts) {}

  /**
   * Local path of a verified catalog database, fetched from the store when not cached (or damaged), and pinned until
   * release(hash). `size` is the decoded size the layer manifest records, when it does.
   */
  async acquire(hash: string, size?: number): Promise<string> {
    const key = keyOf(hash);
    // Pinned first: an eviction between the check and the caller's open would otherwise be possible.
    this.p.index.pin(key);
    try {
      const path = this.p.dir.catalogPath(hash);
      const have = await this.check(hash, path, size);
      if (have !== null) {
        if (!this.p.index.touch(key)) this.p.index.add(key, have);
        return path;
      }
      const data = await this.p.fetcher.fetchObject(hash, size, 'catalog');
      await this.p.dir.write(key, data);
      this.p.index.add(key, data.length);
      return path;
    } catch (e) {
      this.p.index.unpin(key);
      throw e;
    }
  }

  /** The layer no longer uses its catalog: evictable again. */
  release(hash: string): void { this.p.index.unpin(keyOf(hash)); }

  /** The cached copy's size when it is intact (hashed streaming, off the JS thread), else null (a damaged one dropped). */
  private async check(hash: string, path: string, size?: number): Promise<number | null> {
    const want = size ?? (await stat(path).catch(() => null))?.size;
    if (want === undefined) { this.p.index.delete(keyOf(hash)); return null; }
    const fd = await openVerified(path, want, hash);
    if (fd >= 0) { await fdClose(fd).catch(() => {}); return want; }
    if (fd === -errno.EBADMSG) await this.p.fetcher.dropCorrupt(keyOf(hash), 'cached catalog is corrupt: refetching');
    else this.p.index.delete(keyOf(hash));
    return null;
  }
}
