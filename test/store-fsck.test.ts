// thinfs fsck (issue 15 acceptance 5): a planted corrupt object, a planted missing object and an orphan
// staging dir are found, the layers and images needing the objects named, the corrupt object quarantined,
// and --repair brings everything back from a real registry (Debian's docker-registry on loopback).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { hostname } from 'node:os';
import { cleanupTmpDirs, run, REPO_ROOT, thinfs, thinfsOk, tmpDir } from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import { OciLayout, startRegistry, pushLayout, type RegistryServer } from './fixtures/images.js';
import { pseudoRandom, makeLayer as makeLayerTar, type LayerTar } from './helpers/layers.js';
import { Store, WritableStore } from '../src/store/store.js';
import { encodeTrace } from '../src/format/trace.js';
import { sha256hex } from '../src/util/hash.js';
import { openLayerCatalog } from '../src/store/layer-catalog.js';

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const AMD64 = { os: 'linux', architecture: 'amd64' };
let work: string;
let reg: RegistryServer;
let base: LayerTar, top: LayerTar;

before(async () => {
  work = await tmpDir();
  base = await makeLayerTar(work, 'base', async (d) => {
    for (let i = 0; i < 12; i++) await fsp.writeFile(path.join(d, `base-${i}.bin`), pseudoRandom(40_000 + i, `base${i}`));
  }, { compression: 'gzip' });
  top = await makeLayerTar(work, 'top', async (d) => {
    await fsp.mkdir(path.join(d, 'app'));
    for (let i = 0; i < 8; i++) await fsp.writeFile(path.join(d, 'app', `top-${i}.bin`), pseudoRandom(30_000 + i, `top${i}`));
  }, { compression: 'zstd' });
  const lay = await new OciLayout(path.join(work, 'layout')).init();
  await lay.tag(await lay.image([base, top], AMD64), 'full');
  await lay.tag(await lay.image([base], AMD64), 'slim');
  reg = await startRegistry(path.join(work, 'registry'));
  await pushLayout(path.join(work, 'layout'), 'full', reg, 'test/full');
  await pushLayout(path.join(work, 'layout'), 'slim', reg, 'test/slim');
});

after(async () => {
  await reg?.stop();
  await cleanupTmpDirs();
});

async function convert(store: string, ref: string): Promise<string> {
  const r = await run(process.execPath, [D2T, '--insecure', '--store', store, '--json', `${reg.host}/${ref}`], { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 180_000 });
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { name: string }).name;
}

async function chunkHashes(store: string, diffId: string): Promise<Set<string>> {
  const { catalog, close } = await openLayerCatalog(await Store.open(store), diffId);
  try { return new Set(catalog.allChunkHashes()); } finally { await close(); }
}

const objFile = (store: string, h: string) => path.join(store, 'data', h.slice(0, 2), h.slice(2));

test('fsck finds a corrupt object, a missing object and orphan staging; --repair restores them from the registry', async () => {
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const full = await convert(store, 'test/full:full');
  const slim = await convert(store, 'test/slim:slim');
  const baseChunks = await chunkHashes(store, base.diffId);
  const topChunks = [...(await chunkHashes(store, top.diffId))].filter((h) => !baseChunks.has(h)).sort();
  assert.ok(topChunks.length >= 8 && baseChunks.size >= 12);

  // Plant: one byte flipped in an object of the top layer, an object of the base layer deleted,
  // and the staging dir of a transaction whose process died.
  const corrupt = topChunks[0]!;
  const bytes = await fsp.readFile(objFile(store, corrupt));
  bytes[bytes.length - 5] ^= 0x40;
  await fsp.writeFile(objFile(store, corrupt), bytes);
  const missing = [...baseChunks].sort()[0]!;
  await fsp.rm(objFile(store, missing));
  const child = spawn('true');
  const deadPid = await new Promise<number>((r) => child.on('exit', () => r(child.pid!)));
  const orphan = `${Date.now() - 5000}-${deadPid}-crashed-0badf00d`;
  await fsp.mkdir(path.join(store, 'txn', orphan));
  await fsp.writeFile(path.join(store, 'txn', orphan, 'owner.json'), JSON.stringify({ pid: deadPid, host: hostname(), started: new Date().toISOString() }));
  await fsp.writeFile(path.join(store, 'txn', orphan, 'a'.repeat(64)), 'half-written object');

  const check = await thinfs(['fsck', '--store', store, '--json']);
  assert.equal(check.code, 5, `problems found: exit 5 (${check.stderr})`);
  const rep = JSON.parse(check.stdout);
  assert.deepEqual(rep.corrupt.map((c: any) => c.hash), [corrupt]);
  assert.deepEqual(rep.corrupt[0].layers, [top.diffId], 'the layer needing the corrupt object is named');
  assert.deepEqual(rep.corrupt[0].images, [full]);
  assert.ok(rep.corrupt[0].quarantined, 'quarantined');
  await fsp.access(path.join(store, rep.corrupt[0].quarantined));
  await assert.rejects(fsp.access(objFile(store, corrupt)), 'no longer in data/');
  const m = rep.missing.find((x: any) => x.hash === missing);
  assert.ok(m, 'the deleted object is reported missing');
  assert.deepEqual(m.layers, [base.diffId]);
  assert.deepEqual(m.images, [full, slim].sort(), 'both images need the base layer');
  assert.deepEqual(rep.missing.map((x: any) => x.hash).sort(), [corrupt, missing].sort(), 'the quarantined object is missing now too');
  assert.deepEqual(rep.txnsRemoved, [orphan]);
  await assert.rejects(fsp.access(path.join(store, 'txn', orphan)), 'orphan staging removed');

  // A human-readable report names them too.
  const human = await thinfs(['fsck', '--store', store, '--dry-run']);
  assert.equal(human.code, 5);
  assert.match(human.stdout, new RegExp(`missing object ${missing}.*${base.diffId}`));

  const fix = await thinfs(['fsck', '--store', store, '--json', '--repair', '--from', reg.host, '--insecure'], { timeoutMs: 180_000 });
  assert.equal(fix.code, 0, `repaired: exit 0 (${fix.stderr} ${fix.stdout})`);
  const fr = JSON.parse(fix.stdout);
  assert.deepEqual([...fr.repair.restored].sort(), [corrupt, missing].sort());
  assert.equal(fr.after.ok, true);
  await (await Store.open(store)).getObject(corrupt);
  await (await Store.open(store)).getObject(missing);

  // The layers read back equal to their tars, and a fresh check is clean.
  for (const l of [base, top]) {
    const out = path.join(work, `${l.name}.out.tar`);
    await thinfsOk(['export', l.diffId, '-o', out, '--store', store]);
    const cmp = await compareTars(l.file.replace(/\.(gz|zst)$/, ''), out, path.join(work, `cmp-${l.name}`));
    assert.deepEqual(cmp.tree, [], `${l.name} reads back whole`);
  }
  const again = await thinfs(['fsck', '--store', store, '--json']);
  assert.equal(again.code, 0, again.stdout);
});

test('fsck --repair from another store copies the missing objects, verified', async () => {
  const a = path.join(work, 'a'), b = path.join(work, 'b');
  await thinfsOk(['init', a]);
  await thinfsOk(['init', b]);
  await convert(a, 'test/slim:slim');
  await convert(b, 'test/slim:slim');
  const chunks = [...(await chunkHashes(a, base.diffId))].sort().slice(0, 3);
  for (const h of chunks) await fsp.rm(objFile(a, h));
  const r = await thinfs(['fsck', '--store', a, '--json', '--repair', '--from', b]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.deepEqual([...JSON.parse(r.stdout).repair.restored].sort(), chunks);
  for (const h of chunks) await (await Store.open(a)).getObject(h);
  // A layer manifest lost altogether: the image names an unpublished layer; it comes back whole from b.
  const manifest = path.join(a, 'layers', `${base.diffId.slice(7)}.json`);
  await fsp.rm(manifest);
  for (const h of chunks) await fsp.rm(objFile(a, h));
  const lost = await thinfs(['fsck', '--store', a, '--json']);
  assert.equal(lost.code, 5);
  assert.deepEqual(JSON.parse(lost.stdout).brokenImages.map((x: any) => x.unpublished), [base.diffId]);
  const r2 = await thinfs(['fsck', '--store', a, '--json', '--repair', '--from', b]);
  assert.equal(r2.code, 0, r2.stdout + r2.stderr);
  assert.deepEqual(JSON.parse(r2.stdout).repair.layers, [base.diffId]);
  await fsp.access(manifest);
  const out = path.join(work, 'a-base.out.tar');
  await thinfsOk(['export', base.diffId, '-o', out, '--store', a]);
  assert.deepEqual((await compareTars(base.file.replace(/\.gz$/, ''), out, path.join(work, 'cmp-a-base'))).tree, []);
  // Usage errors are exit 2, a missing store 4.
  assert.equal((await thinfs(['fsck', '--store', a, '--repair'])).code, 2);
  assert.equal((await thinfs(['fsck', '--store', path.join(work, 'nope')])).code, 4);
});

test('fsck checks prefetch traces: corrupt, not a trace, missing; named with their images; only another store restores one', async () => {
  const a = path.join(work, 'ta'), b = path.join(work, 'tb');
  await thinfsOk(['init', a]);
  await thinfsOk(['init', b]);
  const slim = await convert(a, 'test/slim:slim');
  await convert(b, 'test/slim:slim');
  // The same trace attached in both stores (a recorded start-up: three chunks of the base layer).
  const src = await Store.open(a);
  const chunks = await Promise.all([...(await chunkHashes(a, base.diffId))].sort().slice(0, 3)
    .map(async (hash) => ({ layer: base.diffId.slice(7), hash, size: (await src.getObject(hash)).length })));
  const traceFile = path.join(work, 'start.trace');
  await fsp.writeFile(traceFile, encodeTrace(chunks));
  const att = JSON.parse(await thinfsOk(['trace', 'attach', '-s', a, slim, traceFile, '--json'])) as { trace: { sha256: string } };
  await thinfsOk(['trace', 'attach', '-s', b, slim, traceFile]);
  const trace = att.trace.sha256;
  assert.equal((await thinfs(['fsck', '--store', a])).code, 0, 'a sound trace passes');

  // Corrupt: found by its hash, named with its image, quarantined.
  const bytes = await fsp.readFile(objFile(a, trace));
  bytes[bytes.length - 3] ^= 0x10;
  await fsp.writeFile(objFile(a, trace), bytes);
  const check = await thinfs(['fsck', '--store', a, '--json']);
  assert.equal(check.code, 5, check.stderr);
  const rep = JSON.parse(check.stdout);
  assert.deepEqual(rep.corrupt.map((c: any) => [c.hash, c.trace, c.images, c.layers]), [[trace, true, [slim], []]]);
  assert.ok(rep.corrupt[0].quarantined);
  await assert.rejects(fsp.access(objFile(a, trace)), 'quarantined out of data/');
  assert.deepEqual(rep.missing.map((m: any) => [m.hash, m.trace, m.images]), [[trace, true, [slim]]]);

  // Missing now: a registry cannot bring it back and the report says so; another store can.
  const human = await thinfs(['fsck', '--store', a, '--repair', '--from', reg.host, '--insecure'], { timeoutMs: 180_000 });
  assert.equal(human.code, 5, human.stdout + human.stderr);
  assert.match(human.stdout, new RegExp(`missing trace ${trace}: named by images \\[${slim.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\] \\(a registry cannot restore a prefetch trace`));
  assert.match(human.stdout, new RegExp(`could not repair trace ${trace}.*a registry cannot restore a prefetch trace`));
  const fix = await thinfs(['fsck', '--store', a, '--json', '--repair', '--from', b]);
  assert.equal(fix.code, 0, fix.stdout + fix.stderr);
  assert.deepEqual(JSON.parse(fix.stdout).repair.restored, [trace]);
  assert.ok((await (await Store.open(a)).getObject(trace)).equals(encodeTrace(chunks)), 'the trace is back, verified');

  // Sound by hash but not a trace (a descriptor naming the wrong object): reported, quarantined.
  const store = await WritableStore.openDir(a);
  const junk = Buffer.from('{"not":"a trace"}\n');
  const desc = (await store.getImage(slim))!;
  desc.trace = { sha256: sha256hex(junk), size: junk.length };
  await store.putImage(desc, undefined, undefined, [{ hex: sha256hex(junk), data: junk }]);
  const notTrace = JSON.parse((await thinfs(['fsck', '--store', a, '--json'])).stdout);
  assert.deepEqual(notTrace.corrupt.map((c: any) => [c.hash, c.trace, c.images]), [[sha256hex(junk), true, [slim]]]);
  assert.match(notTrace.corrupt[0].error, /not a usable trace: .*not a thinfs v1 trace/);
  assert.ok(notTrace.corrupt[0].quarantined);
});

test('fsck counts the bytes of every sound object and pack (none lost to the parallel checks)', async () => {
  const store = path.join(work, 'store-bytes');
  await thinfsOk(['init', store]);
  await thinfsOk(['ingest', base.file, '--store', store, '--no-progress']);
  await thinfsOk(['ingest', top.file, '--store', store, '--no-progress']);
  let expected = 0;
  for (const dir of ['data', 'packs']) {
    for (const f of await fsp.readdir(path.join(store, dir), { recursive: true }).catch(() => [] as string[])) {
      const st = await fsp.stat(path.join(store, dir, f));
      if (st.isFile()) expected += st.size;
    }
  }
  for (let i = 0; i < 3; i++) {
    const r = await thinfs(['fsck', '--store', store, '--json', '--dry-run']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).bytes, expected, 'bytes: the sum of the sound objects\' and packs\' sizes');
  }
});
