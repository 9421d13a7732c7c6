// Staging one object for a transaction: pin an existing object by hard link, or write a new framed one.
// Shared by the transaction (small writes) and the writer worker threads (ingest), so it imports little.
import { writeFile, link, access } from 'node:fs/promises';
import { encodeObject, type Codec } from './codec.js';

/** put() outcome codes shared with the writer worker. */
export const PUT_PINNED = -1;
const PUT_EXISTING_UNPINNED = -2;

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
    if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EMLINK' || code === 'EXDEV') {
      try { await access(existing); return PUT_EXISTING_UNPINNED; } catch { /* absent: write it */ }
    } else if (code !== 'ENOENT') throw e;
  }
  // `framed`: the bytes are written as they are (a pack, already encoded).
  const out = framed ? data : encodeObject(data, codec, level);
  await writeFile(staged, out, { flag: 'wx' });
  return out.length;
}

