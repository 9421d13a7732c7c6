// Owns checking a writable store: every object re-hashed (corrupt ones moved to quarantine/), every layer
// manifest's catalog and every catalog's chunks and every image's layers and config resolved, missing objects
// named with the layers and images that need them, prefetch traces (objects descriptors name) re-hashed and
// parsed, crashed transactions' leftovers removed; and repair from another store. Repair from a registry
// (re-ingesting a layer blob) lives above, in src/image/repair.ts.
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Store, WritableStore } from './store.js';
import { reclaimableTxns, removeTxn } from './txn.js';
import { withSweepLock } from './lock.js';
import { imageIndexProblem, readLocalManifest, repoManifestDrift, republishManifest, writerSigningOptions } from './trust.js';
import { DATA_DIR, PACKS_DIR, TXN_DIR, objectPath, packPath } from './layout.js';
import { decodePackMembers, packMaxBytes, parsePack, type PackRef } from './pack.js';
import { openLayerCatalog } from './layer-catalog.js';
import { errorMessage, NotFoundError } from '../util/errors.js';
import { parseTrace, parseTraceRef } from '../format/trace.js';
import type { ThinImage } from '../format/descriptor.js';

const QUARANTINE_DIR = 'quarantine';

export interface NeededBy { layers: string[]; images: string[] }
/**
 * `trace`: a prefetch trace an image descriptor names (no registry holds one: only another store can restore it).
 * `pack`: a pack (pack.ts) in packs/, not an object; its members are objects of their own, so nothing is lost with it.
 */
export interface CorruptObject extends NeededBy { hash: string; error: string; quarantined: string | null; trace?: true; pack?: true }
export interface MissingObject extends NeededBy { hash: string; trace?: true; pack?: PackRef }

export interface FsckReport {
  objects: number;
  bytes: number;
  layers: number;
  images: number;
  corrupt: CorruptObject[];
  missing: MissingObject[];
  /** Layers whose manifest or catalog cannot be read (their chunks are then unknown), with the images using them. */
  brokenLayers: Array<{ diffId: string; error: string; images: string[] }>;
  /** Images whose descriptor cannot be read or that name a layer not published. */
  brokenImages: Array<{ name: string; error: string; unpublished?: string }>;
  /**
   * The image index the repository manifest names, when it is missing, corrupt or disagrees with the descriptors
   * (nodes then index descriptors one by one); `rebuilt` when this run republished the manifest with a new one.
   */
  imageIndex: { hash: string; error: string; rebuilt: boolean } | null;
  /**
   * The repository manifest does not say what layers/ and images/ hold (a writer died before republishing): what
   * differs, and `rebuilt` when this run republished it.
   */
  repoManifest: { problems: string[]; rebuilt: boolean } | null;
  /** Staging of dead or long-silent transactions removed (ids), and stray temp files. */
  txnsRemoved: string[];
  tmpRemoved: number;
  ok: boolean;
}

export interface FsckOptions {
  /** Staging of owners on other hosts silent this long is removed (as gc does); default 1 h. */
  graceMs?: number;
  /** Report only: no quarantine, no cleanup. */
  dryRun?: boolean;
  /** Parallel object reads. */
  jobs?: number;
}

async function parallel<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}

async function listObjects(root: string, top = DATA_DIR): Promise<string[]> {
  const out: string[] = [];
  for (const fan of (await readdir(join(root, top)).catch(() => [] as string[])).sort()) {
    for (const rest of (await readdir(join(root, top, fan)).catch(() => [] as string[])).sort()) {
      if (/^[0-9a-f]{2}$/.test(fan) && /^[0-9a-f]{62}$/.test(rest)) out.push(fan + rest);
    }
  }
  return out;
}

/** What verifying says of an object or pack listed a moment ago and not there now: removed meanwhile (a gc sweep), not corrupt. */
const GONE: unique symbol = Symbol('gone');
type Verdict = string | null | typeof GONE;

/** Verify one object by reading it through the store (decode + re-hash); the error text, null if sound, GONE if not there. */
async function verifyObject(store: Store, hash: string): Promise<Verdict> {
  try { await store.getObject(hash); return null; } catch (e) { return e instanceof NotFoundError ? GONE : errorMessage(e); }
}

/** Verify one pack: its shape and name, and every member by its own hash; the error text, null if sound, GONE if not there. */
async function verifyPack(store: Store, name: string): Promise<Verdict> {
  try {
    const raw = await store.backend.read(packPath(name));
    if (!raw) return GONE;
    const bad = decodePackMembers(name, parsePack(name, raw)).filter((m) => 'error' in m);
    return bad.length ? `${bad.length} member(s) do not verify: ${bad.map((m) => ('error' in m ? m.error.message : '')).join('; ')}` : null;
  } catch (e) { return errorMessage(e); }
}

/**
 * Move corrupt objects to quarantine/ under the sweep lock (so no commit is renaming a fresh copy into place
 * meanwhile), re-checking each there: one a commit replaced with a sound copy since stays.
 */
async function quarantine(store: WritableStore, bad: Map<string, string>, present: Set<string>, moved: Map<string, string | null>,
  dryRun?: boolean, recheck: (h: string) => Promise<Verdict> = (h) => verifyObject(store, h), pathOf = objectPath, prefix = ''): Promise<void> {
  const todo = [...bad.keys()].filter((h) => !moved.has(h));
  if (!todo.length || dryRun) return;
  const root = store.root;
  await withSweepLock(root, async () => {
    await mkdir(join(root, QUARANTINE_DIR), { recursive: true });
    for (const h of todo) {
      const v = await recheck(h);
      if (v === null) { present.add(h); bad.delete(h); continue; }
      if (v === GONE) { bad.delete(h); continue; } // swept meanwhile: nothing to quarantine
      const to = join(QUARANTINE_DIR, `${prefix}${h}.${Date.now()}`);
      try { await rename(join(root, pathOf(h)), join(root, to)); moved.set(h, to); } catch { moved.set(h, null); }
    }
  });
}

/** Why an object is no usable trace (unreadable, or does not parse as one), or null. */
async function traceProblem(store: Store, hash: string): Promise<string | null> {
  try { parseTrace(await store.getObject(hash), `trace ${hash}`); return null; } catch (e) { return errorMessage(e); }
}

/**
 * Check the whole store. Corrupt objects are moved to quarantine/<hash> under the sweep lock (so no commit is
 * renaming a fresh copy into place meanwhile), where they no longer satisfy any reader or dedup, and are
 * reported as missing too when something needs them.
 */
export async function fsckStore(store: WritableStore, opts: FsckOptions = {}): Promise<FsckReport> {
  const root = store.root;
  const rep: FsckReport = { objects: 0, bytes: 0, layers: 0, images: 0, corrupt: [], missing: [], brokenLayers: [], brokenImages: [], imageIndex: null, repoManifest: null, txnsRemoved: [], tmpRemoved: 0, ok: false };
  const graceMs = opts.graceMs ?? 3600_000;
  const startedMs = Date.now();

  // 1. Leftovers of crashed transactions.
  for (const t of await reclaimableTxns(root, graceMs)) {
    if (!opts.dryRun) await removeTxn(root, t.id);
    rep.txnsRemoved.push(t.id);
  }
  for (const name of await readdir(join(root, TXN_DIR)).catch(() => [] as string[])) {
    if (!name.startsWith('.') || !name.endsWith('.tmp')) continue; // atomicWrite temp files of a killed writer
    const st = await stat(join(root, TXN_DIR, name)).catch(() => null);
    if (!st?.isFile() || Date.now() - st.mtimeMs < graceMs) continue;
    if (!opts.dryRun) await rm(join(root, TXN_DIR, name), { force: true });
    rep.tmpRemoved++;
  }

  // What is checked is what was published before the objects are listed, so writers may run meanwhile: the descriptors
  // first (an image's layers are published before it), then the layers (a layer's objects and packs are in place
  // before its manifest). A layer or image published while this runs is checked by the next run, never half-seen.
  const descriptors: Array<{ name: string; img: ThinImage | null; error: unknown }> = [];
  for (const name of await store.listImages()) {
    try { descriptors.push({ name, img: await store.getImage(name), error: null }); } catch (e) { descriptors.push({ name, img: null, error: e }); }
  }
  const published = new Set(await store.listLayers());

  // 2. Every object re-hashed (one a gc sweep removed since the listing is neither sound nor corrupt).
  const present = new Set<string>();
  const bad = new Map<string, string>();
  const hashes = await listObjects(root);
  await parallel(hashes, opts.jobs ?? 4, async (h) => {
    const err = await verifyObject(store, h);
    if (err === null) {
      present.add(h);
      // Awaited first, then added: `rep.bytes += await ...` would add to the total read before the await (lost updates).
      const size = (await stat(join(root, objectPath(h))).catch(() => null))?.size ?? 0;
      rep.bytes += size;
    } else if (err !== GONE) bad.set(h, err);
  });
  rep.objects = hashes.length;
  // Packs: each one's members verified by their own hashes; a pack with a bad member is quarantined whole (readers
  // fall back to the members' own objects, so a pack is never repaired in place).
  const presentPacks = new Set<string>();
  const badPacks = new Map<string, string>();
  const packs = await listObjects(root, PACKS_DIR);
  await parallel(packs, opts.jobs ?? 4, async (n) => {
    const err = await verifyPack(store, n);
    if (err === null) {
      presentPacks.add(n);
      const size = (await stat(join(root, packPath(n))).catch(() => null))?.size ?? 0;
      rep.bytes += size;
    } else if (err !== GONE) badPacks.set(n, err);
  });
  rep.objects += packs.length;
  const quarantined = new Map<string, string | null>();
  await quarantine(store, bad, present, quarantined, opts.dryRun);
  // A pack with a bad member is quarantined whole (readers fall back to the members' own objects).
  await quarantine(store, badPacks, presentPacks, quarantined, opts.dryRun, (n) => verifyPack(store, n), packPath, 'pack-');

  // 3. References: layer -> catalog -> chunks; image -> layers, config.
  const refs = new Map<string, Set<string>>(); // object or pack -> layers needing it
  const need = (h: string, layer: string) => { let s = refs.get(h); if (!s) refs.set(h, s = new Set()); s.add(layer); };
  const packRefs = new Map<string, PackRef>(); // packs the catalogs name
  const layerImages = new Map<string, string[]>();
  const configRefs = new Map<string, string[]>(); // config object -> images
  const traceRefs = new Map<string, { images: string[]; size: number }>(); // trace object -> images naming it
  const named: Array<{ image: string; diffId: string; catalog: string }> = [];
  const catalogs = new Map<string, string>(); // layer -> catalog its manifest names
  for (const { name, img, error } of descriptors) {
    rep.images++;
    try {
      if (error) throw error;
      if (!img) continue;
      for (const l of img.layers) {
        layerImages.set(l.diffId, [...(layerImages.get(l.diffId) ?? []), name]);
        if (l.catalog) named.push({ image: name, diffId: l.diffId, catalog: l.catalog });
        if (!published.has(l.diffId)) rep.brokenImages.push({ name, error: `layer ${l.diffId} is not published`, unpublished: l.diffId });
      }
      if (img.configDigest?.startsWith('sha256:')) { const c = img.configDigest.slice(7); configRefs.set(c, [...(configRefs.get(c) ?? []), name]); }
      const t = parseTraceRef(img.trace, `image ${name}: trace`);
      if (t) traceRefs.set(t.sha256, { images: [...(traceRefs.get(t.sha256)?.images ?? []), name], size: t.size });
    } catch (e) {
      rep.brokenImages.push({ name, error: errorMessage(e) });
    }
  }
  for (const id of published) {
    rep.layers++;
    let manifest;
    try { manifest = await store.getLayer(id); } catch (e) {
      rep.brokenLayers.push({ diffId: id, error: errorMessage(e), images: layerImages.get(id) ?? [] });
      continue;
    }
    if (!manifest) continue;
    catalogs.set(id, manifest.catalog);
    need(manifest.catalog, id);
    if (!present.has(manifest.catalog)) {
      rep.brokenLayers.push({ diffId: id, error: `catalog object ${manifest.catalog} is ${bad.has(manifest.catalog) ? 'corrupt' : 'missing'}: its chunks are unknown`, images: layerImages.get(id) ?? [] });
      continue;
    }
    try {
      const { catalog, close } = await openLayerCatalog(store, id);
      try {
        for (const h of catalog.allChunkHashes()) need(h, id);
        for (const p of catalog.allPacks()) { need(p.name, id); packRefs.set(p.name, p); }
      } finally { await close(); }
    } catch (e) {
      rep.brokenLayers.push({ diffId: id, error: errorMessage(e), images: layerImages.get(id) ?? [] });
    }
  }

  // A descriptor records the catalog its layer had at conversion: a different one now means one of them is wrong.
  for (const n of named) {
    const c = catalogs.get(n.diffId);
    if (c && c !== n.catalog) rep.brokenImages.push({ name: n.image, error: `descriptor names catalog ${n.catalog} for layer ${n.diffId}, its published manifest names ${c}` });
  }
  // Traces: sound by hash is not enough, they must parse (a node replaying one refuses it) and be the size named.
  const badTraces = new Map<string, string>();
  for (const [h, t] of traceRefs) {
    if (!present.has(h)) continue;
    let data: Buffer;
    try { data = await store.getObject(h); parseTrace(data, `trace ${h}`); } catch (e) { badTraces.set(h, `not a usable trace: ${errorMessage(e)}`); continue; }
    if (data.length !== t.size) for (const image of t.images) rep.brokenImages.push({ name: image, error: `descriptor names trace ${h} of ${t.size} bytes, the object has ${data.length}` });
  }
  // quarantine() leaves in badTraces only those still bad there (a sound copy may have replaced one meanwhile).
  await quarantine(store, badTraces, present, quarantined, opts.dryRun, (h) => traceProblem(store, h));
  for (const [h, e] of badTraces) { bad.set(h, e); present.delete(h); }
  const neededBy = (h: string): NeededBy => {
    const layers = [...(refs.get(h) ?? [])].sort();
    const images = new Set<string>([...(configRefs.get(h) ?? []), ...(traceRefs.get(h)?.images ?? [])]);
    for (const l of layers) for (const i of layerImages.get(l) ?? []) images.add(i);
    return { layers, images: [...images].sort() };
  };
  const trace = (h: string) => (traceRefs.has(h) ? { trace: true as const } : {});
  for (const [h, error] of bad) rep.corrupt.push({ hash: h, error, quarantined: quarantined.get(h) ?? null, ...neededBy(h), ...trace(h) });
  for (const [n, error] of badPacks) rep.corrupt.push({ hash: n, error, quarantined: quarantined.get(n) ?? null, pack: true, ...neededBy(n) });
  for (const h of new Set([...refs.keys(), ...configRefs.keys(), ...traceRefs.keys()])) {
    const pack = packRefs.get(h);
    if (pack ? !presentPacks.has(h) : !present.has(h)) rep.missing.push({ hash: h, ...(pack ? { pack } : {}), ...neededBy(h), ...trace(h) });
  }
  rep.missing.sort((a, b) => a.hash.localeCompare(b.hash));
  // The image index: derived from the descriptors, so repaired by deriving it again (a republished manifest; a signed
  // store needs its key in THINFS_SIGNING_KEY, else the problem stays reported).
  const manifest = await readLocalManifest(root);
  const indexError = manifest ? await imageIndexProblem(root, manifest) : null;
  if (manifest?.imageIndex && indexError) {
    let rebuilt = false;
    let error = indexError;
    if (!opts.dryRun) {
      try { rebuilt = (await republishManifest(root, await writerSigningOptions())) !== null; } catch (e) { error += `; rebuilding it failed: ${errorMessage(e)}`; }
    }
    rep.imageIndex = { hash: manifest.imageIndex.sha256, error, rebuilt };
  }
  // Every published layer and image named by the repository manifest, with the bytes it has (a rebuilt index above
  // republished it already: this then finds nothing).
  const drift = await repoManifestDrift(root, startedMs);
  if (drift.length) {
    let rebuilt = false;
    if (!opts.dryRun) {
      try { rebuilt = (await republishManifest(root, await writerSigningOptions())) !== null; } catch (e) { drift.push(`republishing failed: ${errorMessage(e)}`); }
    }
    rep.repoManifest = { problems: drift, rebuilt };
  }
  rep.ok = !rep.corrupt.length && !rep.missing.length && !rep.brokenLayers.length && !rep.brokenImages.length && !(rep.imageIndex && !rep.imageIndex.rebuilt) && !(rep.repoManifest && !rep.repoManifest.rebuilt);
  return rep;
}

/** What a repair needs: the objects to bring back, the layers whose blobs would regenerate them, and layers to publish again. */
export function repairTargets(rep: FsckReport): { objects: string[]; packs: PackRef[]; layers: string[]; unpublished: string[] } {
  const objects = new Set(rep.missing.filter((m) => !m.pack).map((m) => m.hash));
  const packs = rep.missing.flatMap((m) => (m.pack ? [m.pack] : []));
  const unpublished = new Set(rep.brokenImages.map((b) => b.unpublished).filter((d): d is string => !!d));
  const layers = new Set<string>([...rep.missing.flatMap((m) => m.layers), ...rep.brokenLayers.map((b) => b.diffId), ...unpublished]);
  return { objects: [...objects].sort(), packs, layers: [...layers].sort(), unpublished: [...unpublished].sort() };
}

/** A pack's bytes, only whole and sound (shape and name checked by the read, every member by its own hash). */
async function readSoundPack(source: Store, ref: PackRef): Promise<Buffer | null> {
  return source.backend.read(packPath(ref.name), { maxBytes: packMaxBytes(ref), verify: (b) => {
    const bad = decodePackMembers(ref.name, parsePack(ref.name, b)).find((m) => 'error' in m);
    if (bad && 'error' in bad) throw bad.error;
  } });
}

/**
 * Copy from another store (a directory or HTTP mirror), every object verified against its hash by the
 * source's read path: missing objects through one transaction, and each layer an image names but this store
 * lacks as a whole (catalog, chunks, then its manifest, in one transaction: never published half).
 */
export async function repairFromStore(store: WritableStore, source: Store, hashes: string[], unpublished: string[] = [], packs: PackRef[] = []): Promise<{ restored: string[]; layers: string[]; failed: Array<{ hash: string; error: string }> }> {
  const restored: string[] = [], layers: string[] = [], failed: Array<{ hash: string; error: string }> = [];
  const txn = store.beginTxn('fsck-repair');
  try {
    for (const h of hashes) {
      try { if (await txn.put(h, await source.getObject(h))) restored.push(h); } catch (e) { failed.push({ hash: h, error: errorMessage(e) }); }
    }
    for (const ref of packs) {
      try {
        const raw = await readSoundPack(source, ref);
        if (!raw) throw new NotFoundError(`pack ${ref.name} is not in ${source.location} either`);
        if (await txn.putPack(ref.name, raw)) restored.push(ref.name);
      } catch (e) { failed.push({ hash: ref.name, error: errorMessage(e) }); }
    }
    await txn.commitObjects();
  } catch (e) { await txn.abort(); throw e; }
  for (const diffId of unpublished) {
    const t = store.beginTxn('fsck-repair-layer');
    try {
      const m = await source.getLayer(diffId);
      if (!m) throw new NotFoundError(`layer ${diffId} is not published in ${source.location} either`);
      const { catalog, close } = await openLayerCatalog(source, diffId);
      try {
        for (const h of new Set(catalog.allChunkHashes())) if (await t.put(h, await source.getObject(h))) restored.push(h);
        // Its packs too when the source has them sound; a layer without its packs still reads (members one by one).
        for (const ref of catalog.allPacks()) {
          const raw = await readSoundPack(source, ref).catch(() => null);
          if (raw && (await t.putPack(ref.name, raw))) restored.push(ref.name);
        }
      } finally { await close(); }
      if (await t.put(m.catalog, await source.getObject(m.catalog))) restored.push(m.catalog);
      if ((await t.commit(m)).published) layers.push(diffId);
    } catch (e) {
      await t.abort();
      failed.push({ hash: diffId, error: errorMessage(e) });
    }
  }
  return { restored, layers, failed };
}
