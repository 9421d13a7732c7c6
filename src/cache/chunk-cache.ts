import { chmod, mkdir, open, readdir, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { close as closeCb, fstat as fstatCb, open as openCb, read as readCb } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { LRUCache } from 'lru-cache';
import type { Store } from '../store/store.js';
import type { ChunkRef } from '../catalog/reader.js';
import { sha256hex } from '../util/hash.js';
import type { Logger } from '../util/log.js';
import { tryNative } from '../util/native.js';
import { ThinfsError } from '../util/errors.js';

/** Threadpool read + SHA-256 (src/cache/native/readverify.c): a Buffer, or -errno (-EBADMSG: wrong size or hash). */
interface ReadVerify {
  readVerified(path: string, size: number, sha256hex: string): Promise<Buffer | number>;
  /** The file opened after the checks (sha256hex '' = its size only): fd, or -errno (-EBADMSG: wrong size or bytes). */
  openVerified(path: string, size: number, sha256hex: string): Promise<number>;
  /** Bytes [start, end) of an open file against packed chunk records (offset u64le, size u64le, SHA-256): 0 or -errno. */
  verifyRanges(fd: number, start: number, end: number, ranges: Buffer): Promise<number>;
}
const { errno } = constants;
const fdOpen = promisify(openCb), fdStat = promisify(fstatCb), fdRead = promisify(readCb);
/** Close a descriptor this module handed out (after the kernel took its own reference). */
export const fdClose = promisify(closeCb);

/** Open for reading (JS fallback of openVerified): the fd, -EBADMSG when the size is not the expected one, or null. */
async function openFd(file: string, size?: number): Promise<number | null> {
  const fd = await fdOpen(file, 'r').catch(() => null);
  if (fd === null) return null;
  if (size !== undefined && (await fdStat(fd)).size !== size) { await fdClose(fd); return -errno.EBADMSG; }
  return fd;
}

/**
 * The cache holds the content of every file read through the mount, whatever its mode in the image (a 0600 file's
 * chunks, small files inlined in catalogs): only the daemon's user may enter it, as on a multi-user node anyone could
 * otherwise read what the mount's permissions keep from them.
 */
const PRIVATE_DIR = 0o700, PRIVATE_FILE = 0o600;

/** chmod for the start-up repair of an older cache; a file gone meanwhile (another mount evicted it) is fine. */
async function makePrivate(p: string, mode: number): Promise<void> {
  await chmod(p, mode).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
}

/** Whole-file copies at least this big are verified by two threadpool jobs at once (the machine kind has 2 cores). */
const SPLIT_VERIFY = 8 << 20;

/**
 * A file's bytes against its chunk map: each chunk's range hashes to its name, the rest reads as zeros. 0, or
 * -EBADMSG on a mismatch, or -errno. Native (threadpool, split at a chunk boundary near the middle) or, without
 * the addon, here.
 */
async function verifyRanges(fd: number, chunks: ChunkRef[], size: number): Promise<number> {
  const nat = tryNative<ReadVerify>();
  if (!nat) return verifyRangesJs(fd, chunks, size);
  const pack = (cs: ChunkRef[]) => {
    const b = Buffer.alloc(cs.length * 48);
    cs.forEach((c, i) => { b.writeBigUInt64LE(BigInt(c.offset), i * 48); b.writeBigUInt64LE(BigInt(c.size), i * 48 + 8); b.write(c.hash, i * 48 + 16, 32, 'hex'); });
    return b;
  };
  let cut = 0;
  if (size >= SPLIT_VERIFY) while (cut < chunks.length - 1 && chunks[cut]!.offset + chunks[cut]!.size <= size / 2) cut++;
  if (cut === 0) return nat.verifyRanges(fd, 0, size, pack(chunks));
  const mid = chunks[cut]!.offset;
  const rs = await Promise.all([nat.verifyRanges(fd, 0, mid, pack(chunks.slice(0, cut))), nat.verifyRanges(fd, mid, size, pack(chunks.slice(cut)))]);
  return rs.find((r) => r !== 0) ?? 0;
}

async function verifyRangesJs(fd: number, chunks: ChunkRef[], size: number): Promise<number> {
  const read = async (off: number, len: number) => {
    const b = Buffer.allocUnsafe(len);
    for (let got = 0; got < len;) {
      const { bytesRead } = await fdRead(fd, b, got, len - got, off + got);
      if (bytesRead === 0) return null;
      got += bytesRead;
    }
    return b;
  };
  let pos = 0;
  for (const c of [...chunks, { offset: size, size: 0, hash: '' }]) {
    if (c.offset < pos || c.offset + c.size > size) return -errno.EINVAL;
    // Holes are read in pieces: a sparse gap may be large.
    for (; pos < c.offset; pos += Math.min(1 << 20, c.offset - pos)) {
      const z = await read(pos, Math.min(1 << 20, c.offset - pos));
      if (!z || z.some((x) => x !== 0)) return -errno.EBADMSG;
    }
    if (!c.size) continue;
    const d = await read(c.offset, c.size);
    if (!d || sha256hex(d) !== c.hash) return -errno.EBADMSG;
    pos = c.offset + c.size;
  }
  return 0;
}

/**
 * Node-local cache layout (shared safely by several mounts on one node):
 *   <dir>/chunks/<2 hex>/<62 hex>   decoded chunk bytes; the name is their SHA-256, re-checked on every disk read
 *   <dir>/files/<2 hex>/<62 hex>    whole files assembled from verified chunks, for FUSE passthrough; named by
 *                                   the SHA-256 of the file's chunk map (same layout, same file, in any layer)
 *   <dir>/catalogs/<hash>.sqlite    decoded layer catalogs (verified when fetched and when reopened)
 *   <dir>/tmp/                      in-flight writes, renamed into place (readers see whole files or none)
 * Chunks count against the quota and are evicted LRU; catalogs are pinned while a mount uses them.
 */
export interface CacheOptions {
  dir: string;
  /** Byte budget for chunks/ (LRU eviction beyond it). */
  quota: number;
  /** Byte budget for decoded hot chunks kept in memory (0 disables). */
  memBytes: number;
  store: Store;
  log: Logger;
}

export interface CacheCounters {
  /** Reads satisfied from the in-memory LRU. */
  memHits: number;
  /** Reads satisfied from the node-local cache directory. */
  diskHits: number;
  /** Objects fetched from the store (chunk misses + catalogs). */
  fetches: number;
  /** Framed (compressed) bytes fetched from the store. */
  fetchedBytes: number;
  /** Decoded bytes of fetched objects. */
  fetchedDecodedBytes: number;
  catalogFetches: number;
  /** Requests that joined a fetch already in flight for the same chunk (single-flight). */
  joined: number;
  evictions: number;
  /** Cached files dropped because their content no longer matched their name. */
  corruptDropped: number;
  /** Objects the store could not deliver intact (missing or failing verification). */
  errors: number;
  /** Chunks loaded from the cache directory ahead of a sequential reader (never from the store). */
  localReadahead: number;
  /** Whole files assembled from cached chunks (for passthrough). */
  filesAssembled: number;
}

interface DiskEntry { size: number }

/** Whole-file copies are built only after readers have been quiet this long. */
const IDLE_MS = 500;

export class ChunkCache {
  readonly counters: CacheCounters = {
    memHits: 0, diskHits: 0, fetches: 0, fetchedBytes: 0, fetchedDecodedBytes: 0, catalogFetches: 0,
    joined: 0, evictions: 0, corruptDropped: 0, errors: 0, localReadahead: 0, filesAssembled: 0,
  };
  private readonly assembling = new Set<string>();
  private readonly assembleQueue: Array<{ fileId: string; chunks: ChunkRef[]; size: number }> = [];
  private assembleRunning = false;
  /** When a reader last asked for a chunk: whole-file copies wait for quiet. */
  private lastUse = 0;
  private closing = false;
  private readonly disk: LRUCache<string, DiskEntry>;
  private readonly mem: LRUCache<string, Buffer> | null;
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private readonly pendingWrites = new Set<Promise<void>>();
  private diskBytes = 0;
  /** Whole-file copies verified (or built) by this process: passed to the kernel without hashing them again. */
  private readonly verifiedFiles = new Set<string>();
  private readonly verifying = new Map<string, Promise<boolean>>();
  private readonly chunksDir: string;
  private readonly filesDir: string;
  private readonly tmpDir: string;
  private readonly catalogsDir: string;

  /** Told of each key the LRU evicts (a file the kernel may still hold as a passthrough backing file). */
  onEvict: ((key: string) => void) | null = null;

  private constructor(private readonly o: CacheOptions) {
    this.chunksDir = join(o.dir, 'chunks');
    this.filesDir = join(o.dir, 'files');
    this.tmpDir = join(o.dir, 'tmp');
    this.catalogsDir = join(o.dir, 'catalogs');
    this.disk = new LRUCache<string, DiskEntry>({
      maxSize: Math.max(1, o.quota),
      sizeCalculation: (v) => Math.max(1, v.size),
      dispose: (v, hash, reason) => {
        this.diskBytes -= v.size;
        this.verifiedFiles.delete(hash);
        // Only evictions remove the file: 'delete' means we already know it is gone or bad.
        if (reason === 'evict') {
          this.counters.evictions++;
          unlink(this.pathOf(hash)).catch(() => { /* already evicted by another mount sharing the dir */ });
          this.onEvict?.(hash);
        }
      },
    });
    this.mem = o.memBytes > 0
      ? new LRUCache<string, Buffer>({ maxSize: o.memBytes, sizeCalculation: (b) => Math.max(1, b.length) })
      : null;
  }

  /** Open (creating) the cache directory and rebuild the index from what is already there: no refetch after a restart. */
  static async open(o: CacheOptions): Promise<ChunkCache> {
    const c = new ChunkCache(o);
    // Private to the daemon (see PRIVATE_DIR); an existing cache is repaired, since older versions made it 0755.
    await mkdir(o.dir, { recursive: true, mode: PRIVATE_DIR });
    for (const d of [o.dir, c.chunksDir, c.filesDir, c.tmpDir, c.catalogsDir]) {
      await mkdir(d, { recursive: true, mode: PRIVATE_DIR });
      await chmod(d, PRIVATE_DIR).catch((e: NodeJS.ErrnoException) => {
        throw new ThinfsError(`cache directory ${d}: cannot make it private (${e.code ?? e.message}); use a --cache-dir this user owns`);
      });
    }
    await c.cleanTmp();
    await c.rebuildIndex();
    return c;
  }

  get quota(): number { return this.o.quota; }
  get usedBytes(): number { return this.diskBytes; }
  get usedObjects(): number { return this.disk.size; }
  get memBytes(): number { return this.mem?.calculatedSize ?? 0; }
  /** Whole-file copies being built now. */
  get assemblingFiles(): number { return this.assembling.size; }

  chunkPath(hash: string): string { return join(this.chunksDir, hash.slice(0, 2), hash.slice(2)); }
  /** Index keys: a chunk's hash, or `f:` + a whole file's id. */
  private pathOf(key: string): string {
    return key.startsWith('f:') ? join(this.filesDir, key.slice(2, 4), key.slice(4)) : this.chunkPath(key);
  }

  private async rebuildIndex(): Promise<void> {
    const found: Array<{ hash: string; size: number; t: number }> = [];
    for (const [dir, prefix] of [[this.chunksDir, ''], [this.filesDir, 'f:']] as const) {
      const fans = await readdir(dir).catch(() => [] as string[]);
      await Promise.all(fans.filter((f) => /^[0-9a-f]{2}$/.test(f)).map(async (fan) => {
        await makePrivate(join(dir, fan), PRIVATE_DIR);
        const names = await readdir(join(dir, fan)).catch(() => [] as string[]);
        for (const n of names) {
          if (!/^[0-9a-f]{62}$/.test(n)) continue;
          const st = await stat(join(dir, fan, n)).catch(() => null);
          if (!st) continue;
          if (st.mode & 0o077) await makePrivate(join(dir, fan, n), PRIVATE_FILE);
          found.push({ hash: prefix + fan + n, size: st.size, t: Math.max(st.atimeMs, st.mtimeMs) });
        }
      }));
    }
    for (const n of await readdir(this.catalogsDir).catch(() => [] as string[])) await makePrivate(join(this.catalogsDir, n), PRIVATE_FILE);
    // Oldest first, so the LRU order after a restart approximates the order of last use.
    found.sort((a, b) => a.t - b.t);
    for (const f of found) this.indexAdd(f.hash, f.size);
    this.o.log.info({ cacheDir: this.o.dir, objects: this.disk.size, bytes: this.diskBytes, quota: this.o.quota }, 'cache index rebuilt');
  }

  private async cleanTmp(): Promise<void> {
    const cutoff = Date.now() - 10 * 60_000;
    for (const n of await readdir(this.tmpDir).catch(() => [] as string[])) {
      const p = join(this.tmpDir, n);
      const st = await stat(p).catch(() => null);
      if (st && st.mtimeMs < cutoff) await rm(p, { force: true, recursive: true });
      else if (st) await makePrivate(p, st.isDirectory() ? PRIVATE_DIR : PRIVATE_FILE);
    }
  }

  private indexAdd(hash: string, size: number): boolean {
    if (size > this.o.quota) return false;
    const prev = this.disk.get(hash);
    if (prev) return true;
    this.diskBytes += size;
    this.disk.set(hash, { size });
    return true;
  }

  /**
   * Verified bytes of a chunk: memory, then the cache directory (re-verified), then the store.
   * Concurrent requests for one chunk share one fetch.
   */
  get(hash: string, size?: number): Promise<Buffer> {
    this.lastUse = Date.now();
    const m = this.mem?.get(hash);
    if (m) { this.counters.memHits++; return Promise.resolve(m); }
    const running = this.inflight.get(hash);
    if (running) { this.counters.joined++; return running; }
    const p = this.load(hash, size).finally(() => this.inflight.delete(hash));
    this.inflight.set(hash, p);
    return p;
  }

  /** True when a chunk is already local (memory or disk index): no store round trip needed. */
  isLocal(hash: string): boolean { return !!this.mem?.has(hash) || this.disk.has(hash); }

  /**
   * Load a chunk from the cache directory into memory ahead of a sequential reader. Never touches the store
   * (speculative store fetches are what the prefetch list is for), and is a no-op without a memory cache.
   */
  warm(hash: string, size: number): void {
    if (!this.mem || this.mem.has(hash) || this.inflight.has(hash) || !this.disk.has(hash)) return;
    this.counters.localReadahead++;
    this.get(hash, size).catch(() => { /* the reader will see the error itself, if it gets there */ });
  }

  private async load(hash: string, size?: number): Promise<Buffer> {
    const local = await this.readLocal(hash, size);
    if (local) {
      this.counters.diskHits++;
      this.mem?.set(hash, local);
      return local;
    }
    const data = await this.fetch(hash, size);
    this.mem?.set(hash, data);
    this.track(this.writeLocal(hash, data));
    return data;
  }

  /**
   * Also looks on disk for chunks this process has not indexed: another mount sharing the dir may have fetched them.
   * With the size known (the catalog says it), the native addon reads and hashes on the threadpool, so the JS thread
   * that answers FUSE requests never hashes cached bytes (WebCrypto's digest was measured to serialise instead).
   */
  private async readLocal(hash: string, size?: number): Promise<Buffer | null> {
    const file = this.chunkPath(hash);
    const got = await this.readChunkFile(file, hash, size);
    if (got === 'corrupt') return this.dropCorrupt(hash, file);
    if (got === 'missing') {
      if (this.disk.has(hash)) this.disk.delete(hash);
      return null;
    }
    if (!this.disk.has(hash)) this.indexAdd(hash, got.length);
    else this.disk.get(hash); // refresh recency
    return got;
  }

  /** The verified bytes of a cached chunk file: natively on the threadpool when the size is known, else here. */
  private async readChunkFile(file: string, hash: string, size?: number): Promise<Buffer | 'missing' | 'corrupt'> {
    const nat = size !== undefined ? tryNative<ReadVerify>() : null;
    if (nat) {
      const r = await nat.readVerified(file, size!, hash);
      if (typeof r !== 'number') return r;
      if (r === -errno.EBADMSG) return 'corrupt';
      if (r !== -errno.ENOENT) this.o.log.warn({ object: hash, file, errno: -r }, 'cannot read cached chunk: refetching');
      return 'missing';
    }
    let buf: Buffer;
    try {
      const fh = await open(file, 'r');
      try {
        const want = size ?? (await fh.stat()).size;
        // One byte more than expected tells a longer (corrupt) file from a good one.
        const b = Buffer.allocUnsafe(want + 1);
        let got = 0;
        for (;;) {
          const { bytesRead } = await fh.read(b, got, b.length - got, got);
          if (bytesRead === 0) break;
          got += bytesRead;
          if (got === b.length) break;
        }
        buf = b.subarray(0, got);
      } finally { await fh.close(); }
    } catch {
      return 'missing';
    }
    return sha256hex(buf) === hash ? buf : 'corrupt';
  }

  /**
   * An open descriptor of a local file holding exactly these bytes, for the kernel to read directly (passthrough): the
   * cached chunk itself, re-verified now on the threadpool (which also warms the page cache the kernel will read from).
   * Null when not cached or corrupt (then dropped). The caller closes the descriptor.
   */
  async openVerifiedChunk(hash: string, size: number): Promise<number | null> {
    if (!this.disk.has(hash)) return null;
    const file = this.chunkPath(hash);
    const nat = tryNative<ReadVerify>();
    if (!nat) return (await this.readLocal(hash, size)) ? openFd(file) : null;
    const r = await nat.openVerified(file, size, hash);
    if (r >= 0) { this.disk.get(hash); return r; } // refresh recency
    if (r === -errno.EBADMSG) return this.dropCorrupt(hash, file);
    this.disk.delete(hash);
    return null;
  }

  /**
   * An open descriptor of the assembled copy of a file (see assemble), or null (then reads are served from verified
   * chunks). A copy is verified against the file's chunk map at its first open after the daemon starts (each chunk's
   * range hashes to the chunk's name, holes are zeros: the same promise as a served read), on the threadpool; the
   * verified state lives as long as this process or until the copy leaves the index. A copy that fails is dropped.
   */
  async openWholeFile(fileId: string, chunks: ChunkRef[], size: number): Promise<number | null> {
    const key = `f:${fileId}`;
    if (!this.disk.get(key)) return null;
    const file = this.pathOf(key);
    if (!this.verifiedFiles.has(key)) {
      let running = this.verifying.get(key);
      if (!running) {
        running = this.verifyWholeFile(key, file, chunks, size).finally(() => this.verifying.delete(key));
        this.verifying.set(key, running);
      }
      if (!(await running)) return null;
    }
    const nat = tryNative<ReadVerify>();
    const r = nat ? await nat.openVerified(file, size, '') : await openFd(file, size);
    if (r !== null && r >= 0) return r;
    this.o.log.warn({ file, errno: r === null ? undefined : -r }, 'whole-file copy missing or of the wrong size: dropped');
    this.disk.delete(key);
    await unlink(file).catch(() => {});
    return null;
  }

  /** Check a whole-file copy against its chunk map (see openWholeFile); false when it is gone or was dropped. */
  private async verifyWholeFile(key: string, file: string, chunks: ChunkRef[], size: number): Promise<boolean> {
    let fd: number;
    try { fd = await fdOpen(file, 'r'); } catch { this.disk.delete(key); return false; }
    let bad: string | null = null;
    try {
      if ((await fdStat(fd)).size !== size) bad = 'wrong size';
      else {
        const r = await verifyRanges(fd, chunks, size);
        if (r === -errno.EBADMSG) bad = 'bytes do not match the chunk map';
        else if (r < 0) bad = `cannot verify (errno ${-r})`;
      }
    } finally { await fdClose(fd).catch(() => {}); }
    if (bad === null) {
      // Still the indexed copy (not evicted while it was being read): remember it.
      if (this.disk.has(key)) this.verifiedFiles.add(key);
      return true;
    }
    this.counters.corruptDropped++;
    this.o.log.warn({ file, reason: bad }, 'whole-file copy failed verification: dropped, serving verified chunks');
    this.disk.delete(key);
    await unlink(file).catch(() => {});
    return false;
  }

  /**
   * Queue the whole-file copy of a file whose chunks are all local. Copies are built one at a time and only while no
   * reader has asked for a chunk for IDLE_MS: a copy is a full read and write of the file, which must not compete with
   * the reads that are starting containers. Every chunk is read and verified again, written at its offset (holes stay
   * holes), the file fsynced and renamed into place; it counts against the quota like chunks. The memory cache is not
   * used: a big file would flush the chunks readers are using.
   */
  assemble(fileId: string, chunks: ChunkRef[], size: number): void {
    if (this.disk.has(`f:${fileId}`) || this.assembling.has(fileId) || size > this.o.quota / 4 || this.closing) return;
    this.assembling.add(fileId);
    this.assembleQueue.push({ fileId, chunks, size });
    if (!this.assembleRunning) this.track(this.runAssembly());
  }

  private async runAssembly(): Promise<void> {
    this.assembleRunning = true;
    try {
      while (this.assembleQueue.length && !this.closing) {
        const job = this.assembleQueue.shift()!;
        try {
          await this.assembleOne(job.fileId, job.chunks, job.size);
        } catch (e) {
          this.o.log.warn({ file: job.fileId, err: (e as Error).message }, 'cannot assemble a whole-file copy');
        } finally { this.assembling.delete(job.fileId); }
      }
    } finally {
      this.assembleRunning = false;
      for (const j of this.assembleQueue.splice(0)) this.assembling.delete(j.fileId);
    }
  }

  /** Resolves once readers have left the cache alone for IDLE_MS (or at shutdown). */
  private async idle(): Promise<void> {
    for (let wait; !this.closing && (wait = this.lastUse + IDLE_MS - Date.now()) > 0;) await new Promise((r) => setTimeout(r, wait));
  }

  private async assembleOne(fileId: string, chunks: ChunkRef[], size: number): Promise<void> {
    const key = `f:${fileId}`;
    const tmp = join(this.tmpDir, `file-${fileId}.${process.pid}.${randomBytes(4).toString('hex')}`);
    const fh = await open(tmp, 'w', PRIVATE_FILE);
    let ok = false;
    try {
      await fh.truncate(size);
      for (const c of chunks) {
        await this.idle();
        if (this.closing) return; // shutting down: a later complete read queues it again
        const d = await this.readLocal(c.hash, c.size);
        if (!d) return; // evicted or corrupt meanwhile: likewise
        await fh.write(d, 0, d.length, c.offset);
      }
      await fh.sync();
      ok = true;
    } finally {
      await fh.close();
      if (!ok) await rm(tmp, { force: true });
    }
    await mkdir(join(this.filesDir, fileId.slice(0, 2)), { recursive: true, mode: PRIVATE_DIR });
    await rename(tmp, this.pathOf(key));
    // Written from chunks verified just now: this process trusts it without reading it back.
    if (this.indexAdd(key, size)) this.verifiedFiles.add(key);
    this.counters.filesAssembled++;
  }

  private async dropCorrupt(hash: string, file: string): Promise<null> {
    this.counters.corruptDropped++;
    this.o.log.warn({ object: hash, file }, 'cached chunk is corrupt: dropped, refetching');
    this.disk.delete(hash);
    await unlink(file).catch(() => {});
    return null;
  }

  private async fetch(hash: string, size?: number): Promise<Buffer> {
    try {
      const { data, rawBytes } = await this.o.store.fetchObject(hash, size);
      this.counters.fetches++;
      this.counters.fetchedBytes += rawBytes;
      this.counters.fetchedDecodedBytes += data.length;
      return data;
    } catch (e) {
      this.counters.errors++;
      throw e;
    }
  }

  private async writeLocal(hash: string, data: Buffer): Promise<void> {
    if (data.length > this.o.quota) return;
    const tmp = join(this.tmpDir, `${hash}.${process.pid}.${randomBytes(4).toString('hex')}`);
    try {
      await writeFile(tmp, data, { mode: PRIVATE_FILE });
      const dest = this.chunkPath(hash);
      await mkdir(join(this.chunksDir, hash.slice(0, 2)), { recursive: true, mode: PRIVATE_DIR });
      await rename(tmp, dest);
      this.indexAdd(hash, data.length);
    } catch (e) {
      await rm(tmp, { force: true });
      this.o.log.warn({ object: hash, err: (e as Error).message }, 'cannot write chunk to the cache directory');
    }
  }

  private track(p: Promise<void>): void {
    this.pendingWrites.add(p);
    p.finally(() => this.pendingWrites.delete(p));
  }

  /**
   * Local path of a verified catalog database, fetched from the store the first time.
   * A cached copy is re-hashed before use, so a damaged one is replaced instead of trusted.
   */
  async catalogFile(hash: string, size?: number): Promise<string> {
    const path = join(this.catalogsDir, `${hash}.sqlite`);
    // Re-verified at every load (the first touch of a layer after a start), read and hashed off the JS thread.
    const have = await this.readChunkFile(path, hash, size);
    if (typeof have !== 'string') return path;
    if (have === 'corrupt') {
      this.counters.corruptDropped++;
      this.o.log.warn({ object: hash, file: path }, 'cached catalog is corrupt: refetching');
    }
    let data: Buffer;
    try {
      const got = await this.o.store.fetchObject(hash, size);
      data = got.data;
      this.counters.fetches++;
      this.counters.catalogFetches++;
      this.counters.fetchedBytes += got.rawBytes;
      this.counters.fetchedDecodedBytes += data.length;
    } catch (e) {
      this.counters.errors++;
      throw e;
    }
    const tmp = join(this.tmpDir, `${hash}.sqlite.${process.pid}.${randomBytes(4).toString('hex')}`);
    await writeFile(tmp, data, { mode: PRIVATE_FILE });
    await rename(tmp, path);
    return path;
  }

  /** Wait for background cache writes (clean shutdown: the next start finds them). */
  async flush(): Promise<void> {
    this.closing = true;
    while (this.pendingWrites.size) await Promise.allSettled([...this.pendingWrites]);
  }
}
