import { readdir, stat, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { WritableStore } from './store.js';
import { staleTxns } from './store.js';
import { DATA_DIR } from './layout.js';
import { openLayerCatalog } from '../catalog/open.js';

export interface GcResult { layers: number; referenced: number; scanned: number; removed: number; removedBytes: number; txnsRemoved: number; kept: number }

/**
 * Mark and sweep: every object named by a published layer (its catalog and the catalog's chunks) is
 * live, as are image configs and prefetch traces; other objects older than the grace period go, as do staging dirs of dead transactions. The
 * grace period protects objects an ingest on another node has just renamed in but not yet published.
 */
export async function collectGarbage(store: WritableStore, opts: { graceMs: number; dryRun?: boolean }): Promise<GcResult> {
  const res: GcResult = { layers: 0, referenced: 0, scanned: 0, removed: 0, removedBytes: 0, txnsRemoved: 0, kept: 0 };
  for (const t of await staleTxns(store.root, opts.graceMs)) {
    if (!opts.dryRun) await rm(t, { recursive: true, force: true });
    res.txnsRemoved++;
  }
  const live = new Set<string>();
  for (const id of await store.listLayers()) {
    const { manifest, catalog, close } = await openLayerCatalog(store, id);
    try {
      live.add(manifest.catalog);
      for (const h of catalog.allChunkHashes()) live.add(h);
    } finally { await close(); }
    res.layers++;
  }
  // Image configs are kept as objects (docker2thin re-uses them instead of downloading again).
  for (const name of await store.listImages()) {
    const img = await store.getImage(name).catch(() => null);
    if (img?.configDigest?.startsWith('sha256:')) live.add(img.configDigest.slice(7));
    // A prefetch trace lives as long as a descriptor names it.
    if (typeof img?.trace?.sha256 === 'string') live.add(img.trace.sha256);
  }
  res.referenced = live.size;
  const now = Date.now();
  for (const fan of await readdir(join(store.root, DATA_DIR))) {
    const dir = join(store.root, DATA_DIR, fan);
    for (const rest of await readdir(dir).catch(() => [] as string[])) {
      res.scanned++;
      if (live.has(fan + rest)) continue;
      const p = join(dir, rest);
      const st = await stat(p).catch(() => null);
      if (!st) continue;
      if (now - st.mtimeMs < opts.graceMs) { res.kept++; continue; }
      if (!opts.dryRun) await rm(p, { force: true });
      res.removed++;
      res.removedBytes += st.size;
    }
  }
  return res;
}
