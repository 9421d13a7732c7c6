// gc against live writers (issue 10 items 3, 9, 18): an object a new layer deduplicates against survives a
// concurrent sweep, a live ingest's staging survives `--grace 0`, and one broken layer does not stop gc from
// reporting on the rest (nor lets it sweep that layer's objects blindly).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, listFiles, run, runOk, thinfs, thinfsJson, thinfsOk, THINFS_MAIN, tmpDir, waitFor, storeSnapshot } from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import { makeTreeTar } from './fixtures/tars.js';
import { pseudoRandom } from './helpers/layers.js';

after(cleanupTmpDirs);

/** Files a-000.. (shared part) and optionally z-000.. (new part), pseudo-random so every file is its own object. */
async function makeTar(dir: string, name: string, shared: number, fresh: number, seed = ''): Promise<string> {
  const src = path.join(dir, `${name}-src`);
  await fsp.mkdir(src, { recursive: true });
  for (let i = 0; i < shared; i++) await fsp.writeFile(path.join(src, `a-${String(i).padStart(3, '0')}`), pseudoRandom(48 * 1024, `a${i}`));
  for (let i = 0; i < fresh; i++) await fsp.writeFile(path.join(src, `z-${String(i).padStart(3, '0')}`), pseudoRandom(4096, `z${seed}${i}`));
  return makeTreeTar(src, path.join(dir, `${name}.tar`));
}

async function txnNames(store: string): Promise<string[]> {
  return (await fsp.readdir(path.join(store, 'txn')).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
}

/** An ingest fed through stdin, held after `bytes` bytes until finish() is called. */
async function heldIngest(store: string, tar: string, bytes: number) {
  const child = spawn(process.execPath, [THINFS_MAIN, 'ingest', '-', '--store', store, '--json', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '', err = '';
  child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
  child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
  child.stdin.on('error', () => {});
  const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  const data = await fsp.readFile(tar);
  child.stdin.write(data.subarray(0, bytes));
  return {
    child, exited,
    finish: async () => { child.stdin.end(data.subarray(bytes)); return { code: await exited, out, err: () => err }; },
  };
}

/** Make every object in the store look old (older than any grace period used here). */
async function ageObjects(store: string): Promise<void> {
  const old = new Date(Date.now() - 3 * 3600_000);
  for (const f of await listFiles(path.join(store, 'data'))) await fsp.utimes(path.join(store, 'data', f), old, old);
}

test('gc racing an ingest: objects the new layer deduplicated against are not swept from under it', async () => {
  const dir = await tmpDir();
  const store = path.join(dir, 'store');
  await thinfsOk(['init', store]);
  const first = await makeTar(dir, 'first', 60, 0);
  const second = await makeTar(dir, 'second', 60, 120);
  // The first layer's objects become unreferenced (its manifest removed) and older than the grace period.
  const r0 = await thinfsJson<{ diffId: string }>(['ingest', first, '--store', store, '--json']);
  await fsp.rm(path.join(store, 'layers', `${r0.diffId.slice(7)}.json`));
  await ageObjects(store);

  // The second layer shares those 60 files; hold its ingest once the shared part has been deduplicated
  // and some of its new objects are staged.
  const size = (await fsp.stat(second)).size;
  const held = await heldIngest(store, second, size - 60 * 4608);
  await waitFor(async () => {
    for (const t of await txnNames(store)) if ((await listFiles(path.join(store, 'txn', t))).length >= 40) return true;
    return false;
  }, 60_000, 50, 'staged objects of the held ingest');
  await new Promise((r) => setTimeout(r, 500));

  const gc = await thinfs(['gc', '--store', store, '--grace', '60', '--json'], { timeoutMs: 120_000 });
  assert.equal(gc.code, 0, gc.stderr);

  const res = await held.finish();
  assert.equal(res.code, 0, res.err());
  const r = JSON.parse(res.out) as { diffId: string; published: boolean };
  assert.equal(r.published, true);
  // The published layer must read back whole: every object it names is there.
  const exported = path.join(dir, 'second.exported.tar');
  const ex = await thinfs(['export', r.diffId, '-o', exported, '--store', store]);
  assert.equal(ex.code, 0, `export of the layer published during gc failed: ${ex.stderr}`);
  const cmp = await compareTars(second, exported, path.join(dir, 'cmp'), { sortListing: true });
  assert.deepEqual(cmp.tree, [], 'exported layer extracts to the same tree');
  // And the next gc keeps every object of it.
  const gc2 = await thinfsJson<{ removed: number }>(['gc', '--store', store, '--grace', '0', '--json']);
  const ex2 = await thinfs(['export', r.diffId, '-o', exported, '--store', store]);
  assert.equal(ex2.code, 0, `after a second gc (removed ${gc2.removed}): ${ex2.stderr}`);
});

test('gc --grace 0 leaves the staging of a live ingest on this host alone', async () => {
  const dir = await tmpDir();
  const store = path.join(dir, 'store');
  await thinfsOk(['init', store]);
  const tar = await makeTar(dir, 'l', 20, 120);
  const size = (await fsp.stat(tar)).size;
  const held = await heldIngest(store, tar, size - 60 * 4608);
  await waitFor(async () => {
    for (const t of await txnNames(store)) if ((await listFiles(path.join(store, 'txn', t))).length >= 30) return true;
    return false;
  }, 60_000, 50, 'staged objects');
  const staged = await txnNames(store);
  const gc = await thinfsJson<{ txnsRemoved: number }>(['gc', '--store', store, '--grace', '0', '--json'], { timeoutMs: 120_000 });
  assert.equal(gc.txnsRemoved, 0, 'a live owner\'s staging is not removed, whatever the grace');
  assert.deepEqual(await txnNames(store), staged);
  const res = await held.finish();
  assert.equal(res.code, 0, `the ingest completes after gc: ${res.err()}`);
  const r = JSON.parse(res.out) as { diffId: string; published: boolean };
  assert.equal(r.published, true);
  const exported = path.join(dir, 'l.exported.tar');
  await thinfsOk(['export', r.diffId, '-o', exported, '--store', store]);
  const cmp = await compareTars(tar, exported, path.join(dir, 'cmp'), { sortListing: true });
  assert.deepEqual(cmp.tree, []);
});

test('a layer whose catalog is missing: gc --dry-run reports it and goes on; a real gc sweeps nothing blindly', async () => {
  const dir = await tmpDir();
  const store = path.join(dir, 'store');
  await thinfsOk(['init', store]);
  const good = await thinfsJson<{ diffId: string; catalog: string }>(['ingest', await makeTar(dir, 'good', 5, 0), '--store', store, '--json']);
  const bad = await thinfsJson<{ diffId: string; catalog: string }>(['ingest', await makeTar(dir, 'bad', 0, 7), '--store', store, '--json']);
  // Garbage: an unreferenced old object that gc would normally remove.
  const orphan = await thinfsJson<{ diffId: string }>(['ingest', await makeTar(dir, 'orphan', 0, 3, 'orphan'), '--store', store, '--json']);
  await fsp.rm(path.join(store, 'layers', `${orphan.diffId.slice(7)}.json`));
  await fsp.rm(path.join(store, 'data', bad.catalog.slice(0, 2), bad.catalog.slice(2)));
  await ageObjects(store);
  const before = await storeSnapshot(store);

  const dry = await thinfs(['gc', '--store', store, '--grace', '0', '--dry-run', '--json']);
  assert.notEqual(dry.stdout, '', `dry run reports (exit ${dry.code}, stderr ${dry.stderr})`);
  const rep = JSON.parse(dry.stdout) as { layers: number; broken: Array<{ diffId: string; error: string }>; removed: number };
  assert.equal(rep.layers, 1, 'the good layer was marked');
  assert.deepEqual(rep.broken.map((b) => b.diffId), [bad.diffId], 'the broken layer is named');
  assert.match(rep.broken[0]!.error, new RegExp(bad.catalog));
  assert.ok(dry.code === 0, `dry run exits 0 (got ${dry.code})`);
  assert.deepEqual(await storeSnapshot(store), before, 'dry run changes nothing');

  const real = await thinfs(['gc', '--store', store, '--grace', '0', '--json']);
  assert.notEqual(real.code, 0, 'a real gc with a broken layer reports failure');
  const rr = JSON.parse(real.stdout) as { removed: number; broken: unknown[] };
  assert.equal(rr.removed, 0, 'nothing swept while a layer\'s objects are unknown');
  assert.equal(rr.broken.length, 1);
  assert.deepEqual((await storeSnapshot(store)).data, before.data);
  // The good layer is intact throughout.
  await thinfsOk(['export', good.diffId, '-o', path.join(dir, 'good.out.tar'), '--store', store]);
});

test('a removal that fails does not stop the sweep: the rest is collected, the failure named, exit 1; files that are not objects are left alone', async () => {
  const dir = await tmpDir();
  const store = path.join(dir, 'store');
  await thinfsOk(['init', store]);
  await thinfsOk(['ingest', await makeTar(dir, 'kept', 3, 0), '--store', store, '--json']);
  const orphan = await thinfsJson<{ diffId: string }>(['ingest', await makeTar(dir, 'orphan', 0, 6, 'gcfail'), '--store', store, '--json']);
  await fsp.rm(path.join(store, 'layers', `${orphan.diffId.slice(7)}.json`));
  await thinfsOk(['fsck', '--store', store]); // republishes the repository manifest without the orphan
  // An NFS silly-rename (a file unlinked while a client held it open) beside the objects.
  const fan = (await fsp.readdir(path.join(store, 'data')))[0]!;
  const silly = path.join(store, 'data', fan, '.nfs000000000012345600000001');
  await fsp.writeFile(silly, 'held open elsewhere');
  await ageObjects(store);
  const dry = JSON.parse(await thinfsOk(['gc', '--store', store, '--grace', '0', '--dry-run', '--json'])) as { removed: number; foreign: number };
  assert.ok(dry.removed >= 6, `the orphan's objects are garbage (${dry.removed})`);
  assert.equal(dry.foreign, 1, 'the .nfs file is not an object');
  // Which objects in data/ are garbage: the ones a real sweep removes from a copy of the store.
  const copy = path.join(dir, 'copy');
  await fsp.cp(store, copy, { recursive: true, preserveTimestamps: true });
  await thinfsOk(['gc', '--store', copy, '--grace', '0']);
  const left = new Set(await listFiles(path.join(copy, 'data')));
  const garbage = (await listFiles(path.join(store, 'data'))).filter((f) => !left.has(f)).sort();
  assert.ok(garbage.length >= 2);
  assert.ok(left.has(path.relative(path.join(store, 'data'), silly)), 'the .nfs file is left alone');
  // One garbage object cannot be removed (immutable: root cannot remove it either).
  const held = garbage[0]!;
  await runOk('chattr', ['+i', path.join(store, 'data', held)]);
  try {
    const r = await thinfs(['gc', '--store', store, '--grace', '0', '--json']);
    assert.equal(r.code, 1, `exit 1 when a removal failed (stderr ${r.stderr})`);
    const rep = JSON.parse(r.stdout) as { removed: number; failures: number; failed: Array<{ path: string; error: string }>; foreign: number };
    assert.equal(rep.failures, 1);
    assert.equal(rep.removed, dry.removed - 1, 'every other garbage object removed');
    assert.equal(rep.failed[0]!.path, `data/${held}`);
    assert.match(rep.failed[0]!.error, /EPERM|not permitted/);
    const now = new Set(await listFiles(path.join(store, 'data')));
    assert.deepEqual(garbage.filter((g) => now.has(g)), [held]);
    const text = await thinfs(['gc', '--store', store, '--grace', '0']);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /cannot remove data\/.*1 removal\(s\) failed/s);
  } finally {
    await run('chattr', ['-i', path.join(store, 'data', held)]);
  }
  // Once the file can go, the next gc takes it and succeeds; the .nfs file stays.
  const again = JSON.parse(await thinfsOk(['gc', '--store', store, '--grace', '0', '--json'])) as { removed: number; failures: number };
  assert.deepEqual([again.removed, again.failures], [1, 0]);
  await fsp.access(silly);
});
