// The mount's node-id table: the one owner of how a node of the view gets its node id (which is also its st_ino) and
// how an id the kernel sends back is resolved. Ids are small and stable for the life of the mount, even after the
// kernel forgets a node. The transport is told at mount which ids are the synthetic directories (UNCACHED_BELOW).
import { ROOT_INO } from '../catalog/schema.js';
import type { Layer, Node } from './namespace.js';
import { encodeImageDirName } from './names.js';

/**
 * The key of an image's directory: its name, plus the descriptor's signed hash when the store is signed, so a new
 * revision of an image is a new node (lookups move to it) while the old one stays valid for whoever holds it.
 */
export function imageDirKey(encodedName: string, tag: string | null): string {
  return tag ? `imagedir:${encodedName}@${tag}` : `imagedir:${encodedName}`;
}

/** The synthetic directories' fixed ids. */
export const FIXED_IDS = { root: 1, layers: 2, images: 3, meta: 4 } as const;

/**
 * Ids below this are the synthetic directories (/, layers/, images/, .thinfs/): their listings change as layers are
 * published, so the transport must not let the kernel cache them nor answer them itself. Every other directory is
 * immutable. Passed to the transport at mount (the C side has no copy of it).
 */
export const UNCACHED_BELOW = 16;

/**
 * Under layers/ each layer gets a range when its catalog loads: id = base + catalog inode number, so hardlinks share
 * one, a listing pre-encoded in the catalog needs only the base added, and an id the kernel sends back resolves without
 * any table (derive). Elsewhere (images/, synthetic directories) ids are handed out densely per (view, layer, inode).
 */
export class NodeIds {
  private readonly ids = new Map<string, number>();
  private nextId = UNCACHED_BELOW;
  /** Layers with an id range, in order of base. */
  private readonly ranges: Array<{ base: number; layer: Layer }> = [];
  private readonly bases = new WeakMap<Layer, number>();

  private dense(key: string): number {
    let v = this.ids.get(key);
    if (v === undefined) { v = this.nextId++; this.ids.set(key, v); }
    return v;
  }

  /** The first id of a layer's range: reserved when first needed, after its catalog loaded (its size is known). */
  baseOf(l: Layer): number {
    let base = this.bases.get(l);
    if (base === undefined) {
      base = this.nextId;
      this.nextId += l.catalog!.maxIno + 1;
      this.bases.set(l, base);
      this.ranges.push({ base, layer: l });
    }
    return base;
  }

  /** An entry's id in a view: 0 = layers/ (base + inode), else an image (dense). */
  entryId(view: number, layer: Layer, ino: number): number {
    return view ? this.dense(`${view}:${layer.slot}:${ino}`) : this.baseOf(layer) + ino;
  }

  /** A layers/<hex> directory: its root's id once its catalog is loaded, a dense one before. */
  layerDirId(hex: string, layer: Layer | undefined): number {
    return layer?.catalog ? this.entryId(0, layer, ROOT_INO) : this.dense(`layerdir:${hex}`);
  }

  /** An images/<encoded name> directory, by its key (imageDirKey: name and signed descriptor hash). */
  imageDirId(key: string): number { return this.dense(key); }

  /** A directory of an image's merged rootfs, by its key in the image ('' = rootfs itself). */
  mergedId(imageIdx: number, key: string): number { return this.dense(`merged:${imageIdx}:${key}`); }

  statsId(): number { return this.dense('stats'); }

  idOf(n: Node): number {
    switch (n.k) {
      case 'synth': return FIXED_IDS[n.what];
      case 'statsLink': return this.statsId();
      case 'imageDir': return this.imageDirId(imageDirKey(encodeImageDirName(n.image.name), n.image.tag));
      case 'entry': return this.entryId(n.inImage?.idx ?? 0, n.layer, n.inode.ino);
      case 'merged': return this.mergedId(n.image.idx, n.key);
    }
  }

  /** The layer-tree node an id names (its layer's range, then the catalog), or null. */
  derive(id: number): Node | null {
    let lo = 0, hi = this.ranges.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.ranges[mid]!.base <= id) lo = mid + 1; else hi = mid; }
    const r = this.ranges[lo - 1];
    if (!r || id - r.base > r.layer.catalog!.maxIno) return null;
    const inode = r.layer.catalog!.getInode(id - r.base);
    return inode ? { k: 'entry', layer: r.layer, inode, inImage: null } : null;
  }
}
