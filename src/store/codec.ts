// Object framing and codecs: the 16-byte header, zstd/deflate/none, verification on decode (on the threadpool when the
// native addon is built: src/store/native/decode.c; here otherwise).
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { createRequire } from 'node:module';
import { sha256hex } from '../util/hash.js';
import { IntegrityError, ThinfsError, EXIT } from '../util/errors.js';
import { tryNative } from '../util/native.js';

// zstd-napi is a maintained N-API binding that builds from its bundled zstd sources (no download),
// and Node 20's zlib has no zstd: deflate would cap ingest near 60 MB/s per core.
const require = createRequire(import.meta.url);
const zstd: { compress(b: Uint8Array, p?: Record<string, number>): Buffer; decompress(b: Uint8Array): Buffer } = require('zstd-napi');

/**
 * Stored object framing (16-byte header, then payload):
 *   0  "TFO1"         magic + format version
 *   4  codec u8       0 = none, 1 = zstd, 2 = raw deflate
 *   5  reserved[3]    zero
 *   8  length u64le   uncompressed length (bounds decompression, checked on read)
 * The object's name is the SHA-256 of the *uncompressed* bytes, so dedup and verification
 * do not depend on which codec a publisher chose.
 */
const MAGIC = Buffer.from('TFO1');
export const HEADER_LEN = 16;
export enum Codec { None = 0, Zstd = 1, Deflate = 2 }
const CODEC_NAMES: Record<string, Codec> = { none: Codec.None, zstd: Codec.Zstd, deflate: Codec.Deflate };

// Level 1: ~200 MB/s per core on layer data at ~0.31 of the size, vs ~160 MB/s and 0.28 at level 3 (measured).
const ZSTD_LEVEL = 1;

export function parseCodec(name: string): Codec {
  const c = CODEC_NAMES[name];
  if (c === undefined) throw new ThinfsError(`unknown codec "${name}" (known: ${Object.keys(CODEC_NAMES).join(', ')})`, EXIT.USAGE);
  return c;
}

/**
 * Catalogs are fetched before a container's first byte and written once per layer: compressed hard (measured on a
 * 1751-entry layer: 0.35 of the size at level 1, 0.25 at 19). Big ones less hard, so ingest stays bounded.
 */
export function catalogLevel(size: number): number { return size <= 64 << 20 ? 19 : 9; }

export function encodeObject(data: Uint8Array, codec: Codec = Codec.Zstd, level = ZSTD_LEVEL): Buffer {
  let payload: Uint8Array = data;
  let used = Codec.None;
  if (codec !== Codec.None && data.length >= 64) {
    const c = codec === Codec.Zstd ? zstd.compress(data, { compressionLevel: level }) : deflateRawSync(data, { level: 1 });
    // Incompressible data (already-compressed files) is stored raw: readers skip a pointless decode.
    if (c.length < data.length - (data.length >> 5)) { payload = c; used = codec; }
  }
  const out = Buffer.allocUnsafe(HEADER_LEN + payload.length);
  MAGIC.copy(out, 0);
  out[4] = used; out[5] = 0; out[6] = 0; out[7] = 0;
  out.writeBigUInt64LE(BigInt(data.length), 8);
  out.set(payload, HEADER_LEN);
  return out;
}

/** Decode a stored object and verify it hashes to `hash`. Never returns unverified bytes. */
export function decodeObject(hash: string, raw: Uint8Array): Buffer {
  const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (buf.length < HEADER_LEN || !buf.subarray(0, 4).equals(MAGIC)) throw new IntegrityError(hash, `object ${hash}: bad header (not a thinfs object)`);
  const codec = buf[4];
  const len = Number(buf.readBigUInt64LE(8));
  const payload = buf.subarray(HEADER_LEN);
  let data: Buffer;
  try {
    switch (codec) {
      case Codec.None: data = payload; break;
      case Codec.Zstd: data = zstd.decompress(payload); break;
      case Codec.Deflate: data = inflateRawSync(payload, { maxOutputLength: Math.max(len, 1) }); break;
      default: throw new IntegrityError(hash, `object ${hash}: unknown codec ${codec}`);
    }
  } catch (e) {
    if (e instanceof IntegrityError) throw e;
    throw new IntegrityError(hash, `object ${hash}: cannot decompress (${(e as Error).message})`);
  }
  if (data.length !== len) throw new IntegrityError(hash, `object ${hash}: length ${data.length} != header ${len}`);
  const got = sha256hex(data);
  if (got !== hash) throw new IntegrityError(hash, `object ${hash}: content hashes to ${got}`);
  return data;
}

interface NativeDecode {
  /** A Buffer (zstd, verified), 0 (codec none: the payload verified), 1 (decode it in JS) or a negative refusal. */
  decodeObject(raw: Buffer, hash: string, size: number): Promise<Buffer | number>;
  /** The same for an object file read in the same job: [bytes, framed size], 1, or a negative refusal. */
  readObject(path: string, hash: string, size: number): Promise<[Buffer, number] | number>;
}

/** Why the native decoder refused an object (decode.c's negative results). */
const REFUSED: Record<number, string> = {
  [-1]: 'bad header (not a thinfs object)', [-2]: 'cannot decompress', [-3]: 'decoded length differs from its header',
  [-4]: 'content does not hash to its name', [-5]: 'length in its header is not the size expected',
  [-7]: 'file bigger than the size expected',
};
const MISSING = -8, IO_ERROR = -9;
/** decode.c's results that are no refusal of the object: not there, or not readable now (the caller reads it another way). */
export const DECODE_MISSING = MISSING, DECODE_IO = IO_ERROR;

/**
 * decodeObject off the JS thread: decompression and hashing run on the libuv threadpool (the JS thread answers FUSE
 * requests; cold reads used to decode and hash every chunk on it). `size`, when known, must be the decoded length
 * (checked before anything is allocated). Without the addon, or for codecs it leaves to JS, the same checks run here.
 * Never returns unverified bytes; `raw` must not change until it settles.
 */
export async function decodeObjectAsync(hash: string, raw: Buffer, size?: number): Promise<Buffer> {
  const nat = tryNative<NativeDecode>();
  if (nat?.decodeObject && /^[0-9a-f]{64}$/.test(hash)) {
    const r = await nat.decodeObject(raw, hash, size ?? -1);
    if (typeof r !== 'number') return r;
    if (r === 0) return raw.subarray(HEADER_LEN);
    if (r < 0) refuse(hash, r, size);
  }
  const data = decodeObject(hash, raw);
  if (size !== undefined && data.length !== size) throw new IntegrityError(hash, `object ${hash}: ${data.length} bytes, the catalog says ${size}`);
  return data;
}

function refuse(hash: string, r: number, size: number | undefined): never {
  throw objectRefused(hash, r, size);
}

/** The error for an object the native decoder refused (a negative result of decode.c, other than missing or I/O). */
export function objectRefused(hash: string, r: number, size: number | undefined): IntegrityError {
  return new IntegrityError(hash, `object ${hash}: ${REFUSED[r] ?? 'refused'}${r === -5 || r === -7 ? ` (${size})` : ''}`);
}

/**
 * An object in a store on a filesystem, read, decoded and verified in one threadpool job: its bytes and the framed size
 * read; null when it does not exist; undefined when this path cannot take it (no addon, a codec left to JS, an I/O
 * error): the caller reads it the usual way. Never returns unverified bytes.
 */
export async function readObjectFile(file: string, hash: string, size?: number): Promise<{ data: Buffer; rawBytes: number } | null | undefined> {
  const nat = tryNative<NativeDecode>();
  if (!nat?.readObject || !/^[0-9a-f]{64}$/.test(hash)) return undefined;
  const r = await nat.readObject(file, hash, size ?? -1);
  if (typeof r !== 'number') return { data: r[0], rawBytes: r[1] };
  if (r === MISSING) return null;
  if (r === 1 || r === IO_ERROR) return undefined;
  refuse(hash, r, size);
}
