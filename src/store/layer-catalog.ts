// Owns opening a published layer's catalog from the store (verified object -> private temp file -> reader),
// for CLI tools, gc and fsck; src/catalog/ itself stays pure SQLite. The mount has its own catalog cache.
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CatalogReader } from '../catalog/reader.js';
import type { Store } from './store.js';
import type { LayerManifest } from './types.js';
import { NotFoundError } from '../util/errors.js';

/** For CLI tools: fetch a layer's catalog (verified) into a private temp file. The mount has its own cache. */
export async function openLayerCatalog(store: Store, diffId: string): Promise<{ manifest: LayerManifest; catalog: CatalogReader; close(): Promise<void> }> {
  const id = diffId.startsWith('sha256:') ? diffId : `sha256:${diffId}`;
  const manifest = await store.getLayer(id);
  if (!manifest) throw new NotFoundError(`layer ${id} is not published in store ${store.location}`);
  const data = await store.getObject(manifest.catalog, manifest.catalogSize);
  const dir = await mkdtemp(join(tmpdir(), 'thinfs-cat-'));
  const file = join(dir, 'catalog.db');
  await writeFile(file, data);
  const catalog = CatalogReader.open(file);
  return { manifest, catalog, close: async () => { catalog.close(); await rm(dir, { recursive: true, force: true }); } };
}

/** Resolve a layer argument: a full diff id, bare hex, or a unique hex prefix of a published layer. */
export async function resolveLayerId(store: Store, arg: string): Promise<string> {
  const hex = arg.replace(/^sha256:/, '');
  if (/^[0-9a-f]{64}$/.test(hex)) return `sha256:${hex}`;
  if (!/^[0-9a-f]{4,63}$/.test(hex)) throw new NotFoundError(`"${arg}" is not a layer diff id`);
  const matches = (await store.listLayers()).filter((d) => d.slice(7).startsWith(hex));
  if (matches.length === 1) return matches[0]!;
  throw new NotFoundError(matches.length ? `layer prefix ${arg} is ambiguous` : `no layer matching ${arg}`);
}
