// Catalog listings kept in the node cache (src/cache/catalog-cache.ts): built once next to their catalog, reused by
// the next daemon without a rebuild, counted against --cache-quota and evicted with their catalog, and a kept file that
// is damaged, truncated or another catalog's is rejected and rebuilt: listings stay exact (`find` against GNU tar's
// extraction of the same layer).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { cleanupTmpDirs, findScan, noDirSize, runOk, sha256, sha256File, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeTreeTar } from './fixtures/tars.js';
import { pseudoRandom } from './helpers/layers.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';
import { ROOT_INO } from '../src/catalog/schema.js';

let work: string;
let store: string;
const hex: Record<'one' | 'two', string> = { one: '', two: '' };
/** What GNU tar extracts of each layer, as findScan shows it (directory sizes blanked). */
const native: Record<'one' | 'two', string> = { one: '', two: '' };
const big = pseudoRandom(2 * 1024 * 1024 + 11, 'cache-listings-big');
const live: Mounted[] = [];

before(async () => {
  work = await tmpDir('thinfs-cache-listings-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  for (const name of ['one', 'two'] as const) {
    const src = path.join(work, `src-${name}`);
    for (let d = 0; d < 4; d++) {
      await fsp.mkdir(path.join(src, `${name}-dir${d}`, 'sub'), { recursive: true });
      for (let f = 0; f < 5; f++) await fsp.writeFile(path.join(src, `${name}-dir${d}`, `file${f}.txt`), `${name} ${d} ${f}\n`.repeat(f + 1));
      await fsp.chmod(path.join(src, `${name}-dir${d}`, 'file0.txt'), 0o600);
    }
    await fsp.writeFile(path.join(src, 'hard1'), 'linked\n');
    await fsp.link(path.join(src, 'hard1'), path.join(src, 'hard2'));
    await fsp.symlink(`${name}-dir0/file1.txt`, path.join(src, 'link'));
    if (name === 'two') await fsp.writeFile(path.join(src, 'big.bin'), big);
    const tar = await makeTreeTar(src, path.join(work, `${name}.tar`));
    const r = await thinfsJson<{ diffId: string }>(['ingest', tar, '--store', store, '--json', '--no-progress']);
    hex[name] = r.diffId.slice(7);
    const out = path.join(work, `extracted-${name}`);
    await fsp.mkdir(out);
    await runOk('tar', ['-xpf', tar, '--numeric-owner', '-C', out]);
    native[name] = noDirSize(await findScan(out));
  }
});

after(async () => {
  for (const m of live.splice(0)) { await m.stop(); await forceUnmount(m.mp); }
  await cleanupTmpDirs();
});

async function mount(cache: string, quota = '10G'): Promise<Mounted> {
  const m = await mountStore(store, path.join(work, `mnt-${cache}`), { cacheDir: path.join(work, cache), quota, extra: ['--no-passthrough'] });
  live.push(m);
  return m;
}
async function stop(m: Mounted): Promise<void> {
  assert.equal(await m.stop(), 0);
  live.splice(live.indexOf(m), 1);
}
const layerRoot = (m: Mounted, name: 'one' | 'two') => path.join(m.mp, 'layers', hex[name]);

/** The cache's catalogs/ directory: catalog files and listings files, with sizes, by name. */
async function catalogsDir(cacheDir: string): Promise<{ catalogs: Map<string, number>; listings: Map<string, number> }> {
  const dir = path.join(cacheDir, 'catalogs');
  const catalogs = new Map<string, number>(), listings = new Map<string, number>();
  for (const n of await fsp.readdir(dir)) {
    const size = (await fsp.stat(path.join(dir, n))).size;
    if (n.endsWith('.sqlite')) catalogs.set(n, size);
    else if (n.endsWith('.listings')) listings.set(n, size);
  }
  return { catalogs, listings };
}
/** The one listings file kept for a layer's catalog. */
async function listingsFile(cacheDir: string, catalogName: string): Promise<string> {
  const stem = catalogName.replace(/\.sqlite$/, '.');
  const names = (await fsp.readdir(path.join(cacheDir, 'catalogs'))).filter((n) => n.startsWith(stem) && n.endsWith('.listings'));
  assert.equal(names.length, 1, `one listings file kept for ${catalogName}: ${names.join(', ')}`);
  return path.join(cacheDir, 'catalogs', names[0]!);
}

describe('catalog listings in the node cache', () => {
  it('are built once, kept private next to their catalog, and reused by the next daemon without a rebuild', async () => {
    let m = await mount('cache-reuse');
    assert.equal(noDirSize(await findScan(layerRoot(m, 'one'))), native.one);
    let s = await m.stats();
    assert.equal(s.cache.listingsBuilt, 1, 'the first load builds the listings');
    assert.equal(s.cache.listingsReused, 0);
    await stop(m);
    const { catalogs } = await catalogsDir(m.cacheDir);
    assert.equal(catalogs.size, 1);
    const file = await listingsFile(m.cacheDir, [...catalogs.keys()][0]!);
    const st = await fsp.stat(file);
    assert.equal(st.mode & 0o777, 0o600, 'private like the rest of the cache');
    // The name carries the file's SHA-256.
    assert.equal(path.basename(file).split('.')[1], await sha256File(file));

    m = await mount('cache-reuse');
    const got = await findScan(layerRoot(m, 'one'));
    assert.equal(noDirSize(got), native.one);
    s = await m.stats();
    assert.equal(s.cache.listingsReused, 1, 'the restarted daemon reuses the kept listings');
    assert.equal(s.cache.listingsBuilt, 0, 'no rebuild after a restart');
    assert.equal(s.cache.listingsRejected, 0);
    assert.ok(s.ops.listingsAhead > 0, 'the kept listings are served by the transport');
    await stop(m);
    const again = await fsp.stat(file);
    assert.equal(again.ino, st.ino, 'the same file, not rewritten');
    assert.equal(again.mtimeMs, st.mtimeMs);
  });

  it('count against --cache-quota with their catalog and are evicted with it', async () => {
    let m = await mount('cache-quota');
    assert.equal(await fsp.readFile(path.join(layerRoot(m, 'one'), 'hard1'), 'utf8'), 'linked\n');
    assert.equal(await fsp.readFile(path.join(layerRoot(m, 'two'), 'hard1'), 'utf8'), 'linked\n');
    let s = await m.stats();
    let { catalogs, listings } = await catalogsDir(m.cacheDir);
    assert.equal(catalogs.size, 2, 'both catalogs cached');
    assert.equal(listings.size, 2, 'both catalogs\' listings kept');
    const bytes = [...catalogs.values(), ...listings.values()].reduce((a, b) => a + b, 0);
    assert.equal(s.cache.usedBytes, bytes, 'the cache counts catalogs and their listings');
    assert.equal(s.cache.usedObjects, 2, 'one entry per catalog, its listings included');
    await stop(m);

    // A restarted daemon indexes both files of each catalog.
    m = await mount('cache-quota', String(bytes + big.length - 1));
    s = await m.stats();
    assert.equal(s.cache.usedBytes, bytes, 'kept listings are indexed at start with their catalogs');
    // One byte short of all that and big.bin: reading it must evict, and only layer one's catalog is unused.
    assert.equal(await sha256File(path.join(layerRoot(m, 'two'), 'big.bin')), sha256(big));
    s = await waitFor(async () => { const x = await m.stats(); return x.cache.catalogEvictions >= 1 ? x : null; }, 10_000, 100,
      'the unused catalog evicted') as Awaited<ReturnType<Mounted['stats']>>;
    ({ catalogs, listings } = await catalogsDir(m.cacheDir));
    await waitFor(async () => (await catalogsDir(m.cacheDir)).listings.size === 1, 5_000, 50, 'the evicted catalog\'s listings removed');
    ({ catalogs, listings } = await catalogsDir(m.cacheDir));
    assert.equal(catalogs.size, 1, 'one catalog left');
    assert.equal(listings.size, 1, 'and only its listings');
    const left = [...catalogs.keys()][0]!.replace(/\.sqlite$/, '');
    assert.ok([...listings.keys()][0]!.startsWith(`${left}.`), 'the listings left are the catalog left\'s');
    assert.ok(s.cache.usedBytes <= bytes + big.length - 1, `within the quota: ${s.cache.usedBytes}`);
    // Layer one again: catalog fetched, listings rebuilt, listings exact.
    assert.equal(noDirSize(await findScan(layerRoot(m, 'one'))), native.one);
    s = await m.stats();
    assert.equal(s.cache.listingsBuilt, 1);
    await stop(m);
  });

  it('a damaged, truncated or foreign listings file is rejected and rebuilt, never served', async () => {
    const cache = 'cache-damage';
    let m = await mount(cache);
    const fresh = await findScan(layerRoot(m, 'one'));
    assert.equal(noDirSize(fresh), native.one);
    assert.equal(noDirSize(await findScan(layerRoot(m, 'two'))), native.two);
    await stop(m);
    const { catalogs } = await catalogsDir(m.cacheDir);
    // Which catalog is layer one's: the one whose listings carry its names.
    const names = [...catalogs.keys()];
    const isOne = async (cat: string) => (await fsp.readFile(await listingsFile(m.cacheDir, cat))).includes('one-dir0');
    const first = await isOne(names[0]!);
    const byLayer = { one: first ? names[0]! : names[1]!, two: first ? names[1]! : names[0]! };

    const damages: Array<[string, (file: string) => Promise<void>]> = [
      // A well-formed database whose root listing names a file that is not there (what serving it would show).
      ['a record rewritten', async (file) => {
        const db = new Database(file);
        try {
          const ents = db.prepare('SELECT ents FROM dirblocks WHERE dir = ?').pluck().get(ROOT_INO) as Buffer;
          const at = ents.indexOf('hard1');
          assert.ok(at > 0);
          ents[at + 4] = 0x39; // hard1 -> hard9
          db.prepare('UPDATE dirblocks SET ents = ? WHERE dir = ?').run(ents, ROOT_INO);
        } finally { db.close(); }
      }],
      ['truncated', async (file) => { await fsp.truncate(file, Math.floor((await fsp.stat(file)).size / 2)); }],
      // Layer two's listings, whole and hashing to their name, put in place of layer one's.
      ['another catalog\'s', async (file) => {
        const other = await listingsFile(m.cacheDir, byLayer.two);
        const sha = path.basename(other).split('.')[1]!;
        await fsp.rm(file);
        await fsp.copyFile(other, path.join(path.dirname(file), `${byLayer.one.replace(/\.sqlite$/, '')}.${sha}.listings`));
      }],
    ];
    for (const [what, damage] of damages) {
      await damage(await listingsFile(m.cacheDir, byLayer.one));
      m = await mount(cache);
      assert.equal(await findScan(layerRoot(m, 'one')), fresh, `${what}: the listings served are exact`);
      const s = await m.stats();
      assert.equal(s.cache.listingsRejected, 1, `${what}: the kept file rejected`);
      assert.equal(s.cache.listingsBuilt, 1, `${what}: and rebuilt`);
      assert.match(m.stderr(), /cached listings are damaged or not this catalog's: rebuilding/);
      await stop(m);
      const file = await listingsFile(m.cacheDir, byLayer.one);
      assert.equal(path.basename(file).split('.')[1], await sha256File(file), `${what}: the rebuilt file hashes to its name`);
    }
  });
});
