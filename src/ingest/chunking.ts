// Ingest stage 3, file chunking: cuts one file's content (each data segment of a sparse file on
// its own) into content-defined chunks, names each by its SHA-256, records the chunk list in the
// catalog, and hands the chunks to the object sink, which bounds the writes in flight.
import type { TarEntry } from '../tar/reader.js';
import { Chunker, type ChunkParams } from '../chunker/fastcdc.js';
import type { CatalogWriter } from '../catalog/writer.js';
import { BadInputError } from '../util/errors.js';
import { sha256hex } from '../util/hash.js';
import { printable } from './tree.js';

/** Where chunks go: the store transaction's put (dedup, compression, staging). */
export type PutObject = (hash: string, data: Buffer) => Promise<unknown>;

/** Chunk writes in flight: enough to overlap hashing/compression with store I/O, bounded memory (x max chunk). */
const MAX_INFLIGHT = 16;

/** A bounded set of object writes in flight; the first failure fails the next put and the drain. */
export class ObjectSink {
  private readonly inflight = new Set<Promise<void>>();
  private error: unknown = null;
  chunks = 0;
  constructor(private readonly putObject: PutObject) {}

  async put(hash: string, data: Buffer): Promise<void> {
    this.chunks++;
    const p: Promise<void> = this.putObject(hash, data).then(() => undefined, (e) => { this.error ??= e; });
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
    if (this.inflight.size >= MAX_INFLIGHT) await Promise.race(this.inflight);
    if (this.error) throw this.error;
  }

  /** Wait for every write; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.inflight);
    if (this.error) throw this.error;
  }

  /** Wait for every write, ignoring failures (before aborting). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.inflight);
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
  const chunker = new Chunker(params);
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
