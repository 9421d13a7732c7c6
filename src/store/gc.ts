// Owns garbage collection of a writable store: reclaiming dead transactions' staging and sweeping objects no
// published layer or image references, and image indexes the repository manifest no longer names, safely against commits running on any node (ARCHITECTURE.md, Store).
import { readdir, stat, unlink } from 'node:fs/promises';
import { join, relative } from 'node:path';
import type { WritableStore } from './store.js';
import { reclaimableTxns, removeTxn } from './txn.js';
import { withSweepLock } from './lock.js';
import { DATA_DIR, INDEXES_DIR, PACKS_DIR, TXN_DIR } from './layout.js';
import { openLayerCatalog } from './layer-catalog.js';
import { readLocalManifest } from './trust.js';
import { errorMessage } from '../util/errors.js';
import { parseTrace } from '../format/trace.js';

export interface BrokenLayer { diffId: string; error: string }

export interface GcResult {
  layers: number; referenced: number; scanned: number; removed: number; removedBytes: number;
  txnsRemoved: number; txnsKept: number; kept: number;
  /** Replaced image indexes (indexes/) removed (dry run: that would be). */
  indexesRemoved: number;
  /** Layers whose manifest or catalog cannot be read: their objects are unknown, so nothing is swept. */
  broken: BrokenLayer[];
  /** True when objects were (or, dry run, would be) swept; false when a broken layer stopped the sweep. */
  swept: boolean;
  /**
   * Removals that failed (EACCES, EBUSY, EROFS...): the sweep goes on past them, so one file the store's filesystem
   * will not let go of never keeps the rest from being collected; counted, the first few named.
   */
  failures: number;
  failed: Array<{ path: string; error: string }>;
  /** Files in data/ or packs/ whose names are no object's (NFS silly-renames `.nfs*`, stray temp files): left alone. */
  foreign: number;
}

/** How many failed removals a result names (the count covers all). */
const FAILED_NAMED = 20;
/** An object's or pack's file name under its two-hex fan directory: the other 62 hex digits of its SHA-256. */
const OBJECT_REST = /^[0-9a-f]{62}$/;
const FAN = /^[0-9a-f]{2}$/;

/** Remove one file or staging; a failure is recorded, not thrown (ENOENT is no failure: gone is what was wanted). */
async function removeOrRecord(res: GcResult, path: string, remove: () => Promise<void>): Promise<boolean> {
  try {
    await remove();
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true;
    res.failures++;
    if (res.failed.length < FAILED_NAMED) res.failed.push({ path, error: errorMessage(e) });
    return false;
  }
}

/** Live names: objects in data/ and packs (pack.ts) in packs/, each kept while a published layer or image names it. */
interface Live { objects: Set<string>; packs: Set<string> }

/** Mark: every object named by the given published layers (catalog + chunks), the packs they travel in, and image configs. */
async function mark(store: WritableStore, ids: string[], liveAll: Live, broken: BrokenLayer[]): Promise<number> {
  const live = liveAll.objects;
  let n = 0;
  for (const id of ids) {
    try {
      const { manifest, catalog, close } = await openLayerCatalog(store, id);
      try {
        live.add(manifest.catalog);
        for (const h of catalog.allChunkHashes()) live.add(h);
        for (const p of catalog.allPacks()) liveAll.packs.add(p.name);
      } finally { await close(); }
      n++;
    } catch (e) {
      broken.push({ diffId: id, error: errorMessage(e) });
    }
  }
  return n;
}

async function markImages(store: WritableStore, liveAll: Live): Promise<void> {
  const live = liveAll.objects;
  // Image configs are kept as objects (docker2thin re-uses them instead of downloading again),
  // registry manifests (the podman image store serves them byte for byte) and prefetch traces.
  for (const name of await store.listImages()) {
    const img = await store.getImage(name).catch(() => null);
    if (img?.configDigest?.startsWith('sha256:')) live.add(img.configDigest.slice(7));
    if (img?.manifestDigest?.startsWith('sha256:')) live.add(img.manifestDigest.slice(7));
    // A prefetch trace lives as long as a descriptor names it, and so do the page data segments it names. A trace that
    // cannot be read keeps no segments: they are collected (nodes then fetch those chunks whole).
    if (typeof img?.trace?.sha256 === 'string') {
      live.add(img.trace.sha256);
      const t = await store.getObject(img.trace.sha256).then((b) => parseTrace(b), () => null).catch(() => null);
      for (const seg of t?.pages ?? []) live.add(seg.hash);
    }
  }
}

/**
 * Image indexes (indexes/<hash>, trust.ts) the repository manifest no longer names, older than the grace period (a
 * node still on the older revision falls back to the descriptors without it). The one named is always kept; the
 * republisher writes a new one, with the manifest naming it, under the commit side of the sweep lock.
 */
async function replacedIndexes(root: string, graceMs: number): Promise<string[]> {
  const named = (await readLocalManifest(root))?.imageIndex?.sha256;
  const out: string[] = [];
  for (const n of await readdir(join(root, INDEXES_DIR)).catch(() => [] as string[])) {
    if (n === named || !/^[0-9a-f]{64}$/.test(n)) continue;
    const st = await stat(join(root, INDEXES_DIR, n)).catch(() => null);
    if (st?.isFile() && Date.now() - st.mtimeMs >= graceMs) out.push(join(root, INDEXES_DIR, n));
  }
  return out;
}

/**
 * Mark and sweep in two passes. Pass 1, without any lock: mark from every published layer and image and list
 * candidates (unreferenced, older than the grace period, not pinned by a transaction's hard link). Pass 2,
 * under the exclusive sweep lock (no commit in progress anywhere): mark the layers and images published since
 * pass 1, then remove the candidates still unreferenced. A layer that cannot be read stops the sweep (its
 * objects are unknown); it is reported, and a dry run goes on reporting the rest.
 */
export async function collectGarbage(store: WritableStore, opts: { graceMs: number; dryRun?: boolean; onWait?: (commits: number) => void }): Promise<GcResult> {
  const res: GcResult = { layers: 0, referenced: 0, scanned: 0, removed: 0, removedBytes: 0, txnsRemoved: 0, txnsKept: 0, kept: 0, indexesRemoved: 0, broken: [], swept: false, failures: 0, failed: [], foreign: 0 };
  for (const t of await reclaimableTxns(store.root, opts.graceMs)) {
    if (!opts.dryRun && !await removeOrRecord(res, `${TXN_DIR}/${t.id}`, () => removeTxn(store.root, t.id))) continue;
    res.txnsRemoved++;
  }
  res.txnsKept = (await store.listTxns()).length - (opts.dryRun ? res.txnsRemoved : 0);

  const live: Live = { objects: new Set(), packs: new Set() };
  const seen = new Set(await store.listLayers());
  res.layers = await mark(store, [...seen], live, res.broken);
  await markImages(store, live);

  const candidates: Array<{ hash: string; rel: string; size: number; pack: boolean }> = [];
  const now = Date.now();
  // Packs are swept like objects: kept while a catalog names them, pinned by a committing transaction's hard link.
  for (const [top, names, pack] of [[DATA_DIR, live.objects, false], [PACKS_DIR, live.packs, true]] as const) {
    for (const fan of await readdir(join(store.root, top)).catch(() => [] as string[])) {
      if (!FAN.test(fan)) { res.foreign++; continue; }
      const dir = join(store.root, top, fan);
      for (const rest of await readdir(dir).catch(() => [] as string[])) {
        // Only objects are swept: on NFS a file unlinked while a client holds it open lives on as .nfsXXXX (removing
        // it fails with EBUSY), and it is not ours to judge anyway.
        if (!OBJECT_REST.test(rest)) { res.foreign++; continue; }
        res.scanned++;
        if (names.has(fan + rest)) continue;
        const st = await stat(join(dir, rest)).catch(() => null);
        if (!st) continue;
        // nlink > 1: a transaction has pinned it (stage.ts) and will publish it; younger than grace: defence
        // in depth for writers that do not pin (older thinfs versions).
        if (now - st.mtimeMs < opts.graceMs || st.nlink > 1) { res.kept++; continue; }
        candidates.push({ hash: fan + rest, rel: `${top}/${fan}/${rest}`, size: st.size, pack });
      }
    }
  }
  res.referenced = live.objects.size + live.packs.size;
  if (res.broken.length) return res;
  if (opts.dryRun) {
    res.indexesRemoved = (await replacedIndexes(store.root, opts.graceMs)).length;
    res.removed = candidates.length;
    res.removedBytes = candidates.reduce((a, c) => a + c.size, 0);
    res.swept = true;
    return res;
  }

  await withSweepLock(store.root, async (lock) => {
    // Manifests are immutable once published: only layers new since pass 1 need reading.
    const added = (await store.listLayers()).filter((id) => !seen.has(id));
    res.layers += await mark(store, added, live, res.broken);
    await markImages(store, live);
    res.referenced = live.objects.size + live.packs.size;
    for (const path of await replacedIndexes(store.root, opts.graceMs)) {
      lock.check();
      if (await removeOrRecord(res, relative(store.root, path), () => unlink(path))) res.indexesRemoved++;
    }
    if (res.broken.length) return;
    for (const c of candidates) {
      if ((c.pack ? live.packs : live.objects).has(c.hash)) { res.kept++; continue; }
      lock.check();
      const p = join(store.root, c.rel);
      const st = await stat(p).catch(() => null);
      if (!st || st.nlink > 1 || Date.now() - st.mtimeMs < opts.graceMs) { res.kept++; continue; }
      if (!await removeOrRecord(res, c.rel, () => unlink(p))) continue;
      res.removed++;
      res.removedBytes += st.size;
    }
    res.swept = true;
  }, { onWait: opts.onWait });
  return res;
}
