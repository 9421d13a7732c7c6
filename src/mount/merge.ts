// Owns the overlay rules of a flattened image (images/<name>/rootfs): which layer's entry a name shows, what a merged
// directory lists, which attributes and xattrs a merged entry has, and how many of a file's hard links stay visible.
// Pure: it reads layer trees through LayerTree and keeps no state, so the rules are unit-tested without a mount
// (test/mount-merge.test.ts). The reference is umoci's unpack of the same OCI layout (test/mount-merge-umoci.test.ts).
import { FLAG_FRESH, FLAG_IMPLICIT, FLAG_OPAQUE, OPAQUE_XATTR, ROOT_INO } from '../catalog/schema.js';
import type { Dirent, Inode } from '../catalog/reader.js';

/** What the rules need of one layer's tree (a CatalogReader is one). */
export interface LayerTree {
  getInode(ino: number): Inode | undefined;
  lookup(dir: number, name: Buffer): Inode | undefined;
  /** Visible entries of a directory (hidden markers left out). */
  readdir(dir: number): Dirent[];
  /** Stored xattrs plus the synthesized overlay opaque marker. */
  xattrs(ino: number, flags?: number): Map<string, Buffer>;
  /** Every visible name of an inode, as (parent directory, name): several for a hard-linked file, one for a directory. */
  links(ino: number): Array<{ parent: number; name: Buffer }>;
}

/** A layer as the rules see it: its tree, loaded. */
export interface MergeLayer { readonly catalog: LayerTree | null }
/** One layer's directory taking part in a merged directory. */
export interface Member<L extends MergeLayer> { layer: L; inode: Inode }
/**
 * What a name resolves to in an image: one layer's non-directory, or a directory merged from several layers (top first),
 * with the directory whose attributes and xattrs it shows (attrMember).
 */
export type Found<L extends MergeLayer> = { k: 'entry'; layer: L; inode: Inode } | { k: 'dir'; members: Array<Member<L>>; attr: Member<L> };
export interface MergedDirent<L extends MergeLayer> { name: Buffer; type: Inode['type']; ino: number; layer: L }

/** overlayfs keeps its own trusted.overlay.* attributes out of a merged view; so do images/. */
const HIDDEN_XATTR_PREFIX = 'trusted.overlay.';

const tree = (l: MergeLayer): LayerTree => l.catalog!;

/** The overlayfs whiteout: a 0/0 character device (ingest stores OCI `.wh.NAME` this way). */
export function isWhiteout(i: Pick<Inode, 'type' | 'rdevMajor' | 'rdevMinor'>): boolean {
  return i.type === 'chardev' && i.rdevMajor === 0 && i.rdevMinor === 0;
}

/** A directory that hides the same directory of every lower layer (OCI `.wh..wh..opq`, or a whiteout of its own name). */
function isOpaque(t: LayerTree, dir: Inode): boolean {
  if (dir.flags & FLAG_OPAQUE) return true;
  return t.xattrs(dir.ino, dir.flags).get(OPAQUE_XATTR)?.toString() === 'y';
}

/** Directories top first, down to and including the first opaque one: the layers below it take no part. */
function cutAtOpaque<L extends MergeLayer>(members: Array<Member<L>>): Array<Member<L>> {
  const out: Array<Member<L>> = [];
  for (const m of members) {
    out.push(m);
    if (isOpaque(tree(m.layer), m.inode)) break;
  }
  return out;
}

/** The image's root directory: every layer's root, top layer first (the image lists its layers bottom first). */
export function rootMembers<L extends MergeLayer>(layersBottomFirst: readonly L[]): Array<Member<L>> {
  return cutAtOpaque(layersBottomFirst.slice().reverse().map((layer) => ({ layer, inode: tree(layer).getInode(ROOT_INO)! })));
}

/** The image's root directory with the root whose attributes it shows (an opaque root keeps a lower root's too). */
export function rootFound<L extends MergeLayer>(layersBottomFirst: readonly L[]): Extract<Found<L>, { k: 'dir' }> {
  const all = layersBottomFirst.slice().reverse().map((layer) => ({ layer, inode: tree(layer).getInode(ROOT_INO)! }));
  const members = cutAtOpaque(all);
  return { k: 'dir', members, attr: attrMember(all) };
}

/**
 * One name in a merged directory, overlayfs-style: the top layer that has the name wins; a whiteout hides every layer
 * below it; a non-directory hides lower directories and a directory hides lower non-directories; directories of the
 * same name merge down to the first opaque one.
 */
export function lookup<L extends MergeLayer>(members: ReadonlyArray<Member<L>>, name: Buffer): Found<L> | null {
  // `all`: the same directory down past an opaque one, where only its attributes may come from (attrMember).
  const all: Array<Member<L>> = [];
  let dirs: Array<Member<L>> | null = null;
  let attrFound = false;
  for (const m of members) {
    const e = tree(m.layer).lookup(m.inode.ino, name);
    if (!e) continue;
    if (isWhiteout(e)) break;
    if (e.type !== 'dir') {
      if (all.length) break;
      return { k: 'entry', layer: m.layer, inode: e };
    }
    all.push({ layer: m.layer, inode: e });
    attrFound ||= attrStops(e);
    if (!dirs && isOpaque(tree(m.layer), e)) dirs = all.slice();
    if (dirs && attrFound) break;
  }
  return all.length ? { k: 'dir', members: dirs ?? all, attr: attrMember(all) } : null;
}

/** Visible entries of a merged directory, in byte order of name: union top-down, upper names shadow lower, whiteouts hide. */
export function readdir<L extends MergeLayer>(members: ReadonlyArray<Member<L>>): Array<MergedDirent<L>> {
  const seen = new Set<string>();
  const out: Array<MergedDirent<L>> = [];
  for (const m of members) {
    const t = tree(m.layer);
    for (const d of t.readdir(m.inode.ino)) {
      const key = d.name.toString('latin1');
      if (seen.has(key)) continue;
      seen.add(key);
      if (d.type === 'chardev') {
        const i = t.getInode(d.ino);
        if (i && isWhiteout(i)) continue;
      }
      out.push({ name: d.name, type: d.type, ino: d.ino, layer: m.layer });
    }
  }
  return out.sort((a, b) => Buffer.compare(a.name, b.name));
}

/** A path (names from the image root) resolved without following symlinks; null when hidden or absent. */
export function resolve<L extends MergeLayer>(root: ReadonlyArray<Member<L>>, names: readonly Buffer[]): Found<L> | null {
  let cur: Found<L> = { k: 'dir', members: root.slice(), attr: attrMember(root) };
  for (const name of names) {
    if (cur.k !== 'dir') return null;
    const next: Found<L> | null = lookup(cur.members, name);
    if (!next) return null;
    cur = next;
  }
  return cur;
}

/** A directory whose own attributes an image shows: listed by its tar, or made afresh after a whiteout of its name. */
function attrStops(i: Inode): boolean {
  return !(i.flags & FLAG_IMPLICIT) || (i.flags & FLAG_FRESH) !== 0;
}

/**
 * The directory whose attributes and xattrs a merged directory shows, given the same directory of each layer top first
 * (past an opaque one too: an opaque marker deletes a directory's lower contents, not the directory): the top one its
 * layer's tar listed. A directory a layer only created as the parent of a listed path (implicit) changes nothing when
 * unpacked over a lower one, so it shows the lower one's metadata, unless the layer made it afresh after a whiteout of
 * its name; an implicit directory alone shows its own defaults.
 */
export function attrMember<L extends MergeLayer>(members: ReadonlyArray<Member<L>>): Member<L> {
  return members.find((m) => attrStops(m.inode)) ?? members[0]!;
}

/** Every path of an inode in its layer, as names from the layer root. */
function pathsOf(t: LayerTree, ino: number): Buffer[][] {
  const dirPath = (dir: number): Buffer[] | null => {
    const names: Buffer[] = [];
    for (let d = dir, guard = 0; d !== ROOT_INO; guard++) {
      const up = t.links(d)[0];
      if (!up || guard > 4096) return null; // not reachable from the root: the catalog is damaged, the name counts for nothing
      names.push(up.name);
      d = up.parent;
    }
    return names.reverse();
  };
  const out: Buffer[][] = [];
  for (const l of t.links(ino)) {
    const p = dirPath(l.parent);
    if (p) out.push([...p, l.name]);
  }
  return out;
}

/**
 * st_nlink of a non-directory in an image: its names in its own layer that the image still shows as this same entry.
 * A name whited out, replaced, or under a directory replaced or made opaque by an upper layer is gone from the image,
 * as it is from a rootfs unpacked layer by layer (each such upper entry unlinks the name).
 */
export function visibleNlink<L extends MergeLayer>(root: ReadonlyArray<Member<L>>, layer: L, inode: Inode): number {
  if (inode.type === 'dir' || inode.nlink <= 1) return inode.nlink;
  let n = 0;
  for (const p of pathsOf(tree(layer), inode.ino)) {
    const f = resolve(root, p);
    if (f?.k === 'entry' && f.layer === layer && f.inode.ino === inode.ino) n++;
  }
  // The name the caller reached it by is visible: never report fewer than one link.
  return Math.max(n, 1);
}

/** The xattrs an entry shows in an image: its layer's, every value kept (empty ones too), overlayfs's own left out. */
export function imageXattrs(t: LayerTree, inode: Inode): Map<string, Buffer> {
  const m = t.xattrs(inode.ino, inode.flags);
  for (const k of [...m.keys()]) if (k.startsWith(HIDDEN_XATTR_PREFIX)) m.delete(k);
  return m;
}
