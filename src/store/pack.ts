// Owns the pack format: several small objects that travel in one request. A pack is an index followed by the
// members' frames, each exactly the bytes of the member's own object file (codec.ts framing), so every member is
// verified by its own hash after a fetch. Packs are redundant copies (each member is still its own object in data/),
// named by their membership, not their bytes: the same layer gives the same pack names (and catalog) on every node,
// whatever zstd version framed the members.
import { createHash } from 'node:crypto';
import { decodeObject, decodeObjectAsync, HEADER_LEN } from './codec.js';
import { IntegrityError } from '../util/errors.js';

/**
 * Pack layout:
 *   0  "TFP1"               magic + format version
 *   4  count u32le          members (1..PACK_MAX_MEMBERS)
 *   8  count x entry        sha256 (32 bytes) | plain length u32le | frame length u32le
 *   .. frames, in entry order
 */
const MAGIC = Buffer.from('TFP1');
const ENTRY_LEN = 40;

/** Files up to this size (one chunk) may travel in a pack: python's modules and their .pyc, headers, scripts. */
export const PACK_MEMBER_MAX = 64 << 10;
/**
 * A pack closes before its members' plain bytes pass this. Measured on the realistic python image (cold start of
 * `import json,email,...`): 64 KiB members in packs of 512 KiB cut the object requests from 131 to 57 for 25% more
 * plain bytes; 1 MiB packs save 5 more requests for 2% more bytes and twice the wait of a foreground miss.
 */
export const PACK_TARGET = 512 << 10;
/** Bounds what a pack index may claim (a pack of PACK_TARGET bytes of members just over the inline limit). */
const PACK_MAX_MEMBERS = 1024;

export interface PackMember { hash: string; size: number }
export interface PackEntry extends PackMember { frame: Buffer }

/** Where a catalog says a chunk also travels: its pack's name and what bounds the pack's download. */
export interface PackRef { name: string; bytes: number; members: number }

/** The pack's name: SHA-256 over its membership (hash and plain size of each member, in order). */
export function packName(members: PackMember[]): string {
  const h = createHash('sha256').update('thinfs-pack-1\n');
  for (const m of members) h.update(`${m.hash} ${m.size}\n`);
  return h.digest('hex');
}

/** The most bytes a pack of these plain bytes and members can take: a frame is never larger than plain + header. */
export function packMaxBytes(ref: Pick<PackRef, 'bytes' | 'members'>): number {
  return 8 + ref.members * (ENTRY_LEN + HEADER_LEN) + ref.bytes;
}

export function encodePack(members: PackEntry[]): Buffer {
  const head = Buffer.alloc(8 + members.length * ENTRY_LEN);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(members.length, 4);
  members.forEach((m, i) => {
    const o = 8 + i * ENTRY_LEN;
    Buffer.from(m.hash, 'hex').copy(head, o);
    head.writeUInt32LE(m.size, o + 32);
    head.writeUInt32LE(m.frame.length, o + 36);
  });
  return Buffer.concat([head, ...members.map((m) => m.frame)]);
}

/**
 * The members of a pack's bytes, checked for shape and against the name it was fetched by (so a mirror cannot make it
 * carry other objects); their frames are not decoded here. Throws IntegrityError when the bytes are not that pack.
 */
export function parsePack(name: string, raw: Buffer): PackEntry[] {
  const bad = (why: string) => new IntegrityError(name, `pack ${name}: ${why}`);
  if (raw.length < 8 || !raw.subarray(0, 4).equals(MAGIC)) throw bad('bad header (not a thinfs pack)');
  const n = raw.readUInt32LE(4);
  if (n < 1 || n > PACK_MAX_MEMBERS) throw bad(`${n} members`);
  const dataStart = 8 + n * ENTRY_LEN;
  if (raw.length < dataStart) throw bad('index cut short');
  const out: PackEntry[] = [];
  let at = dataStart;
  for (let i = 0; i < n; i++) {
    const o = 8 + i * ENTRY_LEN;
    const size = raw.readUInt32LE(o + 32);
    const len = raw.readUInt32LE(o + 36);
    if (len < HEADER_LEN || at + len > raw.length) throw bad(`member ${i} runs past the end`);
    out.push({ hash: raw.toString('hex', o, o + 32), size, frame: raw.subarray(at, at + len) });
    at += len;
  }
  if (at !== raw.length) throw bad(`${raw.length - at} bytes after the last member`);
  if (packName(out) !== name) throw bad('its members are not the ones its name says');
  return out;
}

/** Each member decoded and verified by its own hash and size; a bad member is an error of its own, never data. */
export function decodePackMembers(name: string, entries: PackEntry[]): Array<{ hash: string; data: Buffer } | { hash: string; error: IntegrityError }> {
  return entries.map((e) => {
    try {
      const data = decodeObject(e.hash, e.frame);
      if (data.length !== e.size) throw new IntegrityError(e.hash, `object ${e.hash}: ${data.length} bytes, pack ${name} says ${e.size}`);
      return { hash: e.hash, data };
    } catch (err) {
      return { hash: e.hash, error: err instanceof IntegrityError ? err : new IntegrityError(e.hash, `pack ${name}: member ${e.hash}: ${(err as Error).message}`) };
    }
  });
}

/**
 * decodePackMembers off the JS thread: every member decoded and verified on the threadpool (codec.ts
 * decodeObjectAsync: native zstd and SHA-256 when the addon is built), all at once. The same results.
 */
export async function decodePackMembersAsync(name: string, entries: PackEntry[]): Promise<Array<{ hash: string; data: Buffer } | { hash: string; error: IntegrityError }>> {
  return Promise.all(entries.map(async (e) => {
    try {
      // The pack's size for it bounds what the decoder allocates (a member's header may lie).
      const data = await decodeObjectAsync(e.hash, e.frame, e.size);
      if (data.length !== e.size) throw new IntegrityError(e.hash, `object ${e.hash}: ${data.length} bytes, pack ${name} says ${e.size}`);
      return { hash: e.hash, data };
    } catch (err) {
      return { hash: e.hash, error: err instanceof IntegrityError ? err : new IntegrityError(e.hash, `pack ${name}: member ${e.hash}: ${(err as Error).message}`) };
    }
  }));
}
