// Several writers on one shared store (the Wharf design): each layer published exactly once,
// and a writer killed mid-ingest leaves nothing visible and nothing gc cannot reclaim.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { watch } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeLayer } from './helpers/layers.js';
import { THINFS_MAIN, tmpDir, cleanupTmpDirs, run, runOk, thinfs, thinfsOk, thinfsJson, storeSnapshot, countObjects, listFiles } from './helpers/proc.js';

after(cleanupTmpDirs);

/** Real trees of this machine, archived from / as they are (usr/share/perl5/...). */
const systemTrees = (srcs: string[]) => ({ include: srcs.map((s): [string, string] => ['/', s]), keepTimes: true });

test('concurrent ingests of the same layer publish it exactly once', async () => {
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const tar = (await makeLayer(dir, 'l', null, systemTrees(['usr/share/perl5', 'usr/include/linux']))).file;
  const results = await Promise.all(Array.from({ length: 6 }, () => thinfsJson<{ diffId: string; published: boolean; newObjects: number }>(['ingest', tar, '--store', store, '--json'])));
  assert.equal(new Set(results.map((r) => r.diffId)).size, 1, 'all writers computed the same diff id');
  assert.equal(results.filter((r) => r.published).length, 1, 'exactly one writer published');
  const winner = results.find((r) => r.published)!;
  assert.ok(winner.newObjects > 0);
  assert.equal(results.filter((r) => !r.published).reduce((a, r) => a + r.newObjects, 0), 0, 'losers report no new objects');
  const snap = await storeSnapshot(store);
  assert.equal(snap.layers.length, 1);
  assert.equal(snap.data.length, winner.newObjects, 'one copy of each object: losers discarded their staging');
  assert.deepEqual(await readdir(join(store, 'txn')), [], 'no staging left behind');
  // The published layer reads back whole.
  const listing = await thinfsOk(['ls', '--store', store, winner.diffId, '/usr/share/perl5']);
  assert.ok(listing.split('\n').length > 10);
});

test('a writer killed mid-ingest publishes nothing; gc reclaims its staging; a rerun publishes', async () => {
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const tar = (await makeLayer(dir, 'big', null, systemTrees(['usr/lib/python3.11', 'usr/share/perl5', 'usr/include']))).file;
  const before = await storeSnapshot(store);
  const child = spawn(process.execPath, [THINFS_MAIN, 'ingest', tar, '--store', store], { stdio: 'ignore' });
  // Kill once staging has begun: objects exist under txn/ but no manifest.
  for (let i = 0; i < 400; i++) {
    const txns = await readdir(join(store, 'txn')).catch(() => []);
    if (txns.length && (await readdir(join(store, 'txn', txns[0]!)).catch(() => [])).length > 20) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const mid = await storeSnapshot(store);
  assert.deepEqual(mid.layers, before.layers, 'no manifest was published');
  assert.deepEqual(mid.data, before.data, 'data/ untouched by the killed ingest');
  assert.deepEqual(mid.packs, before.packs, 'packs/ untouched by the killed ingest');
  assert.ok((await readdir(join(store, 'txn'))).length >= 1, 'its staging dir is still there');

  const gc = await thinfsJson<{ txnsRemoved: number }>(['gc', '--store', store, '--json']);
  assert.equal(gc.txnsRemoved, 1, 'gc removes the dead writer\'s staging (owner pid is gone)');
  assert.deepEqual(await readdir(join(store, 'txn')), []);

  const r = await thinfsJson<{ published: boolean; diffId: string }>(['ingest', tar, '--store', store, '--json']);
  assert.equal(r.published, true);
  const m = JSON.parse(await readFile(join(store, 'layers', `${r.diffId.slice(7)}.json`), 'utf8'));
  assert.equal(m.diffId, r.diffId);
  // Every object (data/) and pack (packs/) the manifest's catalog names is present, and gc keeps all of them.
  const n = (await countObjects(store)) + (await listFiles(join(store, 'packs'))).length;
  const gc2 = await thinfsJson<{ removed: number; referenced: number }>(['gc', '--store', store, '--grace', '0', '--json']);
  assert.equal(gc2.removed, 0);
  assert.equal(gc2.referenced, n);
});

test('the same layer gives the same catalog object in every store, whatever its compression', async () => {
  const dir = await tmpDir();
  const tar = (await makeLayer(dir, 'l', null, systemTrees(['usr/share/perl5']))).file;
  await runOk('gzip', ['-k', '-n', tar]);
  const a = await thinfsJson<{ catalog: string; diffId: string }>(['ingest', tar, '--store', join(dir, 'a'), '--init', '--json']);
  await new Promise((r) => setTimeout(r, 1100)); // a timestamp in the catalog would now differ
  const b = await thinfsJson<{ catalog: string; diffId: string }>(['ingest', `${tar}.gz`, '--store', join(dir, 'b'), '--init', '--json']);
  assert.equal(b.diffId, a.diffId);
  assert.equal(b.catalog, a.catalog, 'nodes publishing the same layer write byte-identical catalogs');
});

/** The layers the store's repository manifest (thinfs-published) names, by diff id hex; [] without one. */
async function namedLayers(store: string): Promise<string[]> {
  const f = await readFile(join(store, 'thinfs-published'), 'utf8').catch(() => null);
  return f ? Object.keys(JSON.parse(f.slice(0, f.lastIndexOf('\n--'))).layers).sort() : [];
}

test('a writer killed between its layer manifest and the repository manifest: the re-run names the layer', async () => {
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const a = (await makeLayer(dir, 'a', null, systemTrees(['usr/include/linux']))).file;
  const b = (await makeLayer(dir, 'b', null, systemTrees(['usr/share/perl5']))).file;
  const ra = await thinfsJson<{ diffId: string }>(['ingest', a, '--store', store, '--json']);
  const afterA = await readFile(join(store, 'thinfs-published'));
  // The writer of b is SIGKILLed the moment its layer manifest appears: its republish is what the kill cuts off (a
  // kill that lands after it is made the same by putting back the revision it replaced; the state is the crash's).
  const env = { THINFS_LOCK_STALE_MS: '2000' }; // the killed writer's layer lock is taken over sooner
  const child = spawn(process.execPath, [THINFS_MAIN, 'ingest', b, '--store', store], { stdio: 'ignore', env: { ...process.env, ...env } });
  const w = watch(join(store, 'layers'), (_ev, name) => { if (name && !name.startsWith('.') && name !== `${ra.diffId.slice(7)}.json`) child.kill('SIGKILL'); });
  await new Promise((r) => child.once('exit', r));
  w.close();
  await writeFile(join(store, 'thinfs-published'), afterA);
  const layers = (await readdir(join(store, 'layers'))).filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).sort();
  assert.equal(layers.length, 2, 'b\'s layer manifest was written before the kill');
  assert.deepEqual(await namedLayers(store), [ra.diffId.slice(7)], 'the repository manifest does not name b: nodes reading through it do not see it');

  // fsck sees it (a dry run only reports it)...
  const dry = await thinfs(['fsck', '--store', store, '--dry-run']);
  assert.equal(dry.code, 5, dry.stdout);
  assert.match(dry.stdout, new RegExp(`layer ${layers.find((l) => l !== ra.diffId.slice(7))} is not named by the repository manifest`));

  // ...and the re-run finds b published and still makes the repository manifest name it.
  const rb = await thinfsJson<{ diffId: string; published: boolean }>(['ingest', b, '--store', store, '--json'], { env });
  assert.equal(rb.published, false, 'b was published by the killed writer');
  assert.deepEqual(await namedLayers(store), layers, 'the re-run republished: both layers named');
  await thinfsOk(['fsck', '--store', store]);
  // Without a re-run, fsck republishes.
  await writeFile(join(store, 'thinfs-published'), afterA);
  const fsck = await thinfs(['fsck', '--store', store]);
  assert.equal(fsck.code, 0, fsck.stdout);
  assert.match(fsck.stdout, /repository manifest republished/);
  assert.deepEqual(await namedLayers(store), layers, 'fsck republished: both layers named');
});

test('concurrent ingests of one layer with --diff-id: one writes it, the others wait and only pin its objects', async (t) => {
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const tar = (await makeLayer(dir, 'l', null, systemTrees(['usr/share/perl5', 'usr/lib/python3.11']))).file;
  const diffId = `sha256:${(await runOk('sha256sum', [tar])).slice(0, 64)}`;
  // Each writer reports the bytes it wrote to the filesystem (getrusage: blocks written, worker threads included).
  const pre = join(dir, 'fswrite.mjs');
  await writeFile(pre, "import { writeSync } from 'node:fs';\nprocess.on('exit', () => writeSync(2, `\\nfsWrite=${process.resourceUsage().fsWrite}\\n`));\n");
  const runs = await Promise.all(Array.from({ length: 3 }, () => run(process.execPath, ['--import', pre, THINFS_MAIN, 'ingest', tar, '--store', store, '--diff-id', diffId, '--json'])));
  for (const r of runs) assert.equal(r.code, 0, r.stderr);
  const results = runs.map((r) => ({ ...JSON.parse(r.stdout) as { published: boolean }, fsWrite: Number(/fsWrite=(\d+)/.exec(r.stderr)![1]) }));
  assert.equal(results.filter((r) => r.published).length, 1, 'exactly one writer published');
  const winner = results.find((r) => r.published)!;
  const losers = results.filter((r) => !r.published);
  if (winner.fsWrite === 0) { t.diagnostic('the filesystem reports no blocks written (tmpfs?): write volumes not compared'); return; }
  // The layer's objects are written once: the others wrote a small fraction of it (catalog work, pins, manifest).
  for (const l of losers) assert.ok(l.fsWrite < winner.fsWrite / 5, `a waiting writer wrote ${l.fsWrite} blocks, the publisher ${winner.fsWrite}`);
});
