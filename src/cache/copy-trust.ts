// Trust records of whole-file copies: what lets a verified copy be passed to the kernel after a restart without
// hashing it again on the open path. A record (<cache>/verified/, 0600, written atomically) holds the identity the copy
// had when it was verified or built (device, inode, size, mtime and ctime in ns) and the chunk map it was checked
// against. Any write, truncate, chmod or replacement of the copy changes its ctime or inode, so a copy touched since
// no longer matches its record and is verified again; corruption that keeps the identity (bad media) is left to the
// background re-verification, which reads the chunk map from here.
import { fstat as fstatCb } from 'node:fs';
import { promisify } from 'node:util';
import type { ChunkRef } from '../catalog/reader.js';
import { sha256hex } from '../util/hash.js';

const fstatBig = promisify((fd: number, cb: (e: NodeJS.ErrnoException | null, st: import('node:fs').BigIntStats) => void) =>
  fstatCb(fd, { bigint: true }, cb));

export interface Identity { dev: string; ino: string; size: string; mtimeNs: string; ctimeNs: string }

/** The identity of an open file (decimal strings: exact for 64-bit values, and JSON-friendly). */
export async function identityOf(fd: number): Promise<Identity> {
  const st = await fstatBig(fd);
  return { dev: String(st.dev), ino: String(st.ino), size: String(st.size), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs) };
}

export function sameIdentity(a: Identity, b: Identity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

/** The text a copy is named by: its id is the SHA-256 of this (mount/ops.ts fileId). */
export function chunkMapText(size: number, chunks: ChunkRef[]): string {
  return `${size}\n${chunks.map((c) => `${c.offset} ${c.size} ${c.hash}`).join('\n')}`;
}

/** A record: one JSON line of identity, then the chunk map text. */
export function encodeRecord(fileId: string, id: Identity, size: number, chunks: ChunkRef[]): Buffer {
  return Buffer.from(`${JSON.stringify({ v: 1, fileId, ...id })}\n${chunkMapText(size, chunks)}`);
}

export interface TrustRecord { identity: Identity; size: number; chunks: ChunkRef[] }

/**
 * A record read back, or null when it is malformed or not this copy's: the chunk map must hash to the copy's name
 * (so the background pass checks the copy against the map the copy is named by, whatever the record says).
 */
export function decodeRecord(fileId: string, data: Buffer): TrustRecord | null {
  const s = data.toString('utf8');
  const nl = s.indexOf('\n');
  if (nl < 0) return null;
  const map = s.slice(nl + 1);
  if (sha256hex(Buffer.from(map)) !== fileId) return null;
  let h: Record<string, unknown>;
  try { h = JSON.parse(s.slice(0, nl)) as Record<string, unknown>; } catch { return null; }
  const keys = ['dev', 'ino', 'size', 'mtimeNs', 'ctimeNs'] as const;
  if (h.v !== 1 || h.fileId !== fileId || !keys.every((k) => typeof h[k] === 'string' && /^\d+$/.test(h[k] as string))) return null;
  const identity = Object.fromEntries(keys.map((k) => [k, h[k]])) as unknown as Identity;
  const [sizeLine, ...lines] = map.split('\n');
  const size = Number(sizeLine);
  const chunks: ChunkRef[] = [];
  for (const l of lines) {
    const m = /^(\d+) (\d+) ([0-9a-f]{64})$/.exec(l);
    if (!m) return null;
    chunks.push({ offset: Number(m[1]), size: Number(m[2]), hash: m[3]! });
  }
  if (!Number.isSafeInteger(size) || String(size) !== identity.size) return null;
  return { identity, size, chunks };
}
