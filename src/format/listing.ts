// The packed directory listing format and the attribute rules it carries: the one definition shared by the catalog
// (src/catalog/dirblocks.ts encodes every directory's listing at ingest), the FUSE transport (thinfuse's listing pages
// expand the records into READDIR/READDIRPLUS replies) and the mount (live attribute replies use the same rules).
import { BadInputError } from '../util/errors.js';

/**
 * What an entry's attributes are made from: the fields of a catalog inode (structurally; this layer knows no catalog).
 */
export interface AttrSource {
  type: string; size: number; nlink: number; target: Buffer | null | undefined; mtime: number; mtimeNs: number;
  mode: number; uid: number; gid: number; rdevMajor: number; rdevMinor: number;
}

/** What stat shows of an entry, in the units the kernel wants. */
export interface Attr {
  ino: number; size: number; blocks: number; mtime: number; mtimeNs: number;
  mode: number; nlink: number; uid: number; gid: number; rdev: number; blksize: number;
}

/**
 * An entry's attributes as the kernel sees them: the one definition for live replies and for pre-encoded listings.
 * Directories get st_nlink 2 + subdirectories (find's leaf optimisation relies on it), or 1 where that count is unknown
 * (merged image directories); symlinks their target's length.
 */
export function inodeAttr(i: AttrSource, ino: number, subdirs: number | null): Attr {
  let size = i.size;
  let nlink = i.nlink;
  if (i.type === 'symlink') size = i.target?.length ?? size;
  if (i.type === 'dir') {
    if (!size) size = 4096;
    nlink = subdirs === null ? 1 : 2 + subdirs;
  }
  return {
    ino, size, blocks: Math.ceil(size / 512), mtime: i.mtime, mtimeNs: i.mtimeNs, mode: i.mode, nlink,
    uid: i.uid, gid: i.gid, rdev: encodeDev(i.rdevMajor, i.rdevMinor), blksize: 4096,
  };
}

/** The kernel's new_encode_dev: 12-bit major, 20-bit minor in 32 bits. */
function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xfff00) << 12)) >>> 0;
}

/** A 64-bit little-endian integer from a JS number (exact below 2^53; negative = two's complement), without BigInt. */
export function writeU64(b: Buffer, v: number, off: number): void {
  const hi = Math.floor(v / 4294967296);
  b.writeUInt32LE((v - hi * 4294967296) >>> 0, off);
  b.writeUInt32LE(hi >>> 0, off + 4);
}

export function readU64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 4294967296;
}

/**
 * A listing is its directory's visible entries in byte order of name, each a packed little-endian record,
 * 50 bytes + the name:
 *   u64 ino | u64 size | i64 mtime s | u32 mtime ns | u32 mode | u32 uid | u32 gid | u32 nlink | u32 rdev | u16 namelen | name
 * ino is the catalog inode number (a mount adds its base for the layer); size, nlink and rdev are already what stat
 * shows (inodeAttr). A record's readdir cookie is LISTING_FIRST_COOKIE + the byte offset of the record after it, so
 * pages of READDIR and READDIRPLUS continue each other; "." and ".." are cookies 0 and 1. An empty directory's listing
 * is empty. (thinfuse's listing.c reads the same layout.)
 */
export const LISTING_RECORD_HEADER = 50;
/**
 * A flag in a record's mode field (st_mode is its low 16 bits): the entry has no xattrs as the mount shows it (none
 * stored, not an opaque directory), so the transport may answer GETXATTR with ENODATA itself. Records without it
 * (older listings) are asked about as before.
 */
export const LISTING_NO_XATTRS = 0x80000000;
/** Cookie of the first record of a listing; "." and ".." come before it. */
export const LISTING_FIRST_COOKIE = 2;
const LISTING_MAX_NAME = 0xffff;

/**
 * Appends one entry's record to out at off (out has room: LISTING_RECORD_HEADER + name.length); returns the new end.
 * noXattrs sets LISTING_NO_XATTRS.
 */
export function encodeListingRecord(a: Attr, name: Buffer, out: Buffer, off: number, noXattrs = false): number {
  if (name.length > LISTING_MAX_NAME) throw new BadInputError(`a name of ${name.length} bytes does not fit a listing record`);
  writeU64(out, a.ino, off);
  writeU64(out, a.size, off + 8);
  writeU64(out, Math.trunc(a.mtime), off + 16);
  out.writeUInt32LE(a.mtimeNs >>> 0, off + 24);
  out.writeUInt32LE(((a.mode & 0xffff) | (noXattrs ? LISTING_NO_XATTRS : 0)) >>> 0, off + 28);
  out.writeUInt32LE(a.uid >>> 0, off + 32);
  out.writeUInt32LE(a.gid >>> 0, off + 36);
  out.writeUInt32LE(a.nlink >>> 0, off + 40);
  out.writeUInt32LE(a.rdev >>> 0, off + 44);
  out.writeUInt16LE(name.length, off + 48);
  name.copy(out, off + LISTING_RECORD_HEADER);
  return off + LISTING_RECORD_HEADER + name.length;
}
