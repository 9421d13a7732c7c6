// The whole-file builder: copies of multi-chunk files assembled from verified cached chunks (for FUSE passthrough,
// where the kernel reads a local file itself), built in the background when readers are quiet, and verified against
// the file's chunk map at their first open after the daemon starts, before the kernel is handed one.
import type { ChunkRef } from '../catalog/reader.js';
import type { Logger } from '../util/log.js';
import type { CacheDir } from './cache-dir.js';
import type { CacheCounters } from './counters.js';
import type { ChunkFetcher } from './fetcher.js';
import type { CacheIndex } from './quota.js';
import { errno, fdClose, openVerified, verifyRanges } from './verify.js';

/** Whole-file copies are built only after readers have been quiet this long. */
const IDLE_MS = 500;

export interface BuilderParts {
  dir: CacheDir;
  index: CacheIndex;
  fetcher: ChunkFetcher;
  counters: CacheCounters;
  log: Logger;
  track(p: Promise<void>): void;
}

const keyOf = (fileId: string) => `f:${fileId}`;

export class WholeFileBuilder {
  private readonly assembling = new Set<string>();
  private readonly queue: Array<{ fileId: string; chunks: ChunkRef[]; size: number }> = [];
  private running = false;
  private closing = false;
  /** Copies verified (or built) by this process: passed to the kernel without hashing them again. */
  private readonly verified = new Set<string>();
  private readonly verifying = new Map<string, Promise<boolean>>();

  constructor(private readonly p: BuilderParts) {}

  /** Copies being built now. */
  get assemblingFiles(): number { return this.assembling.size; }

  /** The copy left the index (evicted or dropped): verify it again if it comes back. */
  forget(key: string): void { this.verified.delete(key); }

  /**
   * An open descriptor of the assembled copy of a file, or null (then reads are served from verified chunks). A copy
   * is verified against the file's chunk map at its first open after the daemon starts (each chunk's range hashes to
   * the chunk's name, holes are zeros: the same promise as a served read), on the threadpool; the verified state lives
   * as long as this process or until the copy leaves the index. A copy that fails is dropped.
   */
  async open(fileId: string, chunks: ChunkRef[], size: number): Promise<number | null> {
    const key = keyOf(fileId);
    if (!this.p.index.touch(key)) return null;
    if (!this.verified.has(key)) {
      let running = this.verifying.get(key);
      if (!running) {
        running = this.verify(key, chunks, size).finally(() => this.verifying.delete(key));
        this.verifying.set(key, running);
      }
      if (!(await running)) return null;
    }
    const file = this.p.dir.pathOf(key);
    const r = await openVerified(file, size, '');
    if (r >= 0) return r;
    this.p.log.warn({ file, errno: -r }, 'whole-file copy missing or of the wrong size: dropped');
    this.p.index.delete(key);
    this.forget(key);
    await this.p.dir.remove(key);
    return null;
  }

  private async verify(key: string, chunks: ChunkRef[], size: number): Promise<boolean> {
    const fd = await openVerified(this.p.dir.pathOf(key), size, '');
    let bad: string | null = null;
    if (fd === -errno.ENOENT) { this.p.index.delete(key); return false; }
    if (fd < 0) bad = fd === -errno.EBADMSG ? 'wrong size' : `cannot open (errno ${-fd})`;
    else {
      try {
        const r = await verifyRanges(fd, chunks, size);
        if (r === -errno.EBADMSG) bad = 'bytes do not match the chunk map';
        else if (r < 0) bad = `cannot verify (errno ${-r})`;
      } finally { await fdClose(fd).catch(() => {}); }
    }
    if (bad === null) {
      // Still the indexed copy (not evicted while it was being read): remember it.
      if (this.p.index.has(key)) this.verified.add(key);
      return true;
    }
    await this.p.fetcher.dropCorrupt(key, 'whole-file copy failed verification: dropped, serving verified chunks', { reason: bad });
    this.forget(key);
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

  /** Resolves once readers have left the cache alone for IDLE_MS (or at shutdown). */
  private async idle(): Promise<void> {
    for (let wait; !this.closing && (wait = this.p.fetcher.lastUse + IDLE_MS - Date.now()) > 0;) await new Promise((r) => setTimeout(r, wait));
  }

  private async build(fileId: string, chunks: ChunkRef[], size: number): Promise<void> {
    const key = keyOf(fileId);
    const { path: tmp, fh } = await this.p.dir.createTmp(`file-${fileId}`);
    let ok = false;
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
      ok = true;
    } finally {
      await fh.close();
      if (!ok) await this.p.dir.discard(tmp);
    }
    await this.p.dir.place(tmp, key);
    // Written from chunks verified just now: this process trusts it without reading it back.
    if (this.p.index.add(key, size)) this.verified.add(key);
    else await this.p.dir.remove(key);
    this.p.counters.filesAssembled++;
  }
}
