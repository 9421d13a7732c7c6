// The node-local cache as the mount sees it: one object wiring the cache directory (cache-dir.ts), the index and quota
// over everything in it (quota.ts), the chunk fetcher (fetcher.ts), the whole-file builder (whole-file.ts) and the
// catalog cache (catalog-cache.ts). Shared safely by several mounts on one node; survives restarts (the index is
// rebuilt from the directory, nothing refetched).
import type { Store } from '../store/store.js';
import type { PackRef } from '../store/pack.js';
import type { ChunkRef } from '../catalog/reader.js';
import type { Logger } from '../util/log.js';
import { CacheDir } from './cache-dir.js';
import { CatalogCache } from './catalog-cache.js';
import { newCounters, type CacheCounters } from './counters.js';
import { ChunkFetcher, type LandedChunk } from './fetcher.js';
import { CacheIndex, type CacheKey } from './quota.js';
import { WholeFileBuilder } from './whole-file.js';

export { fdClose } from './verify.js';
export { chunkMapText } from './copy-trust.js';
export type { CacheCounters } from './counters.js';
export type { LandedChunk } from './fetcher.js';

export interface CacheOptions {
  dir: string;
  /** Byte budget for the cache directory: chunks, whole-file copies and catalogs (LRU eviction beyond it). */
  quota: number;
  /** Byte budget for decoded hot chunks kept in memory (0 disables). */
  memBytes: number;
  store: Store;
  log: Logger;
}

export class NodeCache {
  readonly counters: CacheCounters = newCounters();
  private readonly index: CacheIndex;
  private readonly fetcher: ChunkFetcher;
  private readonly files: WholeFileBuilder;
  private readonly catalogs: CatalogCache;
  private readonly dir: CacheDir;
  private readonly pending = new Set<Promise<void>>();

  /** Told of each key the LRU evicts (a file the kernel may still hold as a passthrough backing file). */
  onEvict: ((key: CacheKey) => void) | null = null;

  private constructor(private readonly o: CacheOptions) {
    const { counters } = this;
    const log = o.log;
    const dir = (this.dir = new CacheDir(o.dir));
    const track = (p: Promise<void>) => this.track(p);
    this.index = new CacheIndex(Math.max(1, o.quota), (key) => {
      counters.evictions++;
      if (key.startsWith('c:')) counters.catalogEvictions++;
      if (key.startsWith('f:')) this.files.forget(key);
      else this.fetcher.forgetLanded(key);
      void dir.remove(key);
      this.onEvict?.(key);
    });
    this.fetcher = new ChunkFetcher({ dir, index: this.index, store: o.store, memBytes: o.memBytes, counters, log: o.log, track });
    this.files = new WholeFileBuilder({ dir, index: this.index, fetcher: this.fetcher, counters, log, track,
      dropped: (key) => this.onEvict?.(key) });
    this.catalogs = new CatalogCache({ dir, index: this.index, fetcher: this.fetcher, counters, log });
  }

  /** Open (creating, private) the cache directory and rebuild the index from what is already there. */
  static async open(o: CacheOptions): Promise<NodeCache> {
    const c = new NodeCache(o);
    await c.dir.create();
    // Oldest first, so the LRU order after a restart approximates the order of last use.
    const found = await c.dir.scan();
    for (const f of found) c.index.add(f.key, f.size);
    o.log.info({ cacheDir: o.dir, objects: c.index.count, bytes: c.index.usedBytes, quota: o.quota }, 'cache index rebuilt');
    // Copies trusted by record are passed through at once; their bytes are re-read in the background (most recent first).
    c.files.reverifyAll(found.filter((f) => f.key.startsWith('f:') && c.index.has(f.key)).map((f) => f.key).reverse());
    return c;
  }

  get quota(): number { return this.o.quota; }
  get usedBytes(): number { return this.index.usedBytes; }
  get usedObjects(): number { return this.index.count; }
  get memBytes(): number { return this.fetcher.memBytes; }
  get assemblingFiles(): number { return this.files.assemblingFiles; }

  /** Verified bytes of a chunk (memory, cache directory, store: through its pack when the catalog names one). */
  get(hash: string, size?: number, pack?: PackRef): Promise<Buffer> { return this.fetcher.get(hash, size, pack); }
  isLocal(hash: string): boolean { return this.fetcher.isLocal(hash); }
  /** A chunk coming by another road (a trace's page data): readers wait for it; checked by its hash (Fetcher.expect). */
  expect(hash: string, size: number, source: Promise<Buffer | null>): void { this.fetcher.expect(hash, size, source); }
  /**
   * The chunk in a verified cache file (path and identity) for the FUSE transport to read itself: fetched straight into
   * the cache from a filesystem store (no bytes through JS), or the usual way and written. Null: read it with get().
   */
  land(hash: string, size: number, pack?: PackRef): Promise<LandedChunk | null> { return this.fetcher.land(hash, size, pack); }
  /** A chunk this process landed and the index still has (no I/O), or null. */
  landedNow(hash: string): LandedChunk | null { return this.fetcher.landedNow(hash); }
  /** A landed chunk's file was found changed: verified again before it is handed out again. */
  forgetLanded(hash: string): void { this.fetcher.forgetLanded(hash); }
  /**
   * Set when the transport reads landed chunks itself: prefetches land chunks in the cache directory instead of
   * bringing their bytes into memory.
   */
  landForPrefetch = false;
  /** A prefetch of a chunk: landed (landForPrefetch) or loaded into memory. */
  async prefetch(hash: string, size: number, pack?: PackRef): Promise<void> {
    if (this.landForPrefetch) await this.fetcher.land(hash, size, pack);
    else await this.fetcher.get(hash, size, pack);
  }
  /** The path of a chunk in the cache directory when the index has it (its bytes are checked by whoever opens it). */
  chunkFile(hash: string): string | null { return this.index.has(hash) ? this.dir.chunkPath(hash) : null; }
  /** A chunk was used without this process reading it (the transport did): recently used, for the LRU. */
  touch(hash: string): void { this.index.touch(hash); }
  warm(hash: string, size: number): void { this.fetcher.warm(hash, size); }
  openVerifiedChunk(hash: string, size: number): Promise<number | null> { return this.fetcher.openVerifiedChunk(hash, size); }
  openWholeFile(fileId: string, chunks: ChunkRef[], size: number): Promise<number | null> { return this.files.open(fileId, chunks, size); }
  assemble(fileId: string, chunks: ChunkRef[], size: number): void { this.files.assemble(fileId, chunks, size); }
  /** Local path of a verified catalog, pinned until releaseCatalog. */
  catalogFile(hash: string, size?: number): Promise<string> { return this.catalogs.acquire(hash, size); }
  /** A checked listings file for an acquired catalog, kept in the cache (built on first use); null: build your own. */
  catalogListings(hash: string, catalogPath: string): Promise<string | null> { return this.catalogs.listings(hash, catalogPath); }
  releaseCatalog(hash: string): void { this.catalogs.release(hash); }

  private track(p: Promise<void>): void {
    this.pending.add(p);
    const done = () => { this.pending.delete(p); };
    p.then(done, done);
  }

  /** Wait for background cache writes (clean shutdown: the next start finds them). */
  async flush(): Promise<void> {
    this.files.close();
    while (this.pending.size) await Promise.allSettled([...this.pending]);
  }
}
