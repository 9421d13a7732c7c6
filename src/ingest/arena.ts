// Ingest's chunk memory: one SharedArrayBuffer, reused as a ring, that chunks are copied into and the writer
// threads read from. A fresh Buffer per chunk cost the ingest thread a page fault per 4 KiB (the kernel zeroing
// ~170 MB of new pages per layer) and drove V8's collector by external-memory pressure; shared memory also
// crosses to a worker without a copy or a transfer.

interface Region { start: number; end: number; freed: boolean }

/**
 * Allocations are taken in order and freed in any order; space comes back as the oldest live region is
 * freed. When the ring has no room (a slow old region holds it), alloc() falls back to a plain Buffer, so a
 * chunk is never refused: the caller bounds what is in flight below the capacity, and this stays rare.
 */
export class ChunkArena {
  private readonly mem: Buffer;
  private readonly live: Region[] = [];
  private first = 0;
  private head = 0;
  private readonly owned = new WeakMap<Buffer, Region>();

  constructor(readonly capacity: number) {
    this.mem = Buffer.from(new SharedArrayBuffer(capacity));
  }

  /** n bytes of memory for one chunk (contents undefined). */
  alloc(n: number): Buffer {
    const start = this.place(n);
    if (start < 0) return Buffer.allocUnsafe(n);
    const r: Region = { start, end: start + n, freed: false };
    this.live.push(r);
    this.head = r.end;
    const b = this.mem.subarray(start, start + n);
    this.owned.set(b, r);
    return b;
  }

  /** Give back a buffer alloc() returned (a fallback Buffer is simply dropped). */
  free(b: Buffer): void {
    const r = this.owned.get(b);
    if (!r || r.freed) return;
    r.freed = true;
    while (this.first < this.live.length && this.live[this.first]!.freed) this.first++;
    if (this.first === this.live.length) { this.live.length = 0; this.first = 0; this.head = 0; }
    else if (this.first > 1024) { this.live.splice(0, this.first); this.first = 0; }
  }

  /** Where n bytes fit: after the newest region, or wrapped to the start before the oldest live one; -1 if nowhere. */
  private place(n: number): number {
    if (this.first === this.live.length) return n <= this.capacity ? 0 : -1;
    const tail = this.live[this.first]!.start;
    if (this.head >= tail) {
      if (this.capacity - this.head >= n) return this.head;
      return n < tail ? 0 : -1;
    }
    return tail - this.head > n ? this.head : -1;
  }
}
