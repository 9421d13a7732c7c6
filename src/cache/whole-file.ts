// The whole-file builder: copies of multi-chunk files assembled from verified cached chunks (for FUSE passthrough,
// where the kernel reads a local file itself), built in the background when readers are quiet; and their
// verification: a copy is handed to the kernel only if this process verified or built it, or if its identity still
// matches the trust record written when it was (copy-trust.ts); otherwise it is verified against the file's chunk map on
// the open path. Copies trusted by record are re-verified in the background, one at a time, while readers are idle.
import type { ChunkRef } from '../catalog/reader.js';
import type { Logger } from '../util/log.js';
import type { CacheDir } from './cache-dir.js';
import type { CacheCounters } from './counters.js';
import type { ChunkFetcher } from './fetcher.js';
import type { CacheIndex } from './quota.js';
import { decodeRecord, encodeRecord, identityOf, sameIdentity, type Identity } from './copy-trust.js';
import { errno, fdClose, openVerified, verifyPart, verifyRanges } from './verify.js';

/** Whole-file copies are built only after readers have been quiet this long. */
const IDLE_MS = 500;
/**
 * The background re-verification waits longer (since the last open or chunk read, and since the start): reads of
 * passed-through files never reach the daemon, so a quiet daemon may still have readers (a container starting).
 */
const REVERIFY_IDLE_MS = 2000;
/** It hashes this much at a time, then waits for quiet again ... */
const REVERIFY_STEP = 8 << 20;
/** ... and reads at most this fast (bytes per ms: 64 MiB/s), so a reader it overlaps keeps the disk and the cores. */
const REVERIFY_BYTES_PER_MS = (64 << 20) / 1000;

export interface BuilderParts {
  dir: CacheDir;
  index: CacheIndex;
  fetcher: ChunkFetcher;
  counters: CacheCounters;
  log: Logger;
  track(p: Promise<void>): void;
  /** A copy failed its background re-verification and was dropped (the kernel may hold it as a backing file). */
  dropped(key: string): void;
}

const keyOf = (fileId: string) => `f:${fileId}`;

export class WholeFileBuilder {
  private readonly assembling = new Set<string>();
  private readonly queue: Array<{ fileId: string; chunks: ChunkRef[]; size: number }> = [];
  private running = false;
  private closing = false;
  /** Copies this process may hand to the kernel, by the identity they had when verified, built or found trusted. */
  private readonly verified = new Map<string, Identity>();
  /** Copies whose every byte this process hashed or wrote: the background pass skips them. */
  private readonly hashed = new Set<string>();
  private readonly verifying = new Map<string, Promise<Identity | null>>();

  constructor(private readonly p: BuilderParts) {}

  /** Copies being built now. */
  get assemblingFiles(): number { return this.assembling.size; }

  /** The copy left the index (evicted or dropped): verify it again if it comes back. */
  forget(key: string): void { this.verified.delete(key); this.hashed.delete(key); }

  /**
   * An open descriptor of the assembled copy of a file, or null (then reads are served from verified chunks). The
   * descriptor returned is the one whose identity was checked: verified (or built) by this process, or matching the
   * copy's trust record (no hashing here: the background pass re-reads it), or else verified now against the chunk
   * map (each chunk's range hashes to the chunk's name, holes are zeros) on the threadpool. A copy that fails is dropped.
   */
  async open(fileId: string, chunks: ChunkRef[], size: number): Promise<number | null> {
    const key = keyOf(fileId);
    if (!this.p.index.touch(key)) return null;
    // An open is a reader too (its reads may never reach us, passed through): background work waits.
    this.p.fetcher.lastUse = Date.now();
    const file = this.p.dir.pathOf(key);
    const fd = await openVerified(file, size, '');
    if (fd < 0) {
      if (fd === -errno.ENOENT) { this.p.index.delete(key); this.forget(key); return null; }
      const bad = fd === -errno.EBADMSG ? 'wrong size' : `cannot open (errno ${-fd})`;
      this.forget(key);
      return this.p.fetcher.dropCorrupt(key, 'whole-file copy failed verification: dropped, serving verified chunks', { reason: bad });
    }
    let ok = false;
    try {
      const id = await identityOf(fd);
      const known = this.verified.get(key);
      if (known && sameIdentity(known, id)) return (ok = true), fd;
      const rec = await this.p.dir.readTrust(fileId);
      const trusted = rec ? decodeRecord(fileId, rec) : null;
      if (trusted && sameIdentity(trusted.identity, id)) {
        this.p.counters.filesTrustedAtOpen++;
        if (this.p.index.has(key)) this.verified.set(key, id);
        return (ok = true), fd;
      }
      let running = this.verifying.get(key);
      if (!running) {
        running = this.verifyAtOpen(fileId, fd, chunks, size).finally(() => this.verifying.delete(key));
        this.verifying.set(key, running);
      }
      const good = await running;
      ok = good !== null && sameIdentity(good, id);
      return ok ? fd : null;
    } finally {
      if (!ok) await fdClose(fd).catch(() => {});
    }
  }

  /** The open-path check of a copy with no matching trust record: its identity once verified (and recorded), or null. */
  private async verifyAtOpen(fileId: string, fd: number, chunks: ChunkRef[], size: number): Promise<Identity | null> {
    const key = keyOf(fileId);
    this.p.counters.filesVerifiedAtOpen++;
    const before = await identityOf(fd);
    const r = await verifyRanges(fd, chunks, size);
    const after = await identityOf(fd);
    if (r === 0 && sameIdentity(before, after)) {
      // Still the indexed copy (not evicted while it was being read): remember it, durably.
      if (this.p.index.has(key)) {
        this.verified.set(key, after);
        this.hashed.add(key);
        await this.record(fileId, after, size, chunks);
      }
      return after;
    }
    const bad = r === -errno.EBADMSG ? 'bytes do not match the chunk map' : r < 0 ? `cannot verify (errno ${-r})` : 'changed while being verified';
    this.forget(key);
    await this.p.fetcher.dropCorrupt(key, 'whole-file copy failed verification: dropped, serving verified chunks', { reason: bad });
    return null;
  }

  /** Write a copy's trust record; a failure only costs a verification at the next start. */
  private async record(fileId: string, id: Identity, size: number, chunks: ChunkRef[]): Promise<void> {
    try {
      await this.p.dir.writeTrust(fileId, encodeRecord(fileId, id, size, chunks));
      // Evicted meanwhile: its record must not outlive it (a rebuilt copy gets a new inode anyway).
      if (!this.p.index.has(keyOf(fileId))) await this.p.dir.removeTrust(fileId);
    } catch (e) {
      this.p.log.warn({ file: fileId, err: e }, 'cannot record a verified whole-file copy');
    }
  }

  /**
   * Re-verify, in the background, every indexed copy whose identity matches its trust record (found at start): one
   * copy at a time, REVERIFY_STEP bytes per threadpool job, each step only once readers have been quiet for
   * REVERIFY_IDLE_MS, at most REVERIFY_BYTES_PER_MS, so media corruption that leaves the identity alone is found too.
   * A copy that fails is dropped and the kernel told to let it go; later opens are served from verified chunks.
   */
  reverifyAll(keys: string[]): void {
    if (!keys.length) return;
    const startedAt = Date.now();
    this.p.track((async () => {
      for (const key of keys) {
        if (this.closing) return;
        try {
          await this.reverify(key, startedAt);
        } catch (e) {
          this.p.log.warn({ object: key, err: e }, 'cannot re-verify a whole-file copy');
        }
      }
    })());
  }

  private async reverify(key: string, startedAt: number): Promise<void> {
    const fileId = key.slice(2);
    const quiet = () => this.idle(REVERIFY_IDLE_MS, startedAt);
    await quiet();
    if (this.closing || !this.p.index.has(key) || this.hashed.has(key)) return;
    const raw = await this.p.dir.readTrust(fileId);
    const rec = raw ? decodeRecord(fileId, raw) : null;
    if (!rec) return; // no record: the open path verifies it
    const fd = await openVerified(this.p.dir.pathOf(key), rec.size, '');
    if (fd < 0) return; // gone or resized: the open path deals with it
    let bad: string | null = null;
    let id: Identity;
    try {
      id = await identityOf(fd);
      if (!sameIdentity(id, rec.identity)) return; // changed since recorded: the open path verifies it
      const cs = rec.chunks;
      for (let k = 0, start = 0; k < cs.length || start < rec.size;) {
        await quiet();
        if (this.closing || !this.p.index.has(key)) return;
        let to = k;
        while (to < cs.length && (to === k || cs[to]!.offset + cs[to]!.size - start <= REVERIFY_STEP)) to++;
        const end = to < cs.length ? cs[to]!.offset : rec.size;
        const t0 = Date.now();
        const r = await verifyPart(fd, cs.slice(k, to), start, end);
        const pause = (end - start) / REVERIFY_BYTES_PER_MS - (Date.now() - t0);
        if (pause > 0) await new Promise((res) => setTimeout(res, pause));
        if (r !== 0) { bad = r === -errno.EBADMSG ? 'bytes do not match the chunk map' : `cannot verify (errno ${-r})`; break; }
        k = to;
        start = end;
        if (k >= cs.length && start >= rec.size) break;
      }
    } finally { await fdClose(fd).catch(() => {}); }
    if (bad === null) {
      this.hashed.add(key);
      this.p.counters.filesReverified++;
      return;
    }
    // Only the copy that was read is dropped: not one rebuilt in its place meanwhile.
    const now = await openVerified(this.p.dir.pathOf(key), rec.size, '');
    if (now >= 0) {
      const same = sameIdentity(await identityOf(now).finally(() => fdClose(now).catch(() => {})), id);
      if (!same) return;
    }
    this.forget(key);
    await this.p.fetcher.dropCorrupt(key, 'whole-file copy failed background re-verification: dropped, serving verified chunks', { reason: bad });
    this.p.dropped(key);
  }

  /**
   * Queue the whole-file copy of a file whose chunks are all local. Copies are built one at a time and only while no
   * reader has asked for a chunk for IDLE_MS: a copy is a full read and write of the file, which must not compete with
   * the reads that are starting containers. Every chunk is read and verified again, written at its offset (holes stay
   * holes), the file fsynced and renamed into place; it counts against the quota like chunks. The memory cache is not
   * used: a big file would flush the chunks readers are using.
   */
  assemble(fileId: string, chunks: ChunkRef[], size: number): void {
    if (this.p.index.has(keyOf(fileId)) || this.assembling.has(fileId) || size > this.p.index.quota / 4 || this.closing) return;
    this.assembling.add(fileId);
    this.queue.push({ fileId, chunks, size });
    if (!this.running) this.p.track(this.run());
  }

  /** Stop building (shutdown); a later complete read queues a copy again. */
  close(): void { this.closing = true; }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length && !this.closing) {
        const job = this.queue.shift()!;
        try {
          await this.build(job.fileId, job.chunks, job.size);
        } catch (e) {
          this.p.log.warn({ file: job.fileId, err: e }, 'cannot assemble a whole-file copy');
        } finally { this.assembling.delete(job.fileId); }
      }
    } finally {
      this.running = false;
      for (const j of this.queue.splice(0)) this.assembling.delete(j.fileId);
    }
  }

  /** Resolves once readers have left the cache alone for quietMs (and quietMs have passed since `since`), or at shutdown. */
  private async idle(quietMs = IDLE_MS, since = 0): Promise<void> {
    for (let wait; !this.closing && (wait = Math.max(this.p.fetcher.lastUse, since) + quietMs - Date.now()) > 0;) {
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  private async build(fileId: string, chunks: ChunkRef[], size: number): Promise<void> {
    const key = keyOf(fileId);
    const { path: tmp, fh } = await this.p.dir.createTmp(`file-${fileId}`);
    let placed = false;
    let id: Identity;
    try {
      await fh.truncate(size);
      for (const c of chunks) {
        await this.idle();
        if (this.closing) return;
        const d = await this.p.fetcher.readLocal(c.hash, c.size);
        if (!d) return; // evicted or corrupt meanwhile: a later complete read queues it again
        await fh.write(d, 0, d.length, c.offset);
      }
      await fh.sync();
      await this.p.dir.place(tmp, key);
      placed = true;
      // After the rename (which may change ctime), from the descriptor that wrote it.
      id = await identityOf(fh.fd);
    } finally {
      await fh.close();
      if (!placed) await this.p.dir.discard(tmp);
    }
    // Written from chunks verified just now: trusted without reading it back, by this process and, by record, the next.
    if (this.p.index.add(key, size)) {
      this.verified.set(key, id);
      this.hashed.add(key);
      await this.record(fileId, id, size, chunks);
    } else await this.p.dir.remove(key);
    this.p.counters.filesAssembled++;
  }
}
