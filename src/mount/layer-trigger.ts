// Trace replay started from layers/<hex>: podman running a thin image natively (src/podman/image-store.ts) mounts an
// overlay over the mount's layer directories and never goes through images/, so the image's first touch is the
// lookup of its top layer (overlayfs resolves its lower directories top first; the top one is the image's own).
// Owns the index of the store's images by top layer (traced ones only) and the rule deciding which touch starts
// which replay; the replay itself is the Prefetcher's, the same one as images/ starts (once per image per mount).
// The index is built from the store's published image index (src/format/image-index.ts: one object the repository
// manifest names) when there is one, else from every descriptor. Either way it is a hint: a replay starts only once
// the image's own (verified) descriptor confirms the touched layer is its top and names a trace.
import type { Store } from '../store/store.js';
import type { ThinImage } from '../format/descriptor.js';
import type { ImageIndexEntry } from '../format/image-index.js';
import { BadInputError, IntegrityError, TrustError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseLayerDirName } from './names.js';

/** An index older than this is rebuilt at the next touch of a layer it does not know (a newly published image). */
const UNKNOWN_REBUILD_MS = 1000;
/** And rebuilt at any touch once this old (a descriptor replaced under the same name, a trace attached or detached). */
const STALE_MS = 30_000;
/**
 * A container start looks up all of its image's layers within a moment (podman measured: the base first, then the
 * overlay mount's top-first walk, ~30 ms apart): a layer touched this close (either side) to a layer above it in some
 * image is being used as that image's lower layer, not as an image of its own.
 */
const STACK_WINDOW_MS = 2000;
/**
 * A traced image's top layer that other images stack on: its replay waits this long for a layer above it to be
 * touched (then nothing starts). Layers nothing stacks on start at once.
 */
const STACK_WAIT_MS = 1000;
/** Distinct traces one top layer starts at most (images differing only in config, each with its own trace). */
const MAX_TRACES_PER_LAYER = 4;
/** Descriptors fetched at once while indexing without a published index. */
const INDEX_PARALLEL = 8;

/** What the index knows of an image: its name, layers (bottom first), trace hash and creation time. */
interface Indexed extends ImageIndexEntry { name: string }

interface Index {
  at: number;
  revision: number | null;
  /** Top layer hex -> the traced images whose top layer it is (newest first). */
  tops: Map<string, Indexed[]>;
  /** Layer hex -> the layers above it in some image (any image, traced or not). */
  above: Map<string, Set<string>>;
  /** Every layer some image names. */
  known: Set<string>;
}

export interface LayerTriggerCounters {
  /** Replays asked for by the touch of a traced image's top layer (the Prefetcher still replays each image once per mount). */
  layerTriggers: number;
  /** Touches of a traced image's top layer made while a taller image was being mounted over it (nothing started). */
  layerLowerSkips: number;
  /** Times the store's images were indexed by top layer. */
  layerIndexBuilds: number;
  /** Of those, the ones read from the store's published image index (one object) instead of every descriptor. */
  layerIndexPublished: number;
  /** Replays not started: the image's descriptor does not have the touched layer on top with a trace (a stale or forged index entry). */
  layerTriggersRefused: number;
}

export class LayerTrigger {
  readonly counters: LayerTriggerCounters = { layerTriggers: 0, layerLowerSkips: 0, layerIndexBuilds: 0, layerIndexPublished: 0, layerTriggersRefused: 0 };
  private index: Index | null = null;
  private building: Promise<Index> | null = null;
  /** When each layer directory was last looked up (only the last STACK_WINDOW_MS matter). */
  private readonly touchedAt = new Map<string, number>();

  /** Why the published index last failed to read (warned about once while it fails so). */
  private indexFailure: string | null = null;

  /**
   * `start` replays the named image's trace (the daemon: the Namespace's image(), which tells the Prefetcher) once
   * `accept` passes the image's descriptor as fetched and verified; a descriptor it refuses starts nothing.
   */
  constructor(private readonly store: Store, private readonly log: Logger,
    private readonly start: (name: string, accept: (d: ThinImage) => boolean) => Promise<unknown>) {}

  /** Built ahead (at mount start) so the first container's touch does not wait for the listing; refreshed behind a stale one. */
  warm(): void { void this.current(this.index !== null).catch((e: unknown) => this.log.warn({ err: e }, 'cannot index the store\'s images by top layer')); }

  /** A lookup of layers/<name> reached the daemon. Never throws; never holds the lookup up. */
  touched(name: string): void {
    const hex = parseLayerDirName(name);
    if (!hex) return;
    const now = Date.now();
    for (const [h, t] of this.touchedAt) if (now - t > 2 * STACK_WINDOW_MS) this.touchedAt.delete(h);
    this.touchedAt.set(hex, now);
    void this.decide(hex, now).catch((e: unknown) => this.log.warn({ err: e, layer: hex }, 'prefetch trace not started for a layer touch'));
  }

  private async decide(hex: string, at: number): Promise<void> {
    let idx = await this.current(false);
    // Under a signed manifest the index is rebuilt only when its revision moves (current() sees to that): nothing is
    // published without a new revision, and asking again on touches would not scale for a store without a published
    // index (every descriptor). Without one the store can only be asked again, by time: a stale index that names this
    // layer a traced top is used at once (the replay reads and checks the image's current descriptor anyway) and
    // refreshed behind it; one that does not is rebuilt first (an image or trace added since). With a published index
    // such a rebuild is a conditional GET of the manifest (and the index only when the manifest names another).
    if (idx.revision === null) {
      if (!idx.tops.has(hex) && (Date.now() - idx.at > STALE_MS || (!idx.known.has(hex) && Date.now() - idx.at > UNKNOWN_REBUILD_MS))) idx = await this.current(true);
      else if (Date.now() - idx.at > STALE_MS) this.warm();
    }
    const images = idx.tops.get(hex);
    if (!images?.length) return;
    // Other images stack on this layer: one of their layers looked up around now means this is a lower layer of
    // that image's start. Wait a moment for it (the order of a start's lookups is podman's, not to be relied on).
    const uppers = idx.above.get(hex);
    if (uppers?.size) {
      const stacked = () => [...uppers].find((up) => { const t = this.touchedAt.get(up); return t !== undefined && Math.abs(t - at) <= STACK_WINDOW_MS; });
      for (let waited = 0; !stacked() && waited < STACK_WAIT_MS; waited += 50) await sleep(50);
      const up = stacked();
      if (up) {
        this.counters.layerLowerSkips++;
        this.log.debug({ layer: hex, above: up }, 'top layer touched as a lower layer of a taller image: no replay');
        return;
      }
    }
    // Several images on one top layer: each distinct trace once (chunks they share are fetched once), bounded.
    const seen = new Set<string>();
    const picked: Indexed[] = [];
    for (const d of images) {
      if (seen.has(d.trace!)) continue;
      seen.add(d.trace!);
      if (picked.length === MAX_TRACES_PER_LAYER) {
        this.log.info({ layer: hex, images: images.length }, 'more traced images on one top layer than are replayed; newest first');
        break;
      }
      picked.push(d);
    }
    // Their descriptors are asked for at once (the replays then share the one bounded queue). The index only said
    // which images to ask about: each replays only when its own descriptor has this layer on top and a trace (the
    // one it names, whatever the index said), so a stale or forged index costs a descriptor fetch, never a replay.
    await Promise.all(picked.map((d) => {
      this.counters.layerTriggers++;
      this.log.info({ layer: hex, image: d.name }, 'top layer of a traced image touched: replaying its trace');
      const accept = (desc: ThinImage): boolean => {
        const top = desc.layers.length ? parseLayerDirName(desc.layers[desc.layers.length - 1]!.diffId) : null;
        if (top === hex && desc.trace !== undefined) return true;
        this.counters.layerTriggersRefused++;
        this.log.info({ layer: hex, image: d.name, top, trace: desc.trace?.sha256 ?? null }, 'the image\'s descriptor does not have the touched layer on top with a trace (stale or forged index): no replay');
        return false;
      };
      return this.start(d.name, accept).catch((e: unknown) => this.log.warn({ err: e, image: d.name }, 'prefetch trace not started'));
    }));
  }

  /** The index, rebuilt when asked, when there is none yet or when the signed manifest moved to another revision. */
  private current(force: boolean): Promise<Index> {
    const rev = this.store.trust?.current?.revision ?? null;
    const idx = this.index;
    if (!force && idx && idx.revision === rev) return Promise.resolve(idx);
    this.building ??= this.build(rev).then((i) => { this.index = i; return i; }).finally(() => { this.building = null; });
    return this.building;
  }

  private async build(revision: number | null): Promise<Index> {
    const images = (await this.fromPublished()) ?? await this.fromDescriptors();
    const idx: Index = { at: Date.now(), revision, tops: new Map(), above: new Map(), known: new Set() };
    for (const d of images) {
      const hexes = d.layers;
      hexes.forEach((h, i) => {
        idx.known.add(h);
        const up = idx.above.get(h) ?? new Set<string>();
        for (const u of hexes.slice(i + 1)) up.add(u);
        idx.above.set(h, up);
      });
      if (d.trace === undefined) continue;
      const top = hexes[hexes.length - 1]!;
      idx.tops.set(top, [...(idx.tops.get(top) ?? []), d]);
    }
    // Newest first: when more traces share a top layer than are replayed, the likeliest to run go first.
    for (const list of idx.tops.values()) list.sort((a, b) => String(b.created ?? '').localeCompare(String(a.created ?? '')) || a.name.localeCompare(b.name));
    this.counters.layerIndexBuilds++;
    return idx;
  }

  /**
   * The store's published image index: one object (and, without public keys, one conditional GET of the manifest)
   * for the whole store. Null when the store has none, or its index is refused (tampered, truncated: warned about
   * once per index, then not fetched again until the manifest names another).
   */
  private async fromPublished(): Promise<Indexed[] | null> {
    try {
      const pub = await this.store.publishedImageIndex();
      this.indexFailure = null;
      if (!pub) return null;
      this.counters.layerIndexPublished++;
      return Object.entries(pub.index.images).map(([name, e]) => ({ name, ...e }));
    } catch (e) {
      // Warned about once for as long as it fails the same way (rebuilds without a signed manifest go by the clock).
      const why = errorMessage(e);
      if (this.indexFailure !== why) {
        const refused = e instanceof IntegrityError || e instanceof BadInputError || e instanceof TrustError;
        this.log.warn({ err: e }, `the store's published image index ${refused ? 'is refused' : 'cannot be read'}: indexing its images one descriptor at a time`);
      }
      this.indexFailure = why;
      return null;
    }
  }

  /**
   * Every descriptor, INDEX_PARALLEL at a time. Stays for stores whose manifest names no image index (published by a
   * thinfs before it, or kept without a manifest at all: plain directories, mirrors of them) and for an index that is
   * refused or unreachable; it costs a GET per image, which is what the published index exists to avoid.
   */
  private async fromDescriptors(): Promise<Indexed[]> {
    const names = await this.store.listImages();
    const out: Indexed[] = [];
    for (let i = 0; i < names.length; i += INDEX_PARALLEL) {
      const got = await Promise.all(names.slice(i, i + INDEX_PARALLEL).map((n) => this.store.getImage(n).catch((e: unknown) => {
        this.log.debug({ err: e, image: n }, 'descriptor not indexed');
        return null;
      })));
      for (const d of got) {
        if (!d || !Array.isArray(d.layers) || !d.layers.length) continue;
        const hexes = d.layers.map((l) => parseLayerDirName(l.diffId));
        if (hexes.some((h) => !h)) continue;
        out.push({ name: d.name, layers: hexes as string[], trace: d.trace?.sha256, created: d.created });
      }
    }
    return out;
  }
}
