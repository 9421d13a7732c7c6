// The mount's namespace: layers/<hex>/, images/<name>/rootfs/ and .thinfs/stats as nodes, the layers and images this
// mount has seen (catalogs loaded on first touch), and name lookups; the overlay rules of images are merge.ts's.
import type { Store } from '../store/store.js';
import type { LayerManifest } from '../store/types.js';
import { CatalogReader, type Inode } from '../catalog/reader.js';
import type { ThinImage } from '../format/descriptor.js';
import type { NodeCache } from '../cache/node-cache.js';
import type { Logger } from '../util/log.js';
import { NotFoundError } from '../util/errors.js';
import { decodeImageDirName, encodeImageDirName, parseLayerDirName } from './names.js';
import * as merge from './merge.js';
import { imageDirKey } from './node-ids.js';

/** A published layer as seen by this mount: a slot number (its name in node ids of images) and its catalog, loaded on first touch. */
export class Layer {
  catalog: CatalogReader | null = null;
  private loading: Promise<CatalogReader> | null = null;
  constructor(readonly slot: number, readonly hex: string, readonly manifest: LayerManifest) {}

  isLoading(): boolean { return this.loading !== null; }

  load(cache: NodeCache): Promise<CatalogReader> {
    if (this.catalog) return Promise.resolve(this.catalog);
    if (!this.loading) {
      this.loading = cache.catalogFile(this.manifest.catalog, this.manifest.catalogSize).then(async (file) => {
        // Listings kept in the node cache (rebuilding them at every daemon start cost a warm scan ~40% more).
        const listingsFile = await cache.catalogListings(this.manifest.catalog, file);
        this.catalog = CatalogReader.open(file, listingsFile !== null ? { listingsFile } : { listings: true });
        return this.catalog;
      });
      // A failed fetch must not poison the layer forever: the next touch retries.
      this.loading.catch(() => { this.loading = null; });
    }
    return this.loading;
  }
}

export class Image {
  layers: Layer[] | null = null;
  /** The descriptor's hash in the signed manifest it was fetched under (null without one). */
  tag: string | null = null;
  constructor(readonly idx: number, readonly name: string, readonly desc: ThinImage) {}
}

export type SynthKind = 'root' | 'layers' | 'images' | 'meta';
export type Node =
  | { k: 'synth'; what: SynthKind }
  | { k: 'statsLink' }
  | { k: 'imageDir'; image: Image }
  /** An entry of one layer's tree; `inImage` when reached through images/ (overlay xattrs hidden there). */
  | { k: 'entry'; layer: Layer; inode: Inode; inImage: Image | null }
  /** A directory of a flattened image: the same directory in several layers, top layer first; `key` names it in the image. */
  | { k: 'merged'; image: Image; key: string; members: Array<{ layer: Layer; inode: Inode }>; attr: { layer: Layer; inode: Inode } };

/** Names a merged directory within its image (bytes kept exactly, as latin1). */
export function mergedChildKey(parentKey: string, name: Buffer): string {
  return `${parentKey}/${name.toString('latin1')}`;
}

/**
 * The mount's namespace: /layers/<hex>/..., /images/<encoded name>/rootfs/..., /.thinfs/stats.
 * Names are bytes (Linux names are not UTF-8); the kernel keeps the resolved nodes (by node id), so no path cache here.
 */
export class Namespace {
  private readonly layers = new Map<string, Layer>();
  private readonly images = new Map<string, Image>();
  private readonly pending = new Map<string, Promise<Layer | null>>();
  private nextSlot = 1;
  private nextImage = 1;
  readonly root: Node = { k: 'synth', what: 'root' };
  layersLoaded = 0;
  /** Told of each image the first time this mount touches it (the daemon replays its prefetch trace). */
  onImage: ((img: Image) => void) | null = null;
  /** Told of each lookup of layers/<name> (podman's overlay over the layers: the daemon replays the trace of an image whose top layer it is). */
  onLayerDir: ((name: string) => void) | null = null;

  constructor(private readonly store: Store, private readonly cache: NodeCache, private readonly log: Logger) {}

  knownLayers(): Layer[] { return [...this.layers.values()]; }
  knownLayer(hex: string): Layer | undefined { return this.layers.get(hex); }

  /** A layer by diff id hex, its manifest fetched on demand (a store over HTTP may not be listable). */
  async layer(hex: string): Promise<Layer | null> {
    const have = this.layers.get(hex);
    if (have) return have;
    let p = this.pending.get(hex);
    if (!p) {
      p = this.store.getLayer(`sha256:${hex}`).then((m) => {
        if (!m) return null;
        const l = this.layers.get(hex) ?? new Layer(this.nextSlot++, hex, m);
        this.layers.set(hex, l);
        return l;
      }).finally(() => this.pending.delete(hex));
      this.pending.set(hex, p);
    }
    return p;
  }

  async loadedLayer(hex: string): Promise<Layer | null> {
    const l = await this.layer(hex);
    if (!l) return null;
    if (!l.catalog) {
      const first = !l.isLoading();
      await l.load(this.cache);
      if (first) {
        this.layersLoaded++;
        this.log.info({ layer: l.hex, slot: l.slot, catalog: l.manifest.catalog }, 'layer catalog loaded');
      }
    }
    return l;
  }

  /** `accept` (the layer trigger's check) may refuse the descriptor: then null, and nothing is started or kept. */
  async image(name: string, accept?: (d: ThinImage) => boolean): Promise<Image | null> {
    // A new signed revision may name another descriptor: new lookups get it, nodes already handed out keep theirs.
    const tag = this.store.imageTag(name);
    const have = this.images.get(name);
    if (have && have.tag === tag) return accept && !accept(have.desc) ? null : have;
    const desc = await this.store.getImage(name);
    if (!desc) return null;
    if (accept && !accept(desc)) return null;
    const again = this.images.get(name);
    if (again && again.tag === tag) return again;
    const img = new Image(this.nextImage++, name, desc);
    img.tag = tag;
    this.images.set(name, img);
    this.onImage?.(img);
    return img;
  }

  /** Every layer (catalog loaded) of an image: its rootfs lookup, or its first touch when a trace replays. */
  async imageLayers(img: Image): Promise<Layer[]> {
    if (img.layers) return img.layers;
    // Every layer's manifest and catalog at once: a cold start waits one round trip chain, not one per layer.
    const ls = await Promise.all(img.desc.layers.map(async (d) => {
      const hex = parseLayerDirName(d.diffId);
      const early = hex ? this.earlyCatalog(hex, d.catalog) : null;
      let l: Layer | null;
      try {
        l = hex ? await this.loadedLayer(hex) : null;
      } finally {
        // The layer holds its own pin by now (or failed): the early one is let go (kept in the cache, unpinned).
        if (early) void early.then((ok) => { if (ok) this.cache.releaseCatalog(d.catalog); });
      }
      if (!l) throw new NotFoundError(`image ${img.name}: layer ${d.diffId} is not published in the store`); // answered EIO
      return l;
    }));
    img.layers = ls;
    return ls;
  }

  /**
   * The catalog the image descriptor names for a layer not loaded yet, asked for now, beside the layer's manifest
   * instead of after it (one round trip less before a cold start's first lookup). The layer still loads the catalog
   * its manifest names (the same one, then already here or in flight; another one otherwise); the object is verified
   * by its hash either way, and a failure here is only the early fetch's. True once pinned (to be released).
   */
  private earlyCatalog(hex: string, catalog: string): Promise<boolean> | null {
    if (this.layers.get(hex)?.catalog || !/^[0-9a-f]{64}$/.test(catalog)) return null;
    return this.cache.catalogFile(catalog).then(() => true, (e: unknown) => {
      this.log.debug({ err: e, catalog }, 'early catalog fetch failed (the layer manifest\'s is fetched)');
      return false;
    });
  }

  async listLayerDirs(): Promise<string[]> {
    const names = new Set<string>();
    try {
      for (const d of await this.store.listLayers()) { const h = parseLayerDirName(d); if (h) names.add(h); }
    } catch (e) {
      this.log.warn({ err: e }, 'store layers/ is not listable; showing layers touched so far');
    }
    for (const h of this.layers.keys()) names.add(h);
    return [...names].sort();
  }

  async listImageDirs(): Promise<string[]> {
    const names = new Set<string>();
    try { for (const n of await this.store.listImages()) names.add(n); } catch (e) {
      this.log.warn({ err: e }, 'store images/ is not listable; showing images touched so far');
    }
    for (const n of this.images.keys()) names.add(n);
    return [...names].sort().map(encodeImageDirName);
  }

  /** The node key of an image's directory as the store's current revision names it (node-ids.ts: imageDirKey). */
  imageDirKey(dirName: string): string {
    return imageDirKey(dirName, this.store.imageTag(decodeImageDirName(dirName) ?? ''));
  }

  /** A path from the mount's root (prefetch lists): walked one name at a time, as the kernel does. */
  async resolve(path: string): Promise<Node | null> {
    let n: Node | null = this.root;
    for (const part of path.split('/')) {
      if (!part) continue;
      n = await this.child(n, Buffer.from(part, 'utf8'));
      if (!n) return null;
    }
    return n;
  }

  /** One name in a directory node: the lookup the kernel sends. */
  async child(parent: Node, nameBytes: Buffer): Promise<Node | null> {
    const name = nameBytes.toString('utf8');
    switch (parent.k) {
      case 'synth':
        if (parent.what === 'root') {
          if (name === 'layers') return { k: 'synth', what: 'layers' };
          if (name === 'images') return { k: 'synth', what: 'images' };
          if (name === '.thinfs') return { k: 'synth', what: 'meta' };
          return null;
        }
        if (parent.what === 'layers') {
          // Before the catalog loads: a replay it starts runs beside that fetch.
          this.onLayerDir?.(name);
          const hex = parseLayerDirName(name);
          const l = hex ? await this.loadedLayer(hex) : null;
          return l ? { k: 'entry', layer: l, inode: l.catalog!.root(), inImage: null } : null;
        }
        if (parent.what === 'images') {
          const n = decodeImageDirName(name);
          const img = n ? await this.image(n) : null;
          return img ? { k: 'imageDir', image: img } : null;
        }
        if (parent.what === 'meta') return name === 'stats' ? { k: 'statsLink' } : null;
        return null;
      case 'imageDir': {
        if (name !== 'rootfs') return null;
        const root = merge.rootFound(await this.imageLayers(parent.image));
        return { k: 'merged', image: parent.image, key: '', members: root.members, attr: root.attr };
      }
      case 'entry': {
        if (parent.inode.type !== 'dir') return null;
        const e = parent.layer.catalog!.lookup(parent.inode.ino, nameBytes);
        return e ? { k: 'entry', layer: parent.layer, inode: e, inImage: parent.inImage } : null;
      }
      case 'merged':
        return this.mergedChild(parent, nameBytes);
      default:
        return null;
    }
  }

  /** overlayfs lookup in a merged directory (src/mount/merge.ts); synchronous: a merged directory's layers are loaded. */
  mergedChild(parent: Extract<Node, { k: 'merged' }>, name: Buffer): Node | null {
    const f = merge.lookup(parent.members, name);
    if (!f) return null;
    return f.k === 'entry'
      ? { k: 'entry', layer: f.layer, inode: f.inode, inImage: parent.image }
      : { k: 'merged', image: parent.image, key: mergedChildKey(parent.key, name), members: f.members, attr: f.attr };
  }

  /** One layer's entry as an image shows it (a non-directory its merged directory's listing named). */
  imageEntry(img: Image, layer: Layer, ino: number): Node | null {
    const inode = layer.catalog!.getInode(ino);
    return inode ? { k: 'entry', layer, inode, inImage: img } : null;
  }

  /** Visible entries of a merged directory: union top-down, upper names shadow lower, whiteouts hide. */
  mergedReaddir(n: Extract<Node, { k: 'merged' }>): Array<merge.MergedDirent<Layer>> {
    return merge.readdir(n.members);
  }

  /** st_nlink of an image's non-directory: only the names of it the image still shows count (merge.visibleNlink). */
  imageNlink(n: Extract<Node, { k: 'entry' }>, img: Image): number {
    if (n.inode.type === 'dir' || n.inode.nlink <= 1 || !img.layers) return n.inode.nlink;
    // img.layers is set: the entry was reached through the image's root.
    return merge.visibleNlink(merge.rootMembers(img.layers), n.layer, n.inode);
  }
}
