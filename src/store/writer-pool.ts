// The pool of object-writer threads a transaction hands new objects to, in batches.
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import type { Codec } from './codec.js';

/**
 * A batch is sent when it holds this many objects or bytes, when the caller asks (flush(): before it waits for
 * writes), or after FLUSH_MS without either. Not at the end of each event-loop turn: a turn handles one 64 KiB
 * read of the decoder's output, so batches were one or two objects and postMessage stayed a sixth of the thread.
 */
const BATCH_OBJECTS = 64;
const BATCH_BYTES = 8 << 20;
const FLUSH_MS = 20;

interface Pending { resolve: (n: number) => void; reject: (e: Error) => void }
interface Open { root: string; dir: string; codec: Codec; hashes: string[]; data: Uint8Array[]; levels: Array<number | undefined>; waiters: Pending[]; bytes: number; transfer: ArrayBuffer[] }
interface Slot { w: Worker; queued: number }

/**
 * A few worker threads that compress and write staged objects. Objects are sent in batches (one
 * postMessage per batch, not per object: the per-message cost was the largest item on the ingest thread),
 * each batch to the worker with the fewest bytes queued.
 */
export class ObjectWriterPool {
  private readonly workers: Slot[] = [];
  private readonly sent = new Map<number, { slot: Slot; bytes: number; waiters: Pending[] }>();
  private open: Open | null = null;
  private timer: NodeJS.Timeout | null = null;
  private nextId = 1;
  private failed: Error | null = null;

  constructor(size = Math.max(1, Math.min(4, availableParallelism()))) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL('./object-writer.worker.js', import.meta.url));
      const slot: Slot = { w, queued: 0 };
      w.on('message', (m: { id: number; sizes: number[]; errors: Array<string | null> }) => {
        const b = this.sent.get(m.id);
        if (!b) return;
        this.sent.delete(m.id);
        slot.queued -= b.bytes;
        b.waiters.forEach((p, i) => { const err = m.errors[i]; if (err) p.reject(new Error(err)); else p.resolve(m.sizes[i]!); });
      });
      w.on('error', (e) => {
        this.failed = e;
        for (const b of this.sent.values()) for (const p of b.waiters) p.reject(e);
        this.sent.clear();
      });
      this.workers.push(slot);
    }
  }

  /**
   * Stage `data` as `<dir>/<hash>`, or pin `<root>/data/<hash>` there (stage.ts); resolves to the stored size or a
   * negative PUT_ code. `level`: a zstd level of its own (catalogs).
   */
  write(root: string, dir: string, hash: string, data: Uint8Array, codec: Codec, level?: number): Promise<number> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.open && (this.open.root !== root || this.open.dir !== dir || this.open.codec !== codec)) this.flush();
    const b = this.open ??= { root, dir, codec, hashes: [], data: [], levels: [], waiters: [], bytes: 0, transfer: [] };
    const p = new Promise<number>((resolve, reject) => b.waiters.push({ resolve, reject }));
    b.hashes.push(hash);
    b.data.push(data);
    b.levels.push(level);
    b.bytes += data.byteLength;
    // Hand over the chunk's memory instead of copying it when the chunk owns its whole ArrayBuffer.
    if (data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer && !b.transfer.includes(data.buffer)) b.transfer.push(data.buffer);
    if (b.hashes.length >= BATCH_OBJECTS || b.bytes >= BATCH_BYTES || level !== undefined) this.flush();
    else this.timer ??= setTimeout(() => { this.timer = null; this.flush(); }, FLUSH_MS);
    return p;
  }

  /** Send the open batch now. */
  flush(): void {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    const b = this.open;
    if (!b) return;
    this.open = null;
    const slot = this.workers.reduce((a, x) => (x.queued < a.queued ? x : a));
    const id = this.nextId++;
    slot.queued += b.bytes;
    this.sent.set(id, { slot, bytes: b.bytes, waiters: b.waiters });
    slot.w.postMessage({ id, root: b.root, dir: b.dir, codec: b.codec, hashes: b.hashes, data: b.data, levels: b.levels }, b.transfer);
  }

  async close(): Promise<void> {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    const e = new Error('object writer pool closed');
    if (this.open) for (const p of this.open.waiters) p.reject(e);
    this.open = null;
    await Promise.all(this.workers.map((s) => s.w.terminate()));
  }
}
