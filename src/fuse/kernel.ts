// The FUSE kernel protocol as thinfs speaks it: the binding of the native transport (src/fuse/native/, built by node-gyp)
// and the wire structures of the requests JS answers (linux/fuse.h, protocol 7.x, little-endian). Knows nothing of layers.
import { constants } from 'node:os';
import { loadNative } from '../util/native.js';
import { readU64, writeU64, type Attr } from '../format/listing.js';

export const OP = {
  CLOSED: 0, /** pseudo: a listing handed ahead with keepListing was first served by the transport */ DIR_LISTED: 0xfff0,
  /** pseudo: the transport opened a file handed over with fileAhead, and answers its reads */ OPENED: 0xfff1,
  /** pseudo: the transport answered a READ from landed chunks (offset in `unique`, length in the body) */ READ_NATIVE: 0xfff2, LOOKUP: 1, FORGET: 2, GETATTR: 3, READLINK: 5, OPEN: 14, READ: 15, STATFS: 17, GETXATTR: 22, LISTXATTR: 23,
  INIT: 26, READDIR: 28, BATCH_FORGET: 42, READDIRPLUS: 44,
} as const;

export const E = constants.errno;


/** tNs: CLOCK_MONOTONIC (process.hrtime's clock) when the reader thread took the request from the kernel. */
export type Handler = (op: number, unique: number, nodeid: number, body: Buffer | null | number, tNs: number) => void;
export interface Session { readonly __session: unique symbol }
export interface Binding {
  mount(mountpoint: string, fsname: string, opts: string,
    limits: {
      maxReadahead: number; maxPages: number; maxBackground: number; passthrough: number; ttl: number;
      /** Node ids below this name directories whose listings change: never cached by the kernel nor answered natively. */
      uncachedBelow: number;
      /**
       * Without passthrough: first opens of files go to JS, whose openReply may hand over a verified local copy of the
       * file's bytes; the transport then answers that node's READs itself (fd kept until the node is forgotten).
       */
      nativeReads?: number;
      /** Bytes of listings the transport keeps (keepListing), least recently used dropped beyond (default 48 MiB). */
      listingBudget?: number;
    }, h: Handler): Session;
  reply(s: Session, unique: number, errno: number, data?: Buffer | Buffer[]): number;
  unmount(mountpoint: string): number;
  /** The listing of an immutable directory ends at offset: the transport answers reads past it itself. */
  dirEof(s: Session, nodeid: number, offset: number): void;
  /**
   * Answer the first OPEN of a node (later ones the transport answers alike): fd >= 0 passes reads through to that
   * file (passthrough) or has the transport answer them from it (nativeReads), -1 serves them here. Returns the backing
   * id or 1 (transport reads), 0, or -errno when the file was refused.
   */
  openReply(s: Session, unique: number, nodeid: number, fd: number): number;
  /**
   * Hand over a one-chunk file the kernel may open next (nativeReads): its cached chunk's path, size and SHA-256. The
   * transport answers its first open (after hashing the chunk; a mismatch goes to JS as usual) and its reads itself,
   * then sends OP.OPENED. Files over 1 MiB are ignored (hashed on the threadpool by JS instead).
   */
  fileAhead(s: Session, nodeid: number, chunkPath: string, size: number, sha256: Buffer): void;
  /** The same for a tiny file whose bytes JS has (inline in its catalog, verified with it): copied, served from memory. */
  fileBytesAhead(s: Session, nodeid: number, bytes: Buffer): void;
  /**
   * A chunk of an open node (bytes [offset, offset + length)) is in a verified cache file with this identity (32 bytes
   * from the cache's landObject/identifyVerified): the transport answers READs it covers from that file, after checking
   * the identity each time (a changed file goes back to JS). False when the node has no open entry to take it.
   */
  chunkLanded(s: Session, nodeid: number, nodeSize: number, offset: number, length: number, path: string, id: Buffer): boolean;
  /** A READ JS holds, answered on the threadpool from the node's landed chunks: 1, or 0 (not all landed or one changed: JS answers). */
  replyChunks(s: Session, unique: number, nodeid: number, offset: number, size: number): Promise<number>;
  /**
   * Bytes of a node's file put in the kernel's page cache (FUSE_NOTIFY_STORE, at most 1 MiB a call): the kernel never
   * asks for those pages. Run on the threadpool (the write waits for pages a READ holds). 0 or -errno (-ENOENT: the
   * kernel does not know the node).
   */
  notifyStore(s: Session, nodeid: number, offset: number, data: Buffer): Promise<number>;
  /** READs the transport answered from handed-over copies, and their bytes. */
  readStats(s: Session): [number, number];
  /** The kernel forgot the node: its backing file is released once the last open is. */
  forgetNode(s: Session, nodeid: number): void;
  /** The cache evicted the node's file: dropped at the last release of its opens, even if others came meanwhile. */
  letGoNode(s: Session, nodeid: number): void;
  /**
   * A page of a pre-encoded listing (src/format/listing.ts) from a readdir cookie on: "." and ".." (self, 1), then
   * its entries as READDIRPLUS records (ids = base + catalog inode, lifetimes of ttl seconds) or plain dirents, as many
   * as fit in out. [bytes written, position reached in the block]; undefined when the block is malformed.
   */
  dirPage(block: Buffer, cookie: number, out: Buffer, plus: boolean, base: number, ttl: number, self: number): [number, number] | undefined;
  /**
   * Keep an immutable directory's listing in the transport (copied once; LRU within the mount's listingBudget; one
   * over a twelfth of it is refused: false). It answers LOOKUPs of names in that directory itself (a name not in it
   * with a negative entry) and, ahead, the kernel's next READDIR of it (once, then OP.DIR_LISTED).
   */
  keepListing(s: Session, nodeid: number, block: Buffer, base: number, ahead: boolean): boolean;
  /** The listings the transport keeps, their bytes, those dropped for the budget, and the LOOKUPs answered from them. */
  listingStats(s: Session): [number, number, number, number];
  /** The node has no xattrs: the transport answers its GETXATTR (ENODATA) and LISTXATTR (empty) itself from now on. */
  noXattr(s: Session, nodeid: number): void;
  /** noXattr for every entry of a listing whose record carries LISTING_NO_XATTRS (ids = base + catalog inode). */
  noXattrListing(s: Session, block: Buffer, base: number): void;
  /** GETXATTR and LISTXATTR requests the transport answered itself. */
  xattrsAnswered(s: Session): number;
}

export function native(): Binding { return loadNative<Binding>(); }

export const ATTR_SIZE = 88;
const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
const DIRENT_BASE = 24;

/**
 * struct fuse_attr. atime and ctime are reported equal to mtime: layers carry no other times. (native/listing.c
 * builds the same attributes from a pre-encoded listing.)
 */
export function encodeAttr(a: Attr): Buffer {
  const b = Buffer.alloc(ATTR_SIZE);
  const sec = Math.trunc(a.mtime);
  writeU64(b, a.ino, 0);
  writeU64(b, a.size, 8);
  writeU64(b, a.blocks, 16);
  writeU64(b, sec, 24);
  writeU64(b, sec, 32);
  writeU64(b, sec, 40);
  b.writeUInt32LE(a.mtimeNs, 48);
  b.writeUInt32LE(a.mtimeNs, 52);
  b.writeUInt32LE(a.mtimeNs, 56);
  b.writeUInt32LE(a.mode >>> 0, 60);
  b.writeUInt32LE(a.nlink >>> 0, 64);
  b.writeUInt32LE(a.uid >>> 0, 68);
  b.writeUInt32LE(a.gid >>> 0, 72);
  b.writeUInt32LE(a.rdev >>> 0, 76);
  b.writeUInt32LE(a.blksize, 80);
  return b;
}

/** struct fuse_entry_out header (40 bytes) into b at off; the attr follows. nodeid 0 = cached negative entry. */
export function writeEntryHeader(b: Buffer, off: number, nodeid: number, entryTtl: number, attrTtl: number): void {
  writeU64(b, nodeid, off);
  writeU64(b, 0, off + 8);
  writeU64(b, entryTtl, off + 16);
  writeU64(b, attrTtl, off + 24);
  b.writeUInt32LE(0, off + 32);
  b.writeUInt32LE(0, off + 36);
}

export function entryOut(nodeid: number, entryTtl: number, attrTtl: number, attr: Buffer | null): Buffer[] {
  const h = Buffer.alloc(40);
  writeEntryHeader(h, 0, nodeid, entryTtl, attrTtl);
  return [h, attr ?? Buffer.alloc(ATTR_SIZE)];
}

export function attrOut(ttl: number, attr: Buffer): Buffer[] {
  const h = Buffer.alloc(16);
  writeU64(h, ttl, 0);
  return [h, attr];
}

/** Bytes one dirent takes (plus: with its fuse_entry_out in front), 8-byte aligned. */
export function direntSize(nameLen: number, plus: boolean): number {
  return (((plus ? ENTRY_OUT_SIZE : 0) + DIRENT_BASE + nameLen + 7) & ~7);
}

/** struct fuse_dirent at off: ino, offset of the next entry, name length, d_type, name. Returns the new offset. */
export function writeDirent(b: Buffer, off: number, ino: number, next: number, name: Buffer, dtype: number): number {
  writeU64(b, ino, off);
  writeU64(b, next, off + 8);
  b.writeUInt32LE(name.length, off + 16);
  b.writeUInt32LE(dtype, off + 20);
  name.copy(b, off + DIRENT_BASE);
  const end = off + DIRENT_BASE + name.length;
  const aligned = (end + 7) & ~7;
  b.fill(0, end, aligned);
  return aligned;
}

export interface ReadIn { offset: number; size: number }
/** struct fuse_read_in: fh, offset, size (the rest is unused by a read-only filesystem). */
export function parseReadIn(b: Buffer): ReadIn {
  return { offset: readU64(b, 8), size: b.readUInt32LE(16) };
}

/** LOOKUP carries the name, NUL-terminated: the raw bytes (Linux names are bytes, not UTF-8). */
export function parseName(b: Buffer, off = 0): Buffer {
  const z = b.indexOf(0, off);
  return b.subarray(off, z < 0 ? b.length : z);
}

/** struct fuse_kstatfs. */
export function statfsOut(s: { blocks: number; files: number; bsize: number; namelen: number }): Buffer {
  const b = Buffer.alloc(80);
  writeU64(b, s.blocks, 0);
  writeU64(b, s.files, 24);
  b.writeUInt32LE(s.bsize, 40);
  b.writeUInt32LE(s.namelen, 44);
  b.writeUInt32LE(s.bsize, 48);
  return b;
}

/** The 8-byte answer to a size probe (getxattr/listxattr with size 0). */
export function xattrSizeOut(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(n, 0);
  return b;
}
