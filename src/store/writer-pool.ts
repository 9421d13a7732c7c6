// The pool of object-writer threads transactions hand new objects to, in batches; one per process.
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import type { Codec } from './codec.js';

/**
 * A batch is sent when it holds this many objects or bytes, when its transaction asks (flush(): before it waits
 * for writes), or after FLUSH_MS without either. Not at the end of each event-loop turn: a turn handles one 64 KiB
 * read of the decoder's output, so batches were one or two objects and postMessage stayed a sixth of the thread.
 */
const BATCH_OBJECTS = 64;
const BATCH_BYTES = 8 << 20;
const FLUSH_MS = 20;

interface Pending { resolve: (n: number) => void; reject: (e: Error) => void }
interface Open { root: string; dir: string; codec: Codec; hashes: string[]; data: Uint8Array[]; levels: Array<number | undefined>; waiters: Pending[]; bytes: number; transfer: ArrayBuffer[] }
interface Slot { w: Worker; queued: number; batches: number }

/**
 * A few worker threads that compress and write staged objects. Objects are sent in batches (one postMessage per
 * batch, not per object: the per-message cost was the largest item on the ingest thread), each batch to the worker
 * with the fewest bytes queued. One pool serves every transaction of the process (docker2thin ingests its layers
 * at once: one set of threads, each started and compiled once, instead of one set per layer); an idle worker does
 * not keep the process alive.
 */
export class ObjectWriterPool {
  private static instance: ObjectWriterPool | null = null;
  /** The process's pool, started on first use. */
  static shared(): ObjectWriterPool { return (ObjectWriterPool.instance ??= new ObjectWriterPool()); }

  private readonly workers: Slot[] = [];
  private readonly sent = new Map<number, { slot: Slot; bytes: number; waiters: Pending[] }>();
  /** Open batches, one per staging directory (transactions running at once do not cut each other's batches). */
  private readonly open = new Map<string, Open>();
  private timer: NodeJS.Timeout | null = null;
  private nextId = 1;

  private constructor(private readonly size = Math.max(1, Math.min(4, availableParallelism()))) {
    for (let i = 0; i < size; i++) this.workers.push(this.start());
  }

  private start(): Slot {
    const w = new Worker(new URL('./object-writer.worker.js', import.meta.url));
    const slot: Slot = { w, queued: 0, batches: 0 };
    w.on('message', (m: { id: number; sizes: number[]; errors: Array<string | null> }) => {
      const b = this.sent.get(m.id);
      if (!b) return;
      this.sent.delete(m.id);
      this.settled(slot, b.bytes);
      b.waiters.forEach((p, i) => { const err = m.errors[i]; if (err) p.reject(new Error(err)); else p.resolve(m.sizes[i]!); });
    });
    // A dead worker fails its own batches and is replaced; other transactions go on.
    w.on('error', (e) => {
      for (const [id, b] of this.sent) {
        if (b.slot !== slot) continue;
        this.sent.delete(id);
        for (const p of b.waiters) p.reject(e);
      }
      const i = this.workers.indexOf(slot);
      if (i >= 0) this.workers[i] = this.start();
    });
    // After the listeners: adding a 'message' listener takes a reference on the worker's port again.
    w.unref();
    return slot;
  }

  private settled(slot: Slot, bytes: number): void {
    slot.queued -= bytes;
    // Referenced only while it owes answers: an idle pool never holds the process open.
    if (--slot.batches === 0) slot.w.unref();
  }

  /**
   * Stage `data` as `<dir>/<hash>`, or pin `<root>/data/<hash>` there (stage.ts); resolves to the stored size or a
   * negative PUT_ code. `level`: a zstd level of its own (catalogs).
   */
  write(root: string, dir: string, hash: string, data: Uint8Array, codec: Codec, level?: number): Promise<number> {
    let b = this.open.get(dir);
    if (b && (b.root !== root || b.codec !== codec)) { this.flush(dir); b = undefined; }
    if (!b) {
      b = { root, dir, codec, hashes: [], data: [], levels: [], waiters: [], bytes: 0, transfer: [] };
      this.open.set(dir, b);
    }
    const p = new Promise<number>((resolve, reject) => b.waiters.push({ resolve, reject }));
    b.hashes.push(hash);
    b.data.push(data);
    b.levels.push(level);
    b.bytes += data.byteLength;
    // Hand over the chunk's memory instead of copying it when the chunk owns its whole ArrayBuffer (shared
    // memory, ingest's chunk arena, crosses without either).
    if (data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer && !b.transfer.includes(data.buffer)) b.transfer.push(data.buffer);
    if (b.hashes.length >= BATCH_OBJECTS || b.bytes >= BATCH_BYTES || level !== undefined) this.flush(dir);
    else this.timer ??= setTimeout(() => { this.timer = null; for (const d of [...this.open.keys()]) this.flush(d); }, FLUSH_MS);
    return p;
  }

  /** Send the open batch of staging directory `dir` now. */
  flush(dir: string): void {
    const b = this.open.get(dir);
    if (!b) return;
    this.open.delete(dir);
    if (this.open.size === 0 && this.timer) { clearTimeout(this.timer); this.timer = null; }
    const slot = this.workers.reduce((a, x) => (x.queued < a.queued ? x : a));
    const id = this.nextId++;
    slot.queued += b.bytes;
    if (slot.batches++ === 0) slot.w.ref();
    this.sent.set(id, { slot, bytes: b.bytes, waiters: b.waiters });
    slot.w.postMessage({ id, root: b.root, dir: b.dir, codec: b.codec, hashes: b.hashes, data: b.data, levels: b.levels }, b.transfer);
  }
}
