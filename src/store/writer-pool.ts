// The pool of object-writer threads a transaction hands new objects to.
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import type { Codec } from './codec.js';

/** A few worker threads that compress and write staged objects; jobs go to the least busy worker. */
export class ObjectWriterPool {
  private readonly workers: Array<{ w: Worker; busy: number }> = [];
  private readonly pending = new Map<number, { resolve: (n: number) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  constructor(size = Math.max(1, Math.min(4, availableParallelism()))) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL('./object-writer.worker.js', import.meta.url));
      const slot = { w, busy: 0 };
      w.on('message', (m: { id: number; size?: number; error?: string }) => {
        slot.busy--;
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.error) p.reject(new Error(m.error)); else p.resolve(m.size!);
      });
      w.on('error', (e) => { for (const p of this.pending.values()) p.reject(e); this.pending.clear(); });
      this.workers.push(slot);
    }
  }

  /** Stage `data` at `path`, or pin `existing` there (stage.ts); resolves to the stored size or a negative PUT_ code. */
  write(existing: string, path: string, data: Uint8Array, codec: Codec): Promise<number> {
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    slot.busy++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Hand over the chunk's memory instead of copying it when the chunk owns its whole ArrayBuffer.
      const own = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
      slot.w.postMessage({ id, existing, path, data, codec }, own ? [data.buffer as ArrayBuffer] : []);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((s) => s.w.terminate()));
  }
}
