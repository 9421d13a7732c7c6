// The chunk fetcher: verified bytes of an object from memory, then the cache directory (re-verified), then the store
// (decoded and verified, then written to the cache directory). Concurrent requests for one object share one load
// (single-flight), and store fetches of any object (catalogs too) go through here.
import { LRUCache } from 'lru-cache';
import type { Store } from '../store/store.js';
import type { PackRef } from '../store/pack.js';
import { PackLoader } from './pack-fetch.js';
import type { Logger } from '../util/log.js';
import type { CacheDir } from './cache-dir.js';
import type { CacheCounters } from './counters.js';
import type { CacheIndex } from './quota.js';
import { errno, openVerified, readVerified } from './verify.js';

export interface FetcherParts {
  dir: CacheDir;
  index: CacheIndex;
  store: Store;
  /** Byte budget for decoded hot chunks kept in memory (0 disables). */
  memBytes: number;
  counters: CacheCounters;
  log: Logger;
  /** Keep a background write alive until shutdown (flush). */
  track(p: Promise<void>): void;
}

export class ChunkFetcher {
  /** When a reader last asked for a chunk (the whole-file builder waits for quiet). */
  lastUse = 0;
  private readonly mem: LRUCache<string, Buffer> | null;
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private readonly fetching = new Map<string, Promise<Buffer>>();
  private readonly packs: PackLoader;
  private readonly debug: boolean;

  constructor(private readonly p: FetcherParts) {
    this.debug = p.log.isLevelEnabled('debug');
    this.mem = p.memBytes > 0
      ? new LRUCache<string, Buffer>({ maxSize: p.memBytes, sizeCalculation: (b) => Math.max(1, b.length) })
      : null;
    this.packs = new PackLoader({ store: p.store, counters: p.counters, log: p.log, cached: (h) => p.index.has(h),
      land: (hash, data) => { this.mem?.set(hash, data); this.p.track(this.writeLocal(hash, data)); } });
  }

  get memBytes(): number { return this.mem?.calculatedSize ?? 0; }

  /**
   * Verified bytes of a chunk. Concurrent requests for one chunk share one load. `pack`: the catalog says the chunk also
   * travels in this pack: a miss fetches the pack (one request) and lands its other members in the cache too.
   */
  get(hash: string, size?: number, pack?: PackRef): Promise<Buffer> {
    this.lastUse = Date.now();
    const m = this.mem?.get(hash) ?? this.packs.landed(hash);
    if (m) { this.p.counters.memHits++; return Promise.resolve(m); }
    const running = this.inflight.get(hash);
    if (running) { this.p.counters.joined++; return running; }
    const p = this.load(hash, size, pack).finally(() => this.inflight.delete(hash));
    this.inflight.set(hash, p);
    return p;
  }

  /** True when a chunk is already local (memory or disk index): no store round trip needed. */
  isLocal(hash: string): boolean { return !!this.mem?.has(hash) || this.p.index.has(hash) || !!this.packs.landed(hash); }

  /**
   * Load a chunk from the cache directory into memory ahead of a sequential reader. Never touches the store
   * (speculative store fetches are what the prefetch list is for), and is a no-op without a memory cache.
   */
  warm(hash: string, size: number): void {
    if (!this.mem || this.mem.has(hash) || this.inflight.has(hash) || !this.p.index.has(hash)) return;
    this.p.counters.localReadahead++;
    this.get(hash, size).catch(() => { /* the reader will see the error itself, if it gets there */ });
  }

  private async load(hash: string, size?: number, pack?: PackRef): Promise<Buffer> {
    const local = await this.readLocal(hash, size);
    if (local) {
      this.p.counters.diskHits++;
      this.mem?.set(hash, local);
      return local;
    }
    // From its pack when it has one (the pack's members land as they verify); else, or when the pack cannot give it
    // (missing, corrupt), its own object.
    if (pack) {
      const got = await this.packs.member(pack, hash, size);
      if (got) return got;
    }
    const data = await this.fetchObject(hash, size);
    this.mem?.set(hash, data);
    this.p.track(this.writeLocal(hash, data));
    return data;
  }

  /**
   * A cached chunk's verified bytes, or null (not there, or corrupt: then dropped). Also finds chunks this process has
   * not indexed: another mount sharing the directory may have fetched them.
   */
  async readLocal(hash: string, size?: number): Promise<Buffer | null> {
    const file = this.p.dir.chunkPath(hash);
    const got = await readVerified(file, hash, size, (e) => this.p.log.warn({ object: hash, file, errno: e }, 'cannot read cached chunk: refetching'));
    if (got === 'corrupt') return this.dropCorrupt(hash, 'cached chunk is corrupt: dropped, refetching');
    if (got === 'missing') {
      this.p.index.delete(hash);
      return null;
    }
    if (!this.p.index.touch(hash)) this.p.index.add(hash, got.length);
    return got;
  }

  /**
   * An open descriptor of the cached chunk holding exactly these bytes, for the kernel to read directly (passthrough),
   * re-verified now on the threadpool (which also warms the page cache the kernel will read from). Null when not
   * cached or corrupt (then dropped). The caller closes the descriptor.
   */
  async openVerifiedChunk(hash: string, size: number): Promise<number | null> {
    // An open is a reader too, though its reads go to the kernel: background work (copies, re-verification) waits.
    this.lastUse = Date.now();
    if (!this.p.index.has(hash)) return null;
    const r = await openVerified(this.p.dir.chunkPath(hash), size, hash);
    if (r >= 0) { this.p.index.touch(hash); return r; }
    if (r === -errno.EBADMSG) return this.dropCorrupt(hash, 'cached chunk is corrupt: dropped, refetching');
    this.p.index.delete(hash);
    return null;
  }

  /**
   * Decoded, verified bytes of any object from the store (chunks and catalogs), no more than `size` (what the catalog
   * or manifest says) read when known; concurrent requests share one fetch.
   */
  fetchObject(hash: string, size?: number, what: 'chunk' | 'catalog' = 'chunk'): Promise<Buffer> {
    const running = this.fetching.get(hash);
    if (running) { this.p.counters.joined++; return running; }
    const p = this.fetchNow(hash, size, what).finally(() => this.fetching.delete(hash));
    this.fetching.set(hash, p);
    return p;
  }

  private async fetchNow(hash: string, size: number | undefined, what: 'chunk' | 'catalog'): Promise<Buffer> {
    const c = this.p.counters;
    const t0 = Date.now();
    try {
      const { data, rawBytes } = await this.p.store.fetchObject(hash, size);
      // Per-fetch detail for bench/coldstart-where.ts (the critical path of a cold start); off unless debug.
      if (this.debug) this.p.log.debug({ ev: 'fetch', object: hash, what, bytes: rawBytes, t0, ms: Date.now() - t0 }, 'fetched');
      c.fetches++;
      if (what === 'catalog') c.catalogFetches++;
      c.fetchedBytes += rawBytes;
      c.fetchedDecodedBytes += data.length;
      return data;
    } catch (e) {
      c.errors++;
      throw e;
    }
  }

  /** Forget and remove a cached file that failed verification (any key: chunk, whole-file copy, catalog). */
  async dropCorrupt(key: string, msg: string, extra: Record<string, unknown> = {}): Promise<null> {
    this.p.counters.corruptDropped++;
    this.p.log.warn({ object: key, file: this.p.dir.pathOf(key), ...extra }, msg);
    this.p.index.delete(key);
    await this.p.dir.remove(key);
    return null;
  }

  private async writeLocal(hash: string, data: Buffer): Promise<void> {
    try {
      if (data.length > this.p.index.quota) return;
      await this.p.dir.write(hash, data);
      this.p.index.add(hash, data.length);
    } catch (e) {
      this.p.log.warn({ object: hash, err: e }, 'cannot write chunk to the cache directory');
    } finally {
      this.packs.written(hash);
    }
  }
}
