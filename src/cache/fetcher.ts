// The chunk fetcher: verified bytes of an object from memory, then the cache directory (re-verified), then the store
// (decoded and verified, then written to the cache directory). Concurrent requests for one object share one load
// (single-flight), and store fetches of any object (catalogs too) go through here. Landing: a chunk made a verified
// cache file without its bytes coming to JS (fetched, decoded, verified and written in one threadpool job from a store
// on a filesystem), named with that file's identity, so the FUSE transport answers reads from the file itself.
import { LRUCache } from 'lru-cache';
import { createHash } from 'node:crypto';
import type { Store } from '../store/store.js';
import type { PackRef } from '../store/pack.js';
import { PackLoader } from './pack-fetch.js';
import type { Logger } from '../util/log.js';
import type { CacheDir } from './cache-dir.js';
import type { CacheCounters } from './counters.js';
import type { CacheIndex } from './quota.js';
import { errno, openVerified, readVerified } from './verify.js';
import { tryNative } from '../util/native.js';
import { DECODE_IO, DECODE_MISSING, objectRefused } from '../store/codec.js';
import { NotFoundError } from '../util/errors.js';

/** A chunk in a cache file whose bytes were verified, and that file's identity then (src/util/native/fileid.h). */
export interface LandedChunk { path: string; id: Buffer }

interface NativeLand {
  landObject(objectFile: string, hash: string, size: number, tmp: string, dest: string): Promise<[Buffer, number] | number>;
  identifyVerified(path: string, size: number, hash: string): Promise<Buffer | number>;
}
/** landObject: the object verified but its cache file not written (then it is fetched the usual way). */
const LAND_WRITE = -1000;
/**
 * A chunk whose load failed after this long (a store that hangs or trickles on every mirror, to the read's deadline)
 * fails again at once for FAILED_TTL_MS: the kernel asks again for a READ whose readahead failed, at once, and other
 * readers of the chunk pile up behind it; each would wait out the whole deadline again (EIO after twice --http-timeout).
 * Quick failures (missing, corrupt, a local store) are not remembered: a retry may well find the object repaired.
 */
const SLOW_FAILURE_MS = 1000;
const FAILED_TTL_MS = 2000;
/** Chunks remembered as failed at most (oldest dropped first). */
const FAILED_MAX = 1024;

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
  /** Chunks whose cache file this process wrote or verified: the file's identity then. */
  private readonly landedIds = new Map<string, Buffer>();
  private readonly landing = new Map<string, Promise<LandedChunk | null>>();
  /** Cache writes under way (writeLocal), by chunk. */
  private readonly writes = new Map<string, Promise<void>>();
  /** Chunks whose load failed slowly a moment ago: when, and the error (SLOW_FAILURE_MS). */
  private readonly failed = new Map<string, { at: number; err: unknown }>();

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
    const f = this.failed.get(hash);
    if (f) {
      if (Date.now() - f.at < FAILED_TTL_MS) { this.p.counters.failedFast++; return Promise.reject(f.err); }
      this.failed.delete(hash);
    }
    const t0 = Date.now();
    const p = this.load(hash, size, pack).catch((e: unknown) => {
      if (Date.now() - t0 >= SLOW_FAILURE_MS) {
        if (this.failed.size >= FAILED_MAX) this.failed.delete(this.failed.keys().next().value!);
        this.failed.set(hash, { at: Date.now(), err: e });
      }
      throw e;
    }).finally(() => this.inflight.delete(hash));
    this.inflight.set(hash, p);
    return p;
  }

  /**
   * A chunk on its way by another road (a trace's page data segment): until `source` settles, readers of it join that
   * instead of fetching it; bytes that hash to its name land in the cache as if fetched. Anything else (null, a
   * mismatch) and the chunk is loaded the usual way, for whoever joined.
   */
  expect(hash: string, size: number, source: Promise<Buffer | null>): void {
    if (this.isLocal(hash) || this.inflight.has(hash)) return;
    const p = source.then((data) => {
      if (data && data.length === size && createHash('sha256').update(data).digest('hex') === hash) {
        this.mem?.set(hash, data);
        this.p.track(this.writeLocal(hash, data));
        return data;
      }
      if (data) this.p.log.warn({ object: hash }, 'a chunk in page data does not hash to its name: fetching it');
      return this.load(hash, size);
    }, () => this.load(hash, size)).finally(() => this.inflight.delete(hash));
    p.catch(() => { /* a reader that joined sees the error */ });
    this.inflight.set(hash, p);
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
    // (missing, corrupt), its own object, within what is left of the read's time (a hanging store: one deadline).
    const t0 = Date.now();
    if (pack) {
      const got = await this.packs.member(pack, hash, size);
      if (got) return got;
    }
    const data = await this.fetchObject(hash, size, 'chunk', pack ? t0 : undefined);
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
  fetchObject(hash: string, size?: number, what: 'chunk' | 'catalog' = 'chunk', startedAt?: number): Promise<Buffer> {
    const running = this.fetching.get(hash);
    if (running) { this.p.counters.joined++; return running; }
    const p = this.fetchNow(hash, size, what, startedAt).finally(() => this.fetching.delete(hash));
    this.fetching.set(hash, p);
    return p;
  }

  /** One object fetched from the store (read as rawBytes, decodedBytes once decoded): counted, and logged per fetch. */
  private fetched(hash: string, what: 'chunk' | 'catalog', rawBytes: number, decodedBytes: number, t0: number): void {
    // Per-fetch detail for bench/coldstart-where.ts (the critical path of a cold start); off unless debug.
    if (this.debug) this.p.log.debug({ ev: 'fetch', object: hash, what, bytes: rawBytes, t0, ms: Date.now() - t0 }, 'fetched');
    const c = this.p.counters;
    c.fetches++;
    if (what === 'catalog') c.catalogFetches++;
    c.fetchedBytes += rawBytes;
    c.fetchedDecodedBytes += decodedBytes;
  }

  private async fetchNow(hash: string, size: number | undefined, what: 'chunk' | 'catalog', startedAt?: number): Promise<Buffer> {
    const c = this.p.counters;
    const t0 = Date.now();
    try {
      const { data, rawBytes } = await this.p.store.fetchObject(hash, size, { startedAt });
      this.fetched(hash, what, rawBytes, data.length, t0);
      return data;
    } catch (e) {
      c.errors++;
      throw e;
    }
  }

  /** The chunk's verified cache file when this process landed it (and the index still has it), else null. */
  landedNow(hash: string): LandedChunk | null {
    const id = this.landedIds.get(hash);
    return id && this.p.index.has(hash) ? { path: this.p.dir.chunkPath(hash), id } : null;
  }

  /** The chunk's cache file is gone or changed (evicted, dropped, found changed by the transport): verified again next time. */
  forgetLanded(hash: string): void { this.landedIds.delete(hash); }

  /**
   * The chunk in a verified cache file, for the transport to read itself: already there (hashed again now unless this
   * process wrote or verified it), or fetched from a filesystem store straight into the cache (no bytes through JS),
   * or fetched the usual way and written (network stores, packs). Null when no such file can be had (no addon, over
   * the quota, a write that failed): the caller reads its bytes with get(). Throws as get() does (missing, corrupt).
   */
  land(hash: string, size: number, pack?: PackRef): Promise<LandedChunk | null> {
    this.lastUse = Date.now();
    const have = this.landedNow(hash);
    if (have) return Promise.resolve(have);
    const running = this.landing.get(hash);
    if (running) { this.p.counters.joined++; return running; }
    const p = this.landNow(hash, size, pack).finally(() => this.landing.delete(hash));
    this.landing.set(hash, p);
    return p;
  }

  private async landNow(hash: string, size: number, pack?: PackRef): Promise<LandedChunk | null> {
    const nat = tryNative<NativeLand>();
    if (!nat?.landObject || !nat.identifyVerified || size > this.p.index.quota) { await this.get(hash, size, pack); return null; }
    // A load of it under way (a reader's get): its bytes land in the cache through writeLocal.
    const loading = this.inflight.get(hash);
    if (loading) await loading;
    const found = await this.identifyLocal(nat, hash, size);
    if (found) return found;
    const obj = pack ? null : this.p.store.objectFile(hash);
    if (obj) {
      const c = this.p.counters, t0 = Date.now();
      const path = this.p.dir.chunkPath(hash);
      const r = await nat.landObject(obj, hash, size, this.p.dir.tmpName(hash), path);
      if (typeof r !== 'number') {
        this.fetched(hash, 'chunk', r[1], size, t0);
        this.p.index.add(hash, size);
        this.landedIds.set(hash, r[0]);
        return { path, id: r[0] };
      }
      if (r === DECODE_MISSING) { c.errors++; throw new NotFoundError(`object ${hash} not found in store ${this.p.store.location}`); }
      if (r < 0 && r !== DECODE_IO && r !== LAND_WRITE) { c.errors++; throw objectRefused(hash, r, size); }
      // 1 (a codec left to JS), an I/O error, a cache write that failed: the usual way below.
    }
    await this.get(hash, size, pack);
    await this.writes.get(hash);
    return this.identifyLocal(nat, hash, size);
  }

  /** A chunk already in the cache directory: its identity, once its bytes hash to its name (a corrupt one is dropped). */
  private async identifyLocal(nat: NativeLand, hash: string, size: number): Promise<LandedChunk | null> {
    const pending = this.writes.get(hash);
    if (pending) await pending;
    if (!this.p.index.has(hash)) return null;
    const path = this.p.dir.chunkPath(hash);
    const r = await nat.identifyVerified(path, size, hash);
    if (typeof r !== 'number') {
      this.p.counters.diskHits++;
      this.p.index.touch(hash);
      this.landedIds.set(hash, r);
      return { path, id: r };
    }
    if (r === -errno.EBADMSG) return this.dropCorrupt(hash, 'cached chunk is corrupt: dropped, refetching');
    this.p.index.delete(hash);
    return null;
  }

  /** Forget and remove a cached file that failed verification (any key: chunk, whole-file copy, catalog). */
  async dropCorrupt(key: string, msg: string, extra: Record<string, unknown> = {}): Promise<null> {
    this.p.counters.corruptDropped++;
    this.landedIds.delete(key);
    this.p.log.warn({ object: key, file: this.p.dir.pathOf(key), ...extra }, msg);
    this.p.index.delete(key);
    await this.p.dir.remove(key);
    return null;
  }

  private writeLocal(hash: string, data: Buffer): Promise<void> {
    const w = this.writeNow(hash, data).finally(() => { if (this.writes.get(hash) === w) this.writes.delete(hash); });
    this.writes.set(hash, w);
    return w;
  }

  private async writeNow(hash: string, data: Buffer): Promise<void> {
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
