// Test helper: rewrite a published layer's catalog in place (a changed SQLite file stored as a new object, the layer's
// manifest pointed at it), to serve catalogs older versions wrote or damaged ones. Returns the function that restores
// the original manifest.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { decodeObject, encodeObject } from '../../src/store/codec.js';
import { layerPath, objectPath } from '../../src/store/layout.js';
import { sha256 } from './proc.js';

export async function rewriteLayerCatalog(store: string, hex: string, scratch: string, edit: (db: Database.Database) => void): Promise<() => Promise<void>> {
  const manifestFile = path.join(store, layerPath(hex));
  const original = await fsp.readFile(manifestFile, 'utf8');
  const manifest = JSON.parse(original) as { catalog: string; catalogSize: number };
  const file = path.join(scratch, `catalog-${hex.slice(0, 12)}-${Date.now()}.sqlite`);
  await fsp.writeFile(file, decodeObject(manifest.catalog, await fsp.readFile(path.join(store, objectPath(manifest.catalog)))));
  const db = new Database(file);
  try { edit(db); } finally { db.close(); }
  const data = await fsp.readFile(file);
  const hash = sha256(data);
  await fsp.mkdir(path.dirname(path.join(store, objectPath(hash))), { recursive: true });
  await fsp.writeFile(path.join(store, objectPath(hash)), encodeObject(data));
  await fsp.writeFile(manifestFile, JSON.stringify({ ...manifest, catalog: hash, catalogSize: data.length }, null, 2));
  return () => fsp.writeFile(manifestFile, original);
}
