// Issue 11, acceptance 3, through a mount: layer catalogs in the node-local cache count against --cache-quota, stay
// while their layer is loaded, and are evicted when unused (today's daemon loaded only the other layer).
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, sha256, sha256File, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeTreeTar } from './fixtures/tars.js';
import { pseudoRandom } from './helpers/layers.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';

let work: string;
let store: string;
const hex: Record<'one' | 'two', string> = { one: '', two: '' };
const big = pseudoRandom(2 * 1024 * 1024 + 11, 'cache-catalogs-big');
const live: Mounted[] = [];

before(async () => {
  work = await tmpDir('thinfs-cache-catalogs-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  for (const name of ['one', 'two'] as const) {
    const src = path.join(work, `src-${name}`);
    await fsp.mkdir(src);
    await fsp.writeFile(path.join(src, `${name}.txt`), `${name}\n`);
    if (name === 'two') await fsp.writeFile(path.join(src, 'big.bin'), big);
    const r = await thinfsJson<{ diffId: string }>(['ingest', await makeTreeTar(src, path.join(work, `${name}.tar`)), '--store', store, '--json', '--no-progress']);
    hex[name] = r.diffId.slice(7);
  }
});

after(async () => {
  for (const m of live) { await m.stop(); await forceUnmount(m.mp); }
  await cleanupTmpDirs();
});

async function mount(quota: string): Promise<Mounted> {
  const m = await mountStore(store, path.join(work, 'mnt'), { cacheDir: path.join(work, 'cache'), quota, extra: ['--no-passthrough'] });
  live.push(m);
  return m;
}
async function stop(m: Mounted): Promise<void> {
  assert.equal(await m.stop(), 0);
  live.splice(live.indexOf(m), 1);
}
const layerFile = (m: Mounted, name: 'one' | 'two', rel: string) => path.join(m.mp, 'layers', hex[name], rel);

it('catalogs count against --cache-quota, are kept while their layer is loaded and evicted when unused', async () => {
  let m = await mount('10G');
  assert.equal(await fsp.readFile(layerFile(m, 'one', 'one.txt'), 'utf8'), 'one\n');
  assert.equal(await fsp.readFile(layerFile(m, 'two', 'two.txt'), 'utf8'), 'two\n');
  const catalogs = path.join(m.cacheDir, 'catalogs');
  const sizes = new Map<string, number>();
  for (const n of await fsp.readdir(catalogs)) sizes.set(n, (await fsp.stat(path.join(catalogs, n))).size);
  assert.equal([...sizes.keys()].filter((n) => n.endsWith('.sqlite')).length, 2, 'both catalogs cached');
  // Each with the listings the mount keeps beside it (test/cache-listings.test.ts): one entry, both sizes.
  const catalogBytes = [...sizes.values()].reduce((a, b) => a + b, 0);
  let s = await m.stats();
  assert.equal(s.cache.usedBytes, catalogBytes, 'the cache counts its catalogs and their listings');
  assert.equal(s.cache.usedObjects, 2);
  await stop(m);

  // One byte short of both catalogs and big.bin: reading it must evict something, and only layer one's catalog is
  // unused (layer two is loaded).
  const quota = catalogBytes + big.length - 1;
  m = await mount(String(quota));
  s = await m.stats();
  assert.equal(s.cache.usedBytes, catalogBytes, 'cached catalogs are indexed at start');
  assert.equal(await sha256File(layerFile(m, 'two', 'big.bin')), sha256(big));
  s = await waitFor(async () => { const x = await m.stats(); return x.cache.catalogEvictions >= 1 ? x : null; }, 10_000, 100,
    'the unused catalog evicted') as Awaited<ReturnType<Mounted['stats']>>;
  assert.ok(s.cache.usedBytes <= quota, `within the quota: ${s.cache.usedBytes} <= ${quota}`);
  const left = (await fsp.readdir(catalogs)).filter((n) => n.endsWith('.sqlite'));
  assert.equal(left.length, 1, 'one catalog left');
  assert.equal(s.cache.catalogFetches, 0);
  // The one left is layer two's (loaded, pinned), though it is older than the chunks that were kept.
  assert.equal(await fsp.readFile(layerFile(m, 'two', 'two.txt'), 'utf8'), 'two\n');
  assert.equal((await m.stats()).cache.catalogFetches, 0, 'layer two\'s catalog stayed');
  // Layer one still works: its catalog is fetched again.
  assert.equal(await fsp.readFile(layerFile(m, 'one', 'one.txt'), 'utf8'), 'one\n');
  s = await m.stats();
  assert.equal(s.cache.catalogFetches, 1);
  assert.ok(s.cache.usedBytes <= quota);
  await stop(m);
});
