// Checking files of the cache directory against the hashes that name them, before any byte is used: a chunk read and
// hashed, a file opened after hashing it (passthrough, catalogs), a whole-file copy against its chunk map. Natively
// on the libuv threadpool (src/cache/native/readverify.c) so the JS thread that answers FUSE requests never hashes
// cached bytes; a pure-JS path when the addon is not built.
import { close as closeCb, createReadStream, fstat as fstatCb, open as openCb, read as readCb } from 'node:fs';
import { open } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { availableParallelism, constants } from 'node:os';
import { promisify } from 'node:util';
import type { ChunkRef } from '../catalog/reader.js';
import { sha256hex } from '../util/hash.js';
import { tryNative } from '../util/native.js';

interface ReadVerify {
  /** A Buffer, or -errno (-EBADMSG: wrong size or hash). */
  readVerified(path: string, size: number, sha256hex: string): Promise<Buffer | number>;
  /** The file opened after the checks, streamed (sha256hex '' = its size only): fd, or -errno (-EBADMSG: wrong size or bytes). */
  openVerified(path: string, size: number, sha256hex: string): Promise<number>;
  /** Bytes [start, end) of an open file against packed chunk records (offset u64le, size u64le, SHA-256): 0 or -errno. */
  verifyRanges(fd: number, start: number, end: number, ranges: Buffer): Promise<number>;
}

export const { errno } = constants;
const fdOpen = promisify(openCb), fdStat = promisify(fstatCb), fdRead = promisify(readCb);
/** Close a descriptor this room handed out (after the kernel took its own reference). */
export const fdClose = promisify(closeCb);

/** Whole-file copies at least this big are verified by several threadpool jobs at once, one per core (at most 4). */
const SPLIT_VERIFY = 8 << 20;
const VERIFY_JOBS = Math.max(1, Math.min(4, availableParallelism()));

/** The verified bytes of a cached file named by their hash: natively on the threadpool when the size is known, else here. */
export async function readVerified(file: string, hash: string, size: number | undefined,
  onError: (errno: number) => void): Promise<Buffer | 'missing' | 'corrupt'> {
  const nat = size !== undefined ? tryNative<ReadVerify>() : null;
  if (nat) {
    const r = await nat.readVerified(file, size!, hash);
    if (typeof r !== 'number') return r;
    if (r === -errno.EBADMSG) return 'corrupt';
    if (r !== -errno.ENOENT) onError(-r);
    return 'missing';
  }
  let buf: Buffer;
  try {
    const fh = await open(file, 'r');
    try {
      const want = size ?? (await fh.stat()).size;
      // One byte more than expected tells a longer (corrupt) file from a good one.
      const b = Buffer.allocUnsafe(want + 1);
      let got = 0;
      for (;;) {
        const { bytesRead } = await fh.read(b, got, b.length - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
        if (got === b.length) break;
      }
      buf = b.subarray(0, got);
    } finally { await fh.close(); }
  } catch {
    return 'missing';
  }
  return sha256hex(buf) === hash ? buf : 'corrupt';
}

/**
 * A file opened for reading once its size (and, with a hash, its bytes, streamed) are checked: the fd, -EBADMSG on a
 * mismatch, or another -errno. The descriptor checked is the one returned (no window for a rename in between).
 */
export async function openVerified(file: string, size: number, hash: string): Promise<number> {
  const nat = tryNative<ReadVerify>();
  if (nat) return nat.openVerified(file, size, hash);
  let fd: number;
  try { fd = await fdOpen(file, 'r'); } catch (e) { return -(errno[(e as NodeJS.ErrnoException).code as keyof typeof errno] ?? errno.EIO); }
  let ok = (await fdStat(fd)).size === size;
  if (ok && hash) {
    const h = createHash('sha256');
    for await (const b of createReadStream('', { fd, autoClose: false, start: 0 })) h.update(b as Buffer);
    ok = h.digest('hex') === hash;
  }
  if (ok) return fd;
  await fdClose(fd);
  return -errno.EBADMSG;
}

/**
 * A file's bytes against its chunk map: each chunk's range hashes to its name, the rest reads as zeros. 0, or
 * -EBADMSG on a mismatch, or -errno. Native (threadpool jobs, a big file split at chunk boundaries) or, without
 * the addon, here.
 */
export async function verifyRanges(fd: number, chunks: ChunkRef[], size: number): Promise<number> {
  const nat = tryNative<ReadVerify>();
  if (!nat) return verifyRangesJs(fd, chunks, size);
  const pack = (cs: ChunkRef[]) => {
    const b = Buffer.alloc(cs.length * 48);
    cs.forEach((c, i) => { b.writeBigUInt64LE(BigInt(c.offset), i * 48); b.writeBigUInt64LE(BigInt(c.size), i * 48 + 8); b.write(c.hash, i * 48 + 16, 32, 'hex'); });
    return b;
  };
  // Parts cut at chunk boundaries, about size / VERIFY_JOBS bytes each; every part checks its holes too.
  const jobs: Promise<number>[] = [];
  const parts = size >= SPLIT_VERIFY ? VERIFY_JOBS : 1;
  let from = 0, start = 0;
  for (let k = 1; k <= parts; k++) {
    let to = from;
    const until = k === parts ? size : (size * k) / parts;
    while (to < chunks.length && (k === parts || chunks[to]!.offset + chunks[to]!.size <= until)) to++;
    if (to === from && k < parts) continue;
    const end = to < chunks.length ? chunks[to]!.offset : size;
    jobs.push(nat.verifyRanges(fd, start, end, pack(chunks.slice(from, to))));
    from = to;
    start = end;
  }
  const rs = await Promise.all(jobs);
  return rs.find((r) => r !== 0) ?? 0;
}

async function verifyRangesJs(fd: number, chunks: ChunkRef[], size: number): Promise<number> {
  const read = async (off: number, len: number) => {
    const b = Buffer.allocUnsafe(len);
    for (let got = 0; got < len;) {
      const { bytesRead } = await fdRead(fd, b, got, len - got, off + got);
      if (bytesRead === 0) return null;
      got += bytesRead;
    }
    return b;
  };
  let pos = 0;
  for (const c of [...chunks, { offset: size, size: 0, hash: '' }]) {
    if (c.offset < pos || c.offset + c.size > size) return -errno.EINVAL;
    // Holes are read in pieces: a sparse gap may be large.
    for (; pos < c.offset; pos += Math.min(1 << 20, c.offset - pos)) {
      const z = await read(pos, Math.min(1 << 20, c.offset - pos));
      if (!z || z.some((x) => x !== 0)) return -errno.EBADMSG;
    }
    if (!c.size) continue;
    const d = await read(c.offset, c.size);
    if (!d || sha256hex(d) !== c.hash) return -errno.EBADMSG;
    pos = c.offset + c.size;
  }
  return 0;
}
