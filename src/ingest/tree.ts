// Ingest stage 2, the tree builder: places each tar entry in the layer's catalog tree. Owns path
// normalisation and the refusals of names that would escape the layer or that the kernel cannot
// hold, implicit parent directories, hard links, OCI whiteouts (in overlayfs form) and the rules
// for entries of one layer that replace each other. Content is not its business: it says which
// inode a file's data belongs to, and keeps only small files inline.
import type { TarEntry } from '../tar/reader.js';
import type { CatalogWriter } from '../catalog/writer.js';
import { DirentKind, FLAG_FRESH, FLAG_IMPLICIT, FLAG_OPAQUE, ROOT_INO, type EntryType } from '../catalog/schema.js';
import { BadInputError } from '../util/errors.js';

/** Files up to this size live inside the catalog: no object, no extra round trip on first read. */
export const INLINE_MAX = 1024;

/** Linux limits (limits.h): a name component of NAME_MAX bytes, a symlink target under PATH_MAX with its NUL. */
const NAME_MAX = 255;
const PATH_MAX = 4096;
/** uid_t/gid_t are 32 bits and (uid_t)-1 means "no id": a larger id would be cut to its low bits when served. */
const ID_MAX = 0xfffffffe;
/** Linux xattr limits (limits.h): a name of XATTR_NAME_MAX bytes, a value of XATTR_SIZE_MAX, a listxattr of XATTR_LIST_MAX. */
const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;
const XATTR_LIST_MAX = 65536;
/** The kernel's dev_t holds a 12-bit major and a 20-bit minor (MINORBITS): mknod refuses more (EINVAL), stat cannot show it. */
const DEV_MAJOR_MAX = 0xfff;
const DEV_MINOR_MAX = 0xfffff;

interface Node { ino: number; type: EntryType; kind: DirentKind; parent: number; name: Buffer }

export interface TreeCounts { entries: number; files: number; bytes: number; inlined: number }

/** A name for an error message: escaped (no raw control bytes to a terminal), long ones cut. */
export function printable(b: Buffer): string {
  return b.length > 200 ? JSON.stringify(b.subarray(0, 200).toString('utf8')) + `... (${b.length} bytes)` : JSON.stringify(b.toString('utf8'));
}

/** "./a//b/" -> "a/b"; refuses absolute paths and any ".." so nothing can land outside the layer. */
function normalize(raw: Buffer, what: string): string {
  const s = raw.toString('latin1');
  if (s.startsWith('/')) throw new BadInputError(`${what} ${printable(raw)} is an absolute path`);
  const parts = s.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new BadInputError(`${what} ${printable(raw)} contains ".." (escapes the layer root)`);
  return parts.join('/');
}

/** What the kernel cannot represent is refused here, not stored to be served wrong (EIO, truncated, id 0). */
function checkLimits(e: TarEntry): void {
  for (const part of e.path.toString('latin1').split('/')) {
    if (part.length > NAME_MAX) throw new BadInputError(`member ${printable(e.path)}: a name component is ${part.length} bytes (the limit is ${NAME_MAX})`);
  }
  if (e.type === 'symlink' && e.linkpath!.length >= PATH_MAX) {
    throw new BadInputError(`symlink ${printable(e.path)}: target of ${e.linkpath!.length} bytes (the limit is ${PATH_MAX - 1})`);
  }
  for (const [what, id] of [['uid', e.uid], ['gid', e.gid]] as const) {
    if (!(id >= 0 && id <= ID_MAX)) throw new BadInputError(`member ${printable(e.path)}: ${what} ${id} is not a valid Linux id (0..${ID_MAX})`);
  }
  if ((e.type === 'chardev' || e.type === 'blockdev') && !(e.devmajor <= DEV_MAJOR_MAX && e.devminor <= DEV_MINOR_MAX)) {
    throw new BadInputError(`device ${printable(e.path)}: ${e.devmajor}:${e.devminor} is not a Linux device number (major 0..${DEV_MAJOR_MAX}, minor 0..${DEV_MINOR_MAX})`);
  }
  // An xattr getxattr cannot name or return (ERANGE, E2BIG), or a list listxattr cannot return (E2BIG, which hides
  // every xattr of the file from cp -a, tar --xattrs, getfattr), would be listed but never served as the tar says.
  let list = 0;
  for (const [k, v] of e.xattrs) {
    const n = Buffer.byteLength(k);
    if (n === 0 || n > XATTR_NAME_MAX || k.includes('\0')) throw new BadInputError(`member ${printable(e.path)}: xattr name ${printable(Buffer.from(k))} is not a Linux xattr name (1..${XATTR_NAME_MAX} bytes, no NUL)`);
    if (v.length > XATTR_SIZE_MAX) throw new BadInputError(`member ${printable(e.path)}: xattr ${printable(Buffer.from(k))} has a value of ${v.length} bytes (the limit is ${XATTR_SIZE_MAX})`);
    list += n + 1;
  }
  if (list > XATTR_LIST_MAX) throw new BadInputError(`member ${printable(e.path)}: its xattr names take ${list} bytes (listxattr returns at most ${XATTR_LIST_MAX})`);
}

function meta(e: TarEntry) {
  return { mode: e.mode, uid: e.uid, gid: e.gid, uname: e.uname || null, gname: e.gname || null, mtime: e.mtime, mtimeNs: e.mtimeNs, size: 0 };
}

export class TreeBuilder {
  private readonly nodes = new Map<string, Node>();
  /** Hidden whiteouts (see hideWhiteout) by parent and name. */
  private readonly hiddenWhiteouts = new Map<string, number>();
  /** Dirents (hidden ones included) under each directory inode that has any. */
  private readonly children = new Map<number, number>();
  /** Directories (inode) holding an opaque marker dirent, and that marker's inode. */
  private readonly opaqueMarked = new Map<number, number>();
  private rootFlags = FLAG_IMPLICIT;
  private prefix: string | null = null;
  readonly counts: TreeCounts = { entries: 0, files: 0, bytes: 0, inlined: 0 };

  constructor(private readonly cat: CatalogWriter) {
    const rootIno = cat.addInode({ type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, mtimeNs: 0, flags: FLAG_IMPLICIT });
    // An internal invariant (a fresh writer hands out ROOT_INO first), not something input can cause: a plain Error.
    if (rootIno !== ROOT_INO) throw new Error('catalog root inode mismatch');
    this.nodes.set('', { ino: ROOT_INO, type: 'dir', kind: DirentKind.Normal, parent: 0, name: Buffer.alloc(0) });
  }

  /** Catalog properties the tree decides: whether members were "./"-prefixed, whether the root was listed. */
  get props(): { name_prefix: string; root_explicit: number } {
    return { name_prefix: this.prefix ?? '', root_explicit: this.rootFlags & FLAG_IMPLICIT ? 0 : 1 };
  }

  /**
   * Place one entry. Returns the inode whose content the caller must chunk from `data`, or null
   * (no content, or small enough to be read here and kept inline).
   */
  async add(e: TarEntry, data: AsyncIterable<Buffer>): Promise<number | null> {
    const cat = this.cat;
    this.counts.entries++;
    if (this.prefix === null) this.prefix = e.path.toString('latin1').startsWith('./') ? './' : '';
    let path = normalize(e.path, 'member');
    // A path the kernel takes in one call is under PATH_MAX with its NUL (GNU tar fails such a member with
    // ENAMETOOLONG); it also bounds the depth of the parent chain made below.
    if (path.length >= PATH_MAX) throw new BadInputError(`member ${printable(e.path)}: a path of ${path.length} bytes (the limit is ${PATH_MAX - 1})`);
    checkLimits(e);
    const base = path.slice(path.lastIndexOf('/') + 1);
    let kind = DirentKind.Normal;
    let type: EntryType = e.type === 'hardlink' ? 'file' : e.type;
    let rdev = [e.devmajor, e.devminor];

    if (path === '') {
      if (e.type !== 'dir') throw new BadInputError(`member ${printable(e.path)} names the layer root but is not a directory`);
      cat.updateDir(ROOT_INO, { ...meta(e), type: 'dir' }, this.rootFlags &= ~FLAG_IMPLICIT);
      for (const [k, v] of e.xattrs) cat.addXattr(ROOT_INO, k, v);
      return null;
    }
    // A whiteout is a file, never a directory: `.wh.x/y` would make a directory `.wh.x`, a name the layer's overlayfs
    // form keeps for the whiteout or opaque marker it stands for (the catalog could not hold both).
    const dirPart = `/${path.slice(0, path.length - base.length)}`;
    const under = dirPart.indexOf('/.wh.');
    if (under >= 0) {
      const wh = dirPart.slice(under + 1, dirPart.indexOf('/', under + 1));
      throw new BadInputError(`member ${printable(e.path)} lies under ${printable(Buffer.from(wh, 'latin1'))}, a whiteout name, not a directory`);
    }
    // OCI whiteouts become what overlayfs understands: a 0/0 char device, or an opaque xattr on the dir.
    if (base === '.wh..wh..opq') {
      if (e.type !== 'file') throw new BadInputError(`opaque marker ${printable(e.path)} is not a plain empty file`);
      kind = DirentKind.OpaqueMarker;
    } else if (base.startsWith('.wh.')) {
      if (e.type !== 'file' || base.length === 4) throw new BadInputError(`whiteout ${printable(e.path)} is not a plain empty file`);
      // ".wh.." and ".wh..." would hide "." or "..": not names a directory can hold.
      if (base === '.wh..' || base === '.wh...') throw new BadInputError(`whiteout ${printable(e.path)} names ${JSON.stringify(base.slice(4))}, which cannot be deleted`);
      kind = DirentKind.Whiteout;
      path = path.slice(0, path.length - base.length) + base.slice(4);
      type = 'chardev'; rdev = [0, 0];
    }
    const parent = this.parentOf(path, e.path);
    const name = Buffer.from(path.slice(path.lastIndexOf('/') + 1), 'latin1');
    // The same opaque marker twice (a duplicate member): the later one replaces the earlier, as for any other name.
    if (kind === DirentKind.OpaqueMarker) {
      const prev = this.opaqueMarked.get(parent);
      if (prev !== undefined) this.unlink(parent, name, prev);
    }

    if (e.type === 'hardlink') {
      const target = normalize(e.linkpath!, `hardlink target of ${printable(e.path)}`);
      const t = this.nodes.get(target);
      if (!t) throw new BadInputError(`hardlink ${printable(e.path)} points to ${printable(e.linkpath!)}, which is not in the layer before it`);
      // A link to itself changes nothing (GNU tar finds the name is already that file), whatever the file is.
      if (target === path) return null;
      if (t.type === 'dir') throw new BadInputError(`hardlink ${printable(e.path)} points to a directory`);
      if (t.kind !== DirentKind.Normal) throw new BadInputError(`hardlink ${printable(e.path)} points to a whiteout`);
      this.replace(path, parent, name);
      this.link(parent, name, t.ino, DirentKind.Normal, false);
      this.nodes.set(path, { ino: t.ino, type: t.type, kind: DirentKind.Normal, parent, name });
      return null;
    }

    const existing = this.nodes.get(path);
    // A directory listed again, or listed after entries under it (it was implicit until now): its own header's
    // metadata and xattrs apply, as GNU tar sets them on the directory it already made.
    if (existing && existing.type === 'dir' && e.type === 'dir' && kind === DirentKind.Normal) {
      cat.updateDir(existing.ino, { ...meta(e), type: 'dir' }, 0);
      for (const [k, v] of e.xattrs) cat.addXattr(existing.ino, k, v);
      return null;
    }
    // OCI: a whiteout applies to lower layers only (umoci applies it so). After an entry of its own layer with the
    // same name it leaves that entry visible; a directory becomes opaque (only its lower contents go). The whiteout
    // itself is kept as a hidden dirent so that export writes it back.
    if (kind === DirentKind.Whiteout && existing?.kind === DirentKind.Normal) {
      if (existing.type === 'dir') cat.setFlags(existing.ino, FLAG_OPAQUE);
      this.hideWhiteout(parent, name, cat.addInode({ ...meta(e), type: 'chardev' }), true);
      return null;
    }
    const afterWhiteout = this.replace(path, parent, name);

    let inline: Buffer | null = null;
    const isFile = type === 'file' && kind === DirentKind.Normal;
    if (isFile && !e.sparse && e.size <= INLINE_MAX) {
      const parts: Buffer[] = [];
      for await (const b of data) parts.push(b);
      inline = Buffer.concat(parts);
      if (inline.length !== e.size) throw new BadInputError(`member ${printable(e.path)}: size mismatch`);
      this.counts.inlined++;
    }
    const ino = cat.addInode({
      ...meta(e), type, size: isFile ? e.size : 0,
      rdevMajor: rdev[0], rdevMinor: rdev[1],
      target: type === 'symlink' ? e.linkpath : null,
      inline,
    });
    this.link(parent, kind === DirentKind.OpaqueMarker ? Buffer.from('.wh..wh..opq') : name, ino, kind);
    if (kind === DirentKind.OpaqueMarker) { cat.setFlags(parent, FLAG_OPAQUE); this.opaqueMarked.set(parent, ino); }
    // A directory after a whiteout of its name in the same layer: fresh, nothing of the lower ones shows through.
    if (afterWhiteout && type === 'dir') cat.setFlags(ino, FLAG_OPAQUE | FLAG_FRESH);
    for (const [k, v] of e.xattrs) cat.addXattr(ino, k, v);
    if (kind !== DirentKind.OpaqueMarker) this.nodes.set(path, { ino, type, kind, parent, name });
    if (!isFile) return null;
    this.counts.files++;
    this.counts.bytes += e.size;
    return inline ? null : ino;
  }

  /** Parent directory of `path`, created implicitly if the tar never listed it; refuses paths through symlinks. */
  private parentOf(path: string, raw: Buffer): number {
    const slash = path.lastIndexOf('/');
    const pp = slash < 0 ? '' : path.slice(0, slash);
    const n = this.nodes.get(pp);
    if (n) {
      if (n.type === 'dir' && n.kind === DirentKind.Normal) return n.ino;
      if (n.type === 'symlink') throw new BadInputError(`entry ${printable(raw)} would be written through symlink ${JSON.stringify(pp)}`);
      // `.wh.x` then `x/a` in one layer: x is made afresh below, as after `.wh.x` then `x/` (see replace()).
      if (n.kind !== DirentKind.Whiteout) throw new BadInputError(`entry ${printable(raw)}: parent ${JSON.stringify(pp)} is not a directory`);
    }
    const gp = this.parentOf(pp, raw);
    const name = Buffer.from(pp.slice(pp.lastIndexOf('/') + 1), 'latin1');
    const afterWhiteout = n ? this.replace(pp, gp, name) : false;
    const ino = this.cat.addInode({ type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, mtimeNs: 0, flags: FLAG_IMPLICIT | (afterWhiteout ? FLAG_OPAQUE | FLAG_FRESH : 0) });
    this.link(gp, name, ino);
    this.nodes.set(pp, { ino, type: 'dir', kind: DirentKind.Normal, parent: gp, name });
    return ino;
  }

  private link(parent: number, name: Buffer, ino: number, kind = DirentKind.Normal, isNewInode = true): void {
    this.cat.link(parent, name, ino, kind, isNewInode);
    this.children.set(parent, (this.children.get(parent) ?? 0) + 1);
  }

  private unlink(parent: number, name: Buffer, ino: number): void {
    this.cat.unlink(parent, name, ino);
    this.children.set(parent, this.children.get(parent)! - 1);
  }

  /** An earlier entry of this layer with this path gives way to a new one; true when it was a whiteout (kept hidden). */
  private replace(path: string, parent: number, name: Buffer): boolean {
    const old = this.nodes.get(path);
    if (!old) return false;
    // An empty directory gives way, as GNU tar removes it (rmdir) to extract the new entry; a non-empty one is refused
    // (GNU tar fails on it; docker and umoci would delete the whole subtree).
    if (old.type === 'dir' && old.kind === DirentKind.Normal && (this.children.get(old.ino) ?? 0) > 0) {
      throw new BadInputError(`member ${JSON.stringify(path)} replaces a non-empty directory with a non-directory`);
    }
    this.nodes.delete(path);
    if (old.kind === DirentKind.Whiteout) {
      // Still deletes the name from lower layers: moved to a hidden dirent before its own name is unlinked.
      this.hideWhiteout(parent, name, old.ino, false);
      this.unlink(parent, name, old.ino);
      return true;
    }
    this.unlink(parent, name, old.ino);
    return false;
  }

  /**
   * A whiteout sharing its name with an entry of its own layer, stored as a hidden dirent (`.wh.NAME`, kind 2: never
   * listed or looked up, written back as is by export). A repeated one replaces the previous.
   */
  private hideWhiteout(parent: number, name: Buffer, ino: number, isNewInode: boolean): void {
    const hidden = Buffer.concat([Buffer.from('.wh.'), name]);
    const key = `${parent}/${hidden.toString('latin1')}`;
    const prev = this.hiddenWhiteouts.get(key);
    if (prev !== undefined) this.unlink(parent, hidden, prev);
    this.link(parent, hidden, ino, DirentKind.OpaqueMarker, isNewInode);
    this.hiddenWhiteouts.set(key, ino);
  }
}
