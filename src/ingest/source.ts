// Ingest stage 1, the layer source: opens the input (file or stream), recognises its compression,
// decompresses it as a bounded stream and hashes it (blob digest of the input, diff id of the tar).
// Everything downstream pulls tar bytes from here; nothing here knows what a tar entry is.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { createHash, type Hash } from 'node:crypto';
import { createRequire } from 'node:module';
import { BadInputError, NotFoundError, ThinfsError } from '../util/errors.js';
import type { Progress } from '../util/progress.js';

const require = createRequire(import.meta.url);
interface DCtx { decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number] }
const zstdBinding: { DCtx: new () => DCtx } = require('zstd-napi/binding.js');

export type Compression = 'gzip' | 'zstd' | 'none';

/** Output piece size of the decompressors: large enough to amortise calls, small enough to bound memory. */
const OUT_CHUNK = 1 << 18;

export function sniff(head: Buffer): Compression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') throw new BadInputError('bzip2-compressed layers are not supported (use gzip, zstd or plain tar)');
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) throw new BadInputError('xz-compressed layers are not supported (use gzip, zstd or plain tar)');
  return 'none';
}

export async function openInput(input: string | NodeJS.ReadableStream): Promise<{ stream: NodeJS.ReadableStream; size?: number }> {
  if (typeof input !== 'string') return { stream: input };
  let st;
  try { st = await stat(input); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`input ${input} does not exist`);
    throw new ThinfsError(`cannot read ${input}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new BadInputError(`input ${input} is not a regular file`);
  const stream = createReadStream(input, { highWaterMark: 1 << 20 });
  await new Promise<void>((res, rej) => { stream.once('open', () => res()); stream.once('error', (e) => rej(new ThinfsError(`cannot read ${input}: ${e.message}`))); });
  return { stream, size: st.size };
}

/**
 * zstd decoded as a pull stream: each output piece is yielded before more is decoded, so a small
 * frame of a huge content (a bomb, or a layer holding a multi-GB file) costs one window plus
 * OUT_CHUNK, never its decoded size. (zstd-napi's DecompressStream pushes a whole input chunk's
 * output at once, ignoring backpressure.)
 */
export async function* zstdDecode(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const dctx = new zstdBinding.DCtx();
  let inFrame = false;
  for await (const chunk of src) {
    let input = chunk;
    for (;;) {
      const out = Buffer.allocUnsafe(OUT_CHUNK);
      const [ret, produced, consumed] = dctx.decompressStream(out, input);
      input = input.subarray(consumed);
      if (produced > 0) yield out.subarray(0, produced);
      // Done with this input once it is consumed and the decoder had room to spare (nothing buffered)
      // or the frame ended (calling again would start reading the next frame's header).
      if (input.length === 0 && (produced < out.length || ret === 0)) { inFrame = ret !== 0; break; }
    }
  }
  if (inFrame) throw new Error('stream ends in the middle of a zstd frame');
}

/** Node's zlib respects backpressure: piped and iterated, it decodes only as fast as it is read. */
async function* gunzip(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const d = createGunzip({ chunkSize: OUT_CHUNK });
  const s = Readable.from(src, { objectMode: false });
  s.on('error', (e) => d.destroy(e));
  s.pipe(d);
  try {
    yield* d as AsyncIterable<Buffer>;
  } finally {
    s.destroy();
    d.destroy();
  }
}

export interface LayerSource {
  compression: Compression;
  /** Size of the input if known (files). */
  size?: number;
  /** The uncompressed tar bytes, hashed as they pass. Iterate once. */
  tar: AsyncIterable<Buffer>;
  /** After `tar` is exhausted: digests and byte counts. */
  digests(): { diffId: string; blobDigest: string; tarBytes: number; blobBytes: number };
  /** Stop reading the input (on failure). */
  destroy(): void;
}

/** Open a layer input and return its tar bytes, decompressed and hashed in one pass. */
export async function openLayerSource(input: string | NodeJS.ReadableStream, progress?: (size?: number) => Progress | null): Promise<LayerSource> {
  const { stream, size } = await openInput(input);
  const it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  // Peek the first bytes to pick a decoder, then replay them.
  const head: Buffer[] = [];
  let headLen = 0;
  while (headLen < 6) {
    const r = await it.next();
    if (r.done) break;
    head.push(r.value); headLen += r.value.length;
  }
  if (headLen === 0) throw new BadInputError('input is empty (not a tar)');
  const compression = sniff(Buffer.concat([...head, Buffer.alloc(6)]));
  // An uncompressed input is its own tar: one hash serves as both blob digest and diff id.
  const plain = compression === 'none';
  const blobHash: Hash = createHash('sha256');
  const diffHash: Hash = createHash('sha256');
  let blobBytes = 0, tarBytes = 0;
  const prog = progress?.(size) ?? null;

  async function* raw(): AsyncGenerator<Buffer> {
    for (const b of head) { if (!plain) blobHash.update(b); blobBytes += b.length; prog?.tick(b.length); yield b; }
    for (let r = await it.next(); !r.done; r = await it.next()) {
      const b = r.value as Buffer;
      if (!plain) blobHash.update(b);
      blobBytes += b.length; prog?.tick(b.length);
      yield b;
    }
  }
  const decoded = compression === 'gzip' ? gunzip(raw()) : compression === 'zstd' ? zstdDecode(raw()) : raw();
  async function* tar(): AsyncGenerator<Buffer> {
    try {
      for await (const b of decoded) { diffHash.update(b); tarBytes += b.length; yield b; }
    } catch (e) {
      if (e instanceof ThinfsError) throw e;
      throw new BadInputError(`corrupt or truncated ${compression} stream: ${(e as Error).message}`);
    }
  }
  let digests: ReturnType<LayerSource['digests']> | null = null;
  return {
    compression, size, tar: tar(),
    digests() {
      if (!digests) {
        const diffId = `sha256:${diffHash.digest('hex')}`;
        digests = { diffId, blobDigest: plain ? diffId : `sha256:${blobHash.digest('hex')}`, tarBytes, blobBytes };
      }
      return digests;
    },
    destroy() { (stream as Readable).destroy?.(); },
  };
}
