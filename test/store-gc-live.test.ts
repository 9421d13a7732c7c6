// Issue 15 acceptance 6: `thinfs gc --grace 0` run over and over while three conversions and the publisher
// write into the store, every object they deduplicate against being old and unreferenced when they start
// (their layers were ingested before and the manifests removed). Afterwards every published layer exports
// back equal to its tar: gc never took an object a layer being published needed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, listFiles, run, REPO_ROOT, thinfs, thinfsOk, tmpDir } from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import { OciLayout, startRegistry, pushLayout, type RegistryServer } from './fixtures/images.js';
import { pseudoRandom, makeLayer as makeLayerTar } from './helpers/layers.js';
import { startS3rver, startPublisher, awsCp, realTreeLayer, sourceDirs, publishedLayers, BUCKET, TOKEN, type S3Server, type PublisherProc } from './publisher-fixture.js';

let reg: RegistryServer | undefined;
let s3: S3Server | undefined;
let pub: PublisherProc | undefined;
after(async () => { await pub?.stop().catch(() => undefined); await s3?.stop().catch(() => undefined); await reg?.stop(); await cleanupTmpDirs(); });

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');

test('gc running repeatedly during 3 conversions and the publisher: every published layer reads back equal to its tar', async () => {
  const work = await tmpDir();
  const AMD64 = { os: 'linux', architecture: 'amd64' };
  const base = await makeLayerTar(work, 'base', async (d) => {
    for (let i = 0; i < 30; i++) await fsp.writeFile(path.join(d, `b${i}.bin`), pseudoRandom(20_000 + i * 997, `base${i}`));
  }, { compression: 'gzip' });
  const tops = await Promise.all([0, 1, 2].map((k) => makeLayerTar(work, `top${k}`, async (d) => {
    for (let i = 0; i < 20; i++) await fsp.writeFile(path.join(d, `t${k}-${i}.bin`), pseudoRandom(15_000 + i * 991, `top${k}-${i}`));
    // Shared with the base layer: deduplicated against during the conversion.
    await fsp.writeFile(path.join(d, 'copy-of-b0.bin'), pseudoRandom(20_000, 'base0'));
  }, { compression: 'zstd' })));
  const lay = await new OciLayout(path.join(work, 'layout')).init();
  for (let k = 0; k < 3; k++) await lay.tag(await lay.image([base, tops[k]!], AMD64), `i${k}`);
  reg = await startRegistry(path.join(work, 'registry'));
  for (let k = 0; k < 3; k++) await pushLayout(path.join(work, 'layout'), `i${k}`, reg, `test/i${k}`);
  const dirs = await sourceDirs(6);
  const upl = [];
  for (let k = 0; k < 3; k++) upl.push(await realTreeLayer(work, `u${k}`, dirs.slice(k * 2, k * 2 + 2)));

  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  // Everything once, then unpublished and aged: all objects unreferenced and older than any grace.
  for (let k = 0; k < 3; k++) {
    const r = await run(process.execPath, [D2T, '--insecure', '--store', store, `${reg.host}/test/i${k}:i${k}`], { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 180_000 });
    assert.equal(r.code, 0, r.stderr);
  }
  for (const u of upl) await thinfsOk(['ingest', u.file, '--store', store]);
  for (const d of ['layers', 'images']) for (const f of await fsp.readdir(path.join(store, d))) await fsp.rm(path.join(store, d, f));
  const old = new Date(Date.now() - 3 * 3600_000);
  for (const f of await listFiles(path.join(store, 'data'))) await fsp.utimes(path.join(store, 'data', f), old, old);

  s3 = await startS3rver(path.join(work, 's3'));
  pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'pubstate'), '--reconcile-interval', '1'], path.join(work, 'publisher.log'));

  let writing = true;
  let gcRuns = 0, gcRemoved = 0;
  const gcLoop = (async () => {
    while (writing) {
      const g = await thinfs(['gc', '--store', store, '--grace', '0', '--json'], { timeoutMs: 120_000 });
      assert.equal(g.code, 0, g.stderr);
      gcRuns++;
      gcRemoved += (JSON.parse(g.stdout) as { removed: number }).removed;
    }
  })();
  try {
    const convs = [0, 1, 2].map((k) => run(process.execPath, [D2T, '--insecure', '--store', store, '--jobs', '1', `${reg!.host}/test/i${k}:i${k}`], { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 240_000 }));
    for (const u of upl) await awsCp(s3.endpoint, u.file, BUCKET, `up/${u.name}.tar`);
    for (const c of await Promise.all(convs)) assert.equal(c.code, 0, c.stderr);
    const deadline = Date.now() + 240_000;
    for (;;) {
      const pubd = await publishedLayers(store);
      if (upl.every((u) => pubd.has(u.diffId))) break;
      assert.ok(Date.now() < deadline, 'the publisher published every upload');
      await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    writing = false;
    await gcLoop;
  }
  assert.ok(gcRuns >= 2, `gc ran ${gcRuns} times during the writes`);

  // One more gc after everything, then every published layer must read back whole.
  const last = await thinfs(['gc', '--store', store, '--grace', '0', '--json']);
  assert.equal(last.code, 0, last.stderr);
  const tars = new Map<string, string>([
    [base.diffId, base.file.replace(/\.gz$/, '')],
    ...tops.map((t) => [t.diffId, t.file.replace(/\.zst$/, '')] as [string, string]),
    ...upl.map((u) => [u.diffId, u.file] as [string, string]),
  ]);
  const published = await publishedLayers(store);
  assert.deepEqual([...published.keys()].sort(), [...tars.keys()].sort());
  for (const [diffId, tar] of tars) {
    const out = path.join(work, `${diffId.slice(7, 19)}.out.tar`);
    const ex = await thinfs(['export', diffId, '-o', out, '--store', store]);
    assert.equal(ex.code, 0, `layer ${diffId} exports (gc ran ${gcRuns} times, removed ${gcRemoved} objects): ${ex.stderr}`);
    const cmp = await compareTars(tar, out, path.join(work, `cmp-${diffId.slice(7, 19)}`));
    assert.deepEqual(cmp.tree, [], `layer ${diffId} equals its tar`);
  }
  const fsck = await thinfs(['fsck', '--store', store, '--json']);
  assert.equal(fsck.code, 0, fsck.stdout);
});
