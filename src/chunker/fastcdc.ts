/**
 * Content-defined chunking (FastCDC with normalized chunking, gear rolling hash). Boundaries depend
 * only on nearby content, so an insertion early in a large file changes one or two chunks, not
 * all the ones after it: that is what lets two layers share the chunks of a modified big file.
 *
 * The gear table and masks are part of the store format: changing them changes every boundary and
 * so every chunk hash. They are generated from a fixed seed rather than typed in.
 */
import { tryNative } from '../util/native.js';

export interface ChunkParams { min: number; avg: number; max: number }

// Sizes chosen by measurement (bench/chunking.ts, see ARCHITECTURE.md): 1 MiB average keeps a cold
// read of a small part of a big file cheap while keeping object counts ~8x below 128 KiB chunks.
export const DEFAULT_CHUNKING: ChunkParams = { min: 256 << 10, avg: 1 << 20, max: 4 << 20 };

const GEAR = (() => {
  const t = new Uint32Array(256);
  let x = 0x9e3779b9; // xorshift32, fixed seed
  for (let i = 0; i < 256; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    t[i] = x;
  }
  return t;
})();

/** The same scan in C (src/chunker/native/gear.c), when the addon is built: ~4x the JS loop. */
interface GearNative { setGear(t: Uint32Array): void; gearScan(b: Buffer, from: number, normEnd: number, hardEnd: number, h: number, maskS: number, maskL: number): number }
const NATIVE = (() => {
  const n = process.env.THINFS_JS_CHUNKER ? null : tryNative<GearNative>();
  n?.setGear(GEAR);
  return n;
})();

/** Mask with `bits` ones spread over the top bits: with a 32-bit gear hash the top bits see the most bytes. */
function topMask(bits: number): number {
  return bits >= 32 ? 0xffffffff : (~((1 << (32 - bits)) - 1)) >>> 0;
}

export class Chunker {
  private readonly maskS: number;
  private readonly maskL: number;
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private h = 0;

  private readonly native: GearNative | null;

  private readonly alloc: (n: number) => Buffer;

  /**
   * `js` forces the JavaScript scan (tests compare the two; the store format must not depend on which ran).
   * `alloc` gives the memory each chunk is copied into (default: a new Buffer; ingest passes its reused arena).
   */
  constructor(readonly p: ChunkParams = DEFAULT_CHUNKING, opts: { js?: boolean; alloc?: (n: number) => Buffer } = {}) {
    this.native = opts.js ? null : NATIVE;
    this.alloc = opts.alloc ?? ((n) => Buffer.allocUnsafe(n));
    const bits = Math.round(Math.log2(p.avg));
    this.maskS = topMask(bits + 2); // harder to cut before avg
    this.maskL = topMask(bits - 2); // easier after: sizes concentrate around avg
  }

  /** Feed bytes; returns the chunks completed by them (each a fresh contiguous Buffer). */
  push(data: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let start = 0;
    while (start < data.length) {
      const cut = this.scan(data, start);
      if (cut < 0) {
        this.pending.push(data.subarray(start));
        this.pendingLen += data.length - start;
        break;
      }
      this.pending.push(data.subarray(start, cut));
      this.pendingLen += cut - start;
      out.push(this.take());
      start = cut;
    }
    return out;
  }

  /** The final chunk of the stream, if any bytes remain. */
  flush(): Buffer | null {
    return this.pendingLen ? this.take() : null;
  }

  private take(): Buffer {
    const b = this.alloc(this.pendingLen);
    let off = 0;
    for (const p of this.pending) off += p.copy(b, off);
    this.pending = [];
    this.pendingLen = 0;
    this.h = 0;
    return b;
  }

  /** Index in `data` where the current chunk ends, or -1 if it continues past `data`. */
  private scan(data: Buffer, from: number): number {
    const { min, avg, max } = this.p;
    const base = this.pendingLen - from; // position in the chunk of data[i] is base + i
    const n = data.length;
    let i = from;
    // Bytes before min can never end a chunk: skip them without hashing (FastCDC's cut-point skipping).
    if (base + i < min) {
      i = Math.min(n, min - base);
      if (base + i < min) return -1;
    }
    if (this.native) {
      const r = this.native.gearScan(data, i, Math.max(i, avg - base), Math.min(n, max - base), this.h, this.maskS, this.maskL);
      if (r >= 0) return r;
      this.h = -1 - r;
      return base + Math.min(n, max - base) >= max ? Math.min(n, max - base) : -1;
    }
    let h = this.h;
    const g = GEAR, maskS = this.maskS, maskL = this.maskL;
    const normEnd = Math.min(n, avg - base);
    for (; i < normEnd; i++) {
      h = ((h << 1) + g[data[i]!]!) >>> 0;
      if ((h & maskS) === 0) return i + 1;
    }
    const hardEnd = Math.min(n, max - base);
    for (; i < hardEnd; i++) {
      h = ((h << 1) + g[data[i]!]!) >>> 0;
      if ((h & maskL) === 0) return i + 1;
    }
    this.h = h;
    return base + i >= max ? i : -1;
  }
}
