// The catalog cache: layer catalogs (SQLite files) kept in the cache directory's catalogs/, verified by a streamed
// hash each time a layer loads one (never read whole into memory), fetched from the store when missing or damaged.
// A loaded layer's catalog is pinned in the cache index (it counts against the quota but stays); released, it is an
// ordinary LRU entry and may be evicted. Also keeps each catalog's listings (the pre-encoded directory listings the
// mount serves, which catalogs do not ship): built once per node next to the catalog, checked against the SHA-256 in
// their name and their stamp (catalog hash, format) at every load, counted and evicted with the catalog.
import type { Logger } from '../util/log.js';
import type { CacheDir } from './cache-dir.js';
import type { CacheCounters } from './counters.js';
import type { ChunkFetcher } from './fetcher.js';
import type { CacheIndex } from './quota.js';
import { errno, fdClose, openVerified } from './verify.js';
import { buildListingsFile, LISTINGS_FORMAT, readListingsStamp } from '../catalog/dirblocks.js';
import { createReadStream } from 'node:fs';
import { open, rm, stat, unlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';

export interface CatalogParts {
  dir: CacheDir;
  index: CacheIndex;
  fetcher: ChunkFetcher;
  counters: CacheCounters;
  log: Logger;
}

const keyOf = (hash: string) => `c:${hash}`;

export class CatalogCache {
  /** Listings being checked or built, by catalog hash: concurrent loads of one catalog share the work. */
  private readonly listingsPending = new Map<string, Promise<string | null>>();
  /** Catalogs being checked or fetched, by hash. */
  private readonly acquiring = new Map<string, Promise<string>>();

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
      // Concurrent acquires of one catalog (an early one, from an image descriptor, then the layer's) share the work.
      let p = this.acquiring.get(hash);
      if (!p) {
        p = this.place(hash, size).finally(() => this.acquiring.delete(hash));
        this.acquiring.set(hash, p);
      }
      return await p;
    } catch (e) {
      this.p.index.unpin(key);
      throw e;
    }
  }

  private async place(hash: string, size?: number): Promise<string> {
    const key = keyOf(hash);
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
  }

  /**
   * Path of a checked listings file for an acquired catalog: the kept one when its bytes match the SHA-256 in its
   * name and its stamp names this catalog and format, else built now (on this thread, once per node) and kept. Null
   * when it cannot be kept (the cache directory refused the write): the caller builds its own.
   */
  listings(hash: string, catalogPath: string): Promise<string | null> {
    let p = this.listingsPending.get(hash);
    if (!p) {
      p = this.listingsNow(hash, catalogPath).finally(() => this.listingsPending.delete(hash));
      this.listingsPending.set(hash, p);
    }
    return p;
  }

  private async listingsNow(hash: string, catalogPath: string): Promise<string | null> {
    const { dir, counters, log } = this.p;
    let keep: { path: string; size: number } | null = null;
    for (const f of await dir.listingsOf(hash)) {
      const size: number = keep ? -1 : await this.checkListings(hash, f.path, f.sha);
      if (size >= 0) { keep = { path: f.path, size }; continue; }
      // Extras (two mounts built at once) go quietly; a rejected file is reported.
      if (!keep) {
        counters.listingsRejected++;
        log.warn({ catalog: hash, file: f.path }, 'cached listings are damaged or not this catalog\'s: rebuilding');
      }
      await unlink(f.path).catch(() => {});
    }
    if (keep) counters.listingsReused++;
    else {
      try { keep = await this.buildListings(hash, catalogPath); } catch (e) {
        log.warn({ catalog: hash, err: e }, 'cannot keep listings in the cache directory: building them for this run only');
        return null;
      }
      counters.listingsBuilt++;
    }
    // The catalog's entry counts both files (it was indexed by acquire; evicting it removes both).
    const catSize = (await stat(catalogPath).catch(() => null))?.size;
    if (catSize !== undefined) this.p.index.resize(keyOf(hash), catSize + keep.size);
    return keep.path;
  }

  /** The listings file's size when its bytes hash to `sha` and its stamp is this catalog's and this format's, else -1. */
  private async checkListings(hash: string, path: string, sha: string): Promise<number> {
    const size = (await stat(path).catch(() => null))?.size;
    if (size === undefined) return -1;
    const fd = await openVerified(path, size, sha);
    if (fd < 0) return -1;
    await fdClose(fd).catch(() => {});
    const stamp = readListingsStamp(path);
    return stamp?.catalog === hash && stamp.format === LISTINGS_FORMAT ? size : -1;
  }

  /** Build into a private temp file, hash it, rename it into place (readers see a whole file or none). */
  private async buildListings(hash: string, catalogPath: string): Promise<{ path: string; size: number }> {
    const { dir } = this.p;
    const tmp = dir.tmpName(`listings-${hash}`);
    try {
      await (await open(tmp, 'wx', 0o600)).close();
      buildListingsFile(catalogPath, tmp, hash);
      const h = createHash('sha256');
      let size = 0;
      for await (const b of createReadStream(tmp)) { h.update(b as Buffer); size += (b as Buffer).length; }
      return { path: await dir.placeListings(tmp, hash, h.digest('hex')), size };
    } catch (e) {
      await rm(tmp, { force: true });
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
