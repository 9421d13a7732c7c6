// Catalog bytes per entry: what a cold start must fetch before its first byte. For each layer of the realistic image
// (bench/lib/realistic-image.ts), ingested into a fresh store: the catalog object as shipped now (no pre-encoded
// listings, zstd at catalogLevel) against the same catalog as it shipped before (listings included, zstd level 1).
// Also checks that the listings a node rebuilds are the bytes ingest used to ship.
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { realisticImage } from './lib/realistic-image.js';
import { runOk } from '../test/helpers/proc.js';
import { Store } from '../src/store/store.js';
import { objectPath } from '../src/store/layout.js';
import { encodeObject, Codec } from '../src/store/codec.js';
import { buildDirBlocks } from '../src/catalog/dirblocks.js';
import { CatalogReader } from '../src/catalog/reader.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const THINFS = join(ROOT, 'dist', 'src', 'cli', 'main.js');

export async function main(): Promise<void> {
  const image = await realisticImage();
  const work = join(tmpdir(), `tcat-${process.pid}`);
  await mkdir(work, { recursive: true });
  try {
    const store = join(work, 'store');
    await runOk(process.execPath, [THINFS, 'init', store]);
    const manifest = JSON.parse(await readFile(join(image.layout, 'blobs', 'sha256',
      (JSON.parse(await readFile(join(image.layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }).manifests[0]!.digest.slice(7)), 'utf8')) as { layers: Array<{ digest: string }> };
    const s = await Store.open(store);
    const lines = ['| layer | entries | raw before | shipped before (B) | B/entry before | raw now | shipped now (B) | B/entry now | listings identical |', '|---|---|---|---|---|---|---|---|---|'];
    let tb = 0, ta = 0, te = 0;
    for (const l of manifest.layers) {
      const blob = join(image.layout, 'blobs', 'sha256', l.digest.slice(7));
      const r = JSON.parse(await runOk(process.execPath, [THINFS, 'ingest', blob, '--store', store, '--json', '--no-progress'], { timeoutMs: 900_000 })) as { diffId: string; catalog: string };
      const m = (await s.getLayer(r.diffId))!;
      const entries = m.counts?.entries ?? 0;
      const shipped = (await stat(join(store, objectPath(m.catalog)))).size;
      // The catalog as ingest shipped it before: listings pre-encoded inside, VACUUMed, zstd level 1.
      const now = join(work, 'now.db'), old = join(work, 'old.db');
      await writeFile(now, await s.getObject(m.catalog, m.catalogSize));
      await copyFile(now, old);
      const db = new Database(old);
      db.transaction(() => buildDirBlocks(db))();
      db.exec('VACUUM');
      db.close();
      const oldRaw = await readFile(old);
      const before = encodeObject(oldRaw, Codec.Zstd, 1).length;
      // The listings a mount rebuilds are the shipped ones, byte for byte.
      const a = CatalogReader.open(old), b = CatalogReader.open(now, { listings: true });
      let same = a.hasDirBlocks && b.hasDirBlocks;
      const dirs = new Database(now, { readonly: true }).prepare(`SELECT ino FROM inodes WHERE type='dir'`).pluck().all() as number[];
      for (const d of dirs) if (!a.dirBlock(d)!.equals(b.dirBlock(d)!)) { same = false; break; }
      a.close(); b.close();
      tb += before; ta += shipped; te += entries;
      lines.push(`| ${r.diffId.slice(7, 19)} | ${entries} | ${oldRaw.length} | ${before} | ${(before / entries).toFixed(1)} | ${m.catalogSize} | ${shipped} | ${(shipped / entries).toFixed(1)} | ${same ? 'yes' : 'NO'} |`);
    }
    lines.push(`| all | ${te} | | ${tb} | ${(tb / te).toFixed(1)} | | ${ta} | ${(ta / te).toFixed(1)} | |`);
    console.log(lines.join('\n'));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
