// Staging one object for a transaction: pin an existing object by hard link, or write a new framed one.
// Shared by the transaction (small writes) and the writer worker threads (ingest), so it imports little.
import { writeFile, link, access } from 'node:fs/promises';
import { linkSync, accessSync, openSync, writeSync, closeSync, unlinkSync } from 'node:fs';
import { encodeObject, type Codec } from './codec.js';

/** put() outcome codes shared with the writer worker. */
export const PUT_PINNED = -1;
const PUT_EXISTING_UNPINNED = -2;

/** Errors of link() that mean "no hard links here" (the object may still exist: checked with access). */
const NO_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EMLINK', 'EXDEV']);

/**
 * Deduplicate against data/<hash> by hard-linking it into the staging dir (a pin: the inode stays ours even
 * if gc unlinks data/<hash>, and commit links it back), else write a new staged object. Returns the staged
 * size, PUT_PINNED, or PUT_EXISTING_UNPINNED where the filesystem refuses hard links (commit then re-checks).
 */
export async function stageObject(existing: string, staged: string, data: Uint8Array, codec: Codec, level?: number, framed = false): Promise<number> {
  try { await link(existing, staged); return PUT_PINNED; } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Staged names are unique per transaction: EEXIST is our own link, answered twice (an NFS retransmission).
    if (code === 'EEXIST') return PUT_PINNED;
    if (NO_LINKS.has(code ?? '')) {
      try { await access(existing); return PUT_EXISTING_UNPINNED; } catch { /* absent: write it */ }
    } else if (code !== 'ENOENT') throw e;
  }
  // `framed`: the bytes are written as they are (a pack, already encoded).
  const out = framed ? data : encodeObject(data, codec, level);
  await writeFile(staged, out, { flag: 'wx' });
  return out.length;
}

/**
 * The same, with blocking system calls: for the writer threads, which do nothing else. Each fs/promises call
 * is a round trip through libuv's threadpool (two thread switches per call, five calls per object); measured
 * on ingest, the worker threads' system time and futex waits were a third of their CPU.
 */
export function stageObjectSync(existing: string, staged: string, data: Uint8Array, codec: Codec, level?: number): number {
  try { linkSync(existing, staged); return PUT_PINNED; } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return PUT_PINNED;
    if (NO_LINKS.has(code ?? '')) {
      try { accessSync(existing); return PUT_EXISTING_UNPINNED; } catch { /* absent: write it */ }
    } else if (code !== 'ENOENT') throw e;
  }
  const framed = encodeObject(data, codec, level);
  const fd = openSync(staged, 'wx', 0o666);
  try {
    let off = 0;
    while (off < framed.length) off += writeSync(fd, framed, off, framed.length - off);
  } catch (e) {
    closeSync(fd);
    try { unlinkSync(staged); } catch { /* the transaction's abort removes it */ }
    throw e;
  }
  closeSync(fd);
  return framed.length;
}
