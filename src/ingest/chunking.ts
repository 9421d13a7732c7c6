// Ingest stage 3, file chunking: cuts one file's content (each data segment of a sparse file on
// its own) into content-defined chunks, names each by its SHA-256, records the chunk list in the
// catalog, and hands the chunks to the object sink, which bounds the writes in flight.
import type { TarEntry } from '../tar/reader.js';
import { Chunker, type ChunkParams } from '../chunker/fastcdc.js';
import type { CatalogWriter } from '../catalog/writer.js';
import { BadInputError } from '../util/errors.js';
import { sha256hex } from '../util/hash.js';
import { printable } from './tree.js';
import { ChunkArena } from './arena.js';

/** Where chunks go: the store transaction's put (dedup, compression, staging). */
export type PutObject = (hash: string, data: Buffer) => Promise<unknown>;
/** Send what put() queued (the writer pool batches): called before the sink waits for writes to finish. */
export type FlushObjects = () => void;

/**
 * Chunk writes in flight: enough to fill the writer pool's batches and keep its threads busy while this thread
 * parses and hashes, bounded in memory (48 MiB of the arena + one max chunk).
 */
const MAX_INFLIGHT_OBJECTS = 512;
/** The chunk arena: in-flight bytes (three quarters of it) plus room for the ring's wrap and out-of-order frees. */
const ARENA_BYTES = 64 << 20;

/** A bounded set of object writes in flight; the first failure fails the next put and the drain. */
export class ObjectSink {
  private inflight = 0;
  private bytes = 0;
  private wake: (() => void) | null = null;
  private error: unknown = null;
  chunks = 0;
  private readonly arena: ChunkArena;
  private readonly maxBytes: number;
  /** Memory for the next chunk (the chunker copies into it); given back once its write is done. */
  readonly alloc = (n: number): Buffer => this.arena.alloc(n);
  constructor(private readonly putObject: PutObject, private readonly flush: FlushObjects = () => undefined, arenaBytes = ARENA_BYTES) {
    this.arena = new ChunkArena(arenaBytes);
    this.maxBytes = Math.floor(arenaBytes * 0.75);
  }

  async put(hash: string, data: Buffer): Promise<void> {
    this.chunks++;
    const n = data.length;
    this.inflight++;
    this.bytes += n;
    this.putObject(hash, data).then(() => undefined, (e) => { this.error ??= e; }).finally(() => {
      this.arena.free(data);
      this.inflight--;
      this.bytes -= n;
      const w = this.wake;
      this.wake = null;
      w?.();
    });
    while (this.inflight >= MAX_INFLIGHT_OBJECTS || this.bytes >= this.maxBytes) await this.next();
    if (this.error) throw this.error;
  }

  /** Resolves when the next write finishes. */
  private next(): Promise<void> {
    this.flush();
    return new Promise((r) => { this.wake = r; });
  }

  /** Wait for every write; throws the first failure. */
  async drain(): Promise<void> {
    await this.settle();
    if (this.error) throw this.error;
  }

  /** Wait for every write, ignoring failures (before aborting). */
  async settle(): Promise<void> {
    while (this.inflight > 0) await this.next();
  }
}

/**
 * Chunk a file's archived data (segments laid out by its sparse map, if any) into the sink and the catalog. Returns
 * the chunk count and the first chunk (a one-chunk file may travel in a pack: packing.ts).
 */
export async function chunkFile(ino: number, e: TarEntry, data: AsyncIterable<Buffer>, params: ChunkParams, cat: CatalogWriter, sink: ObjectSink): Promise<{ count: number; first: { hash: string; offset: number; size: number } | null }> {
  let first: { hash: string; offset: number; size: number } | null = null;
  const segs = e.sparse ?? [{ offset: 0, size: e.size }];
  let si = 0, left = segs[0]?.size ?? 0, offset = segs[0]?.offset ?? 0, idx = 0;
  const chunker = new Chunker(params, { alloc: sink.alloc });
  const emit = async (c: Buffer) => {
    const hash = sha256hex(c);
    if (idx === 0) first = { hash, offset, size: c.length };
    cat.addChunk(ino, idx++, offset, c.length, Buffer.from(hash, 'hex'));
    offset += c.length;
    await sink.put(hash, c);
  };
  // A chunk never spans two segments: each segment's data lands at its own offset.
  const nextSeg = async () => {
    const last = chunker.flush();
    if (last) await emit(last);
    si++;
    while (si < segs.length && segs[si]!.size === 0) si++;
    if (si < segs.length) { left = segs[si]!.size; offset = segs[si]!.offset; }
  };
  if (left === 0 && segs.length > 1) { si = -1; await nextSeg(); }
  for await (let b of data) {
    while (b.length) {
      if (si >= segs.length) throw new BadInputError(`member ${printable(e.path)}: more data than its sparse map`);
      const k = Math.min(left, b.length);
      for (const c of chunker.push(b.subarray(0, k))) await emit(c);
      b = b.subarray(k);
      left -= k;
      if (left === 0) await nextSeg();
    }
  }
  const last = chunker.flush();
  if (last) await emit(last);
  return { count: idx, first };
}
