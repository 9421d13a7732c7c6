// The mount's node-id table: the one owner of how a node of the view gets its node id (which is also its st_ino) and
// how an id the kernel sends back is resolved. Ids are stable for the life of the mount, even after the kernel forgets
// a node, and across mounts of the same store content. The transport is told at mount which ids are the synthetic
// directories (UNCACHED_BELOW). Every id of a layer tree or an image view resolves back to its node without the node
// being held (derive): the kernel may hold ids the transport handed out from listings, which this thread never saw.
import { ROOT_INO } from '../catalog/schema.js';
import type { Image, Layer, Node } from './namespace.js';
import { encodeImageDirName } from './names.js';
import * as merge from './merge.js';

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
 * Ids are derived from what a node is, not from the order this mount met it, so the same store content gives the same
 * inode numbers on every mount (layers load in parallel, lookups come in any order):
 * - under layers/ each layer gets a range when its catalog loads, at a slot hashed from its diff id: id = base + catalog
 *   inode number, so hardlinks share one, a listing pre-encoded in the catalog needs only the base added, and an id the
 *   kernel sends back resolves without any table (derive);
 * - elsewhere (images/, synthetic entries) an id is a hash of the node's key (image name and signed descriptor hash,
 *   layer diff id, inode or merged path), in a region of its own above every layer range; an image view's ids are
 *   remembered with what they name (image, layer and inode, or merged path), so they too resolve (derive).
 * Correctness never rests on the hash: an id taken by another key (or a slot by another layer) is probed past, so a
 * collision costs only that node's stability (the first one met keeps the hashed id). Ids stay below 2^53 (the
 * transport carries them as doubles).
 */
const SLOT_BITS = 28;
/** A layer's range: far more inodes than a catalog within the store's size bound holds; a larger one takes several slots. */
const SLOT_SPAN = 2 ** SLOT_BITS;
const SLOTS = 2 ** (52 - SLOT_BITS);
/** Hashed ids live in [2^52, 2^53): disjoint from layer ranges and the synthetic ids. */
const HASHED_BASE = 2 ** 52;
const HASHED_SPAN = 2 ** 52;

/** 52 bits of a string, the same in every process (two 32-bit multiplicative hashes, mixed). */
function hash52(s: string): number {
  let a = 0x811c9dc5, b = 0x9747b28c;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
  }
  a = Math.imul(a ^ (a >>> 16), 0x85ebca6b) ^ Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
  b = Math.imul(b ^ (b >>> 16), 0x85ebca6b) ^ Math.imul(a ^ (a >>> 13), 0xc2b2ae35);
  return (b & 0xfffff) * 2 ** 32 + (a >>> 0);
}

/** An image's name in ids: the key of its directory (name and signed descriptor hash), the same on every mount. */
const imageKeys = new WeakMap<Image, { tag: string | null; key: string }>();
function imageKey(img: Image): string {
  // Once per image: a merged listing handed to the transport names hundreds of entries at a time.
  let k = imageKeys.get(img);
  if (k?.tag !== img.tag) imageKeys.set(img, k = { tag: img.tag, key: imageDirKey(encodeImageDirName(img.name), img.tag) });
  return k!.key;
}

/** What an image view's hashed id names: one layer's entry, or a merged directory by its key in the image. */
type MergedNode = Extract<Node, { k: 'merged' }>;
/**
 * What an image view's hashed id names: one layer's entry, or a merged directory by its key in the image, with its node
 * once made (kept: directories are few, and its members cost a lookup per layer and path component to find again).
 */
type ImageRef = { img: Image; layer: Layer; ino: number } | { img: Image; key: string; node?: MergedNode };

export class NodeIds {
  private readonly ids = new Map<string, number>();
  /** Image-view ids and what they name (as long as the mount lives, like the ids themselves). */
  private readonly refs = new Map<number, ImageRef>();
  private readonly taken = new Set<number>();
  /** Layers with an id range, in order of base. */
  private readonly ranges: Array<{ base: number; slots: number; layer: Layer }> = [];
  private readonly bases = new WeakMap<Layer, number>();

  private hashed(key: string): number {
    let v = this.ids.get(key);
    if (v === undefined) {
      let h = hash52(key);
      while (this.taken.has(HASHED_BASE + h)) h = (h + 1) % HASHED_SPAN;
      v = HASHED_BASE + h;
      this.taken.add(v);
      this.ids.set(key, v);
    }
    return v;
  }

  /** Whether slots [s, s + n) are free of every layer range (ranges are sorted by base). */
  private slotsFree(s: number, n: number): boolean {
    const lo = s * SLOT_SPAN, hi = (s + n) * SLOT_SPAN;
    return s + n <= SLOTS && this.ranges.every((r) => r.base + r.slots * SLOT_SPAN <= lo || r.base >= hi);
  }

  /** The first id of a layer's range: reserved when first needed, after its catalog loaded (its size is known). */
  baseOf(l: Layer): number {
    let base = this.bases.get(l);
    if (base === undefined) {
      const n = Math.ceil((l.catalog!.maxIno + 1) / SLOT_SPAN);
      // Slot 0 holds the synthetic ids; a taken slot is probed past (the layer met first keeps the hashed one).
      let s = 1 + (hash52(`layer:${l.hex}`) % (SLOTS - 1));
      for (let tries = 0; !this.slotsFree(s, n); tries++) {
        // An internal limit, not input: 2^24 slots are more layers than a mount can hold open.
        if (tries >= SLOTS) throw new Error('node ids: no free layer range');
        s = s + 1 >= SLOTS ? 1 : s + 1;
      }
      base = s * SLOT_SPAN;
      this.bases.set(l, base);
      let at = this.ranges.findIndex((r) => r.base > base!);
      if (at < 0) at = this.ranges.length;
      this.ranges.splice(at, 0, { base, slots: n, layer: l });
    }
    return base;
  }

  /** An entry's id: under layers/ (no image) base + inode, in an image hashed from (image, layer, inode). */
  entryId(img: Image | null, layer: Layer, ino: number): number {
    if (!img) return this.baseOf(layer) + ino;
    const id = this.hashed(`${imageKey(img)}:${layer.hex}:${ino}`);
    if (!this.refs.has(id)) this.refs.set(id, { img, layer, ino });
    return id;
  }

  /** A layers/<hex> directory: its root's id once its catalog is loaded, a hashed one before. */
  layerDirId(hex: string, layer: Layer | undefined): number {
    return layer?.catalog ? this.entryId(null, layer, ROOT_INO) : this.hashed(`layerdir:${hex}`);
  }

  /** An images/<encoded name> directory, by its key (imageDirKey: name and signed descriptor hash). */
  imageDirId(key: string): number { return this.hashed(key); }

  /** A directory of an image's merged rootfs, by its key in the image ('' = rootfs itself); node: the one met. */
  mergedId(img: Image, key: string, node?: MergedNode): number {
    const id = this.hashed(`merged:${imageKey(img)}:${key}`);
    const ref = this.refs.get(id);
    if (!ref) this.refs.set(id, { img, key, node });
    else if (node && !('ino' in ref)) ref.node ??= node;
    return id;
  }

  statsId(): number { return this.hashed('stats'); }

  idOf(n: Node): number {
    switch (n.k) {
      case 'synth': return FIXED_IDS[n.what];
      case 'statsLink': return this.statsId();
      case 'imageDir': return this.imageDirId(imageDirKey(encodeImageDirName(n.image.name), n.image.tag));
      case 'entry': return this.entryId(n.inImage, n.layer, n.inode.ino);
      case 'merged': return this.mergedId(n.image, n.key, n);
    }
  }

  /**
   * The node an id names without it being held: a layer tree's (its layer's range, then the catalog), or an image
   * view's (what its id was made from: the layer's catalog, or the merged directory, deriveMerged);
   * null for an id never made here, or an unknown one.
   */
  derive(id: number): Node | null {
    const ref = id >= HASHED_BASE ? this.refs.get(id) : undefined;
    if (ref) return 'ino' in ref ? deriveImageEntry(ref) : this.deriveMerged(ref);
    let lo = 0, hi = this.ranges.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.ranges[mid]!.base <= id) lo = mid + 1; else hi = mid; }
    const r = this.ranges[lo - 1];
    if (!r || id - r.base > r.layer.catalog!.maxIno) return null;
    const inode = r.layer.catalog!.getInode(id - r.base);
    return inode ? { k: 'entry', layer: r.layer, inode, inImage: null } : null;
  }

  /**
   * A merged directory again: the node met before, or its parent's (derived the same way; a parent's id is always made
   * before its children's) looked up in by name; the image's root from its layers.
   */
  private deriveMerged(ref: Extract<ImageRef, { key: string }>): MergedNode | null {
    if (ref.node) return ref.node;
    const layers = ref.img.layers;
    if (!layers) return null;
    let found: Pick<MergedNode, 'members' | 'attr'> | null = null;
    if (ref.key === '') found = merge.rootFound(layers);
    else {
      // Keys are '/name/name...' (mergedChildKey: names as latin1, never containing '/').
      const cut = ref.key.lastIndexOf('/');
      const pid = this.ids.get(`merged:${imageKey(ref.img)}:${ref.key.slice(0, cut)}`);
      const parent = pid !== undefined ? this.derive(pid) : null;
      const f = parent?.k === 'merged' ? merge.lookup(parent.members, Buffer.from(ref.key.slice(cut + 1), 'latin1')) : null;
      if (f?.k === 'dir') found = f;
    }
    if (!found) return null;
    return (ref.node = { k: 'merged', image: ref.img, key: ref.key, members: found.members, attr: found.attr });
  }
}

/** An image view's entry again from what its id was made of (the image's layers are loaded: its root was looked up). */
function deriveImageEntry(ref: Extract<ImageRef, { ino: number }>): Node | null {
  if (!ref.img.layers) return null;
  const inode = ref.layer.catalog!.getInode(ref.ino);
  return inode ? { k: 'entry', layer: ref.layer, inode, inImage: ref.img } : null;
}
