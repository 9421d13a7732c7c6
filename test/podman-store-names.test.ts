// The generated podman image store against what a normal `podman pull` records (the oracle, checked by hand
// against a docker-registry pull: see the commit messages): an image converted by digest is REPO@DIGEST, not a
// dangling <none> image; the image's CREATED is its config's, not the conversion's; and podman never reads a
// layers.json that lacks a layer images.json names, while images come and go.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { THINFS_MAIN, runOk, thinfsJson, thinfsOk, tmpDir, cleanupTmpDirs, haveCommand, waitFor } from './helpers/proc.js';
import { copyHostTools } from './helpers/host-tools.js';
import { testPodman, type TestPodman } from './helpers/podman.js';
import { makeLayer } from './helpers/layers.js';
import { testDescriptor } from './helpers/descriptor.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { Store, WritableStore } from '../src/store/store.js';
import { generatePodmanStore } from '../src/podman/image-store.js';
import type { ThinImage } from '../src/format/descriptor.js';

let work = '';
let skip: string | false = false;
let store = '';
let mounts: TrackedMounts | null = null;
let pod: TestPodman | null = null;
const hex: Record<'base' | 'a' | 'b', string> = { base: '', a: '', b: '' };
const CREATED = '2024-01-02T03:04:05Z';
const DIGEST = `sha256:${'5d'.repeat(32)}`;
const INDEX = `sha256:${'1d'.repeat(32)}`;

async function ingest(name: string, fill: (d: string) => Promise<void>): Promise<string> {
  const l = await makeLayer(work, name, fill);
  return (await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', store, '--json', '--no-progress'])).diffId.slice(7);
}

function descriptor(name: string, reference: string, layerHexes: string[], extra: Partial<ThinImage> = {}): ThinImage {
  const d = testDescriptor(name, store, layerHexes);
  d.reference = reference;
  d.created = new Date().toISOString(); // the conversion's time
  d.config = { architecture: 'amd64', os: 'linux', created: CREATED, config: { Env: ['PATH=/usr/bin:/bin'], Cmd: ['/usr/bin/sh'] }, rootfs: { type: 'layers', diff_ids: layerHexes.map((h) => `sha256:${h}`) } };
  return { ...d, ...extra };
}

before(async () => {
  work = await tmpDir('thinfs-podman-names-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  hex.base = await ingest('base', async (d) => {
    await copyHostTools(d, ['sh', 'cat', 'true', 'sleep']);
    for (const x of ['tmp', 'proc', 'sys', 'dev', 'etc']) await fsp.mkdir(path.join(d, x), { recursive: true });
    await fsp.writeFile(path.join(d, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  });
  hex.a = await ingest('a', async (d) => { await fsp.writeFile(path.join(d, 'a.txt'), 'a\n'); });
  hex.b = await ingest('b', async (d) => { await fsp.writeFile(path.join(d, 'b.txt'), 'b\n'); });
  for (const c of ['podman', 'runc']) if (!(await haveCommand(c))) { skip = `${c} not installed (scripts/setup.sh)`; return; }
  mounts = trackedMounts(work, store);
});

after(async () => {
  await pod?.cleanup();
  await mounts?.close();
  await cleanupTmpDirs();
});

test('layers.json names every layer images.json uses at every instant, while images are added and removed', async () => {
  const dir = path.join(work, 'consistency');
  const ws = await WritableStore.openDir(store);
  await ws.putImage(descriptor('keep:1', 'localhost/keep:1', [hex.base]));
  const st = await Store.open(store);
  const gen = () => generatePodmanStore({ store: st, mountpoint: path.join(work, 'mnt'), dir });
  await gen();
  // A reader as podman reads: layers.json, then images.json, then layers.json again (a layer in either read will do).
  const reader = spawn(process.execPath, ['-e', `
    const fs = require('fs'); const dir = process.argv[1]; let reads = 0, bad = 0, first = '';
    const layers = () => { try { return new Set(JSON.parse(fs.readFileSync(dir + '/overlay-layers/layers.json', 'utf8')).map((l) => l.id)); } catch { return null; } };
    const end = Date.now() + 60000;
    const stop = () => { console.log(JSON.stringify({ reads, bad, first })); process.exit(0); };
    process.on('SIGTERM', stop);
    (function loop() {
      for (let i = 0; i < 200; i++) {
        const l1 = layers(); let imgs; try { imgs = JSON.parse(fs.readFileSync(dir + '/overlay-images/images.json', 'utf8')); } catch { continue; }
        const l2 = layers(); if (!l1 || !l2) continue; reads++;
        for (const im of imgs) if (!l1.has(im.layer) && !l2.has(im.layer)) { bad++; first ||= im.names.join(','); }
      }
      if (Date.now() > end) stop(); else setImmediate(loop);
    })();`, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  reader.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  const done = new Promise<void>((r) => reader.on('exit', () => r()));
  try {
    const file = path.join(store, 'images', 'churn%3A1.json');
    for (let i = 0; i < 60; i++) {
      await ws.putImage(descriptor('churn:1', 'localhost/churn:1', [hex.base, i % 2 ? hex.a : hex.b]));
      await gen();
      await fsp.rm(file);
      await gen();
      await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    reader.kill('SIGTERM');
    await done;
  }
  const r = JSON.parse(out) as { reads: number; bad: number; first: string };
  assert.ok(r.reads > 100, `the reader read (${r.reads})`);
  assert.equal(r.bad, 0, `images.json named a layer layers.json did not list (${r.bad} of ${r.reads} reads, first: ${r.first})`);
  const final = JSON.parse(await fsp.readFile(path.join(dir, 'overlay-layers/layers.json'), 'utf8')) as Array<{ id: string }>;
  assert.deepEqual(final.map((l) => l.id), [hex.base], 'layers no image uses are dropped at the end');
});

test('podman: an image converted by digest is REPO@DIGEST (not dangling), CREATED is the config\'s', async (t) => {
  if (skip) { t.skip(skip); return; }
  const ws = await WritableStore.openDir(store);
  for (const n of ['keep%3A1.json', 'churn%3A1.json']) await fsp.rm(path.join(store, 'images', n), { force: true });
  await ws.putImage(descriptor('y@sha256', `127.0.0.1:5000/x/y@${DIGEST}`, [hex.base, hex.a], { manifestDigest: DIGEST }));
  // z: its platform's manifest selected from a multi-platform index (a pull's Digest is then the index's)
  await ws.putImage(descriptor('z:v1', '127.0.0.1:5000/x/z:v1@' + `sha256:${'7e'.repeat(32)}`, [hex.base, hex.b], { manifestDigest: `sha256:${'7e'.repeat(32)}`, indexDigest: INDEX }));
  await mounts!.mount('mnt', { cache: 'cache', extra: ['--podman-store', path.join(work, 'ps')] });
  const conf = path.join(work, 'node', 'storage.conf');
  await fsp.mkdir(path.dirname(conf), { recursive: true });
  await thinfsOk(['podman-conf', path.join(work, 'ps'), '--graphroot', path.join(work, 'node/graph'), '--runroot', path.join(work, 'node/run'), '-o', conf]);
  pod = await testPodman(path.join(work, 'node'), { storageConf: conf });
  const list = await pod.podmanOk(['images', '--format', '{{.Repository}} {{.Tag}} {{.Digest}}']);
  assert.match(list, new RegExp(`^127\\.0\\.0\\.1:5000/x/y <none> ${DIGEST}$`, 'm'), list);
  assert.match(list, new RegExp(`^127\\.0\\.0\\.1:5000/x/z <none> ${INDEX}$`, 'm'), list);
  assert.equal((await pod.podmanOk(['images', '-q', '--filter', 'dangling=true'])).trim(), '', 'no dangling image');
  const ref = `127.0.0.1:5000/x/y@${DIGEST}`;
  // (the descriptors here have no registry manifest in the store: the written one's digest is listed too)
  assert.ok((JSON.parse(await pod.podmanOk(['image', 'inspect', '--format', '{{json .RepoDigests}}', ref])) as string[]).includes(ref));
  assert.equal(await pod.podmanOk(['run', '--rm', '--network=none', ref, 'cat', '/a.txt']), 'a\n');
  // The index's digest (what a registry shows for a multi-platform tag) finds the image, as after a pull.
  const byIndex = `127.0.0.1:5000/x/z@${INDEX}`;
  assert.equal(await pod.podmanOk(['run', '--rm', '--network=none', '--pull=never', byIndex, 'cat', '/b.txt']), 'b\n');
  const [z] = JSON.parse(await pod.podmanOk(['image', 'inspect', byIndex])) as Array<{ Digest: string; RepoDigests: string[] }>;
  assert.equal(z.Digest, INDEX);
  assert.ok(z.RepoDigests.includes(byIndex) && z.RepoDigests.includes(`127.0.0.1:5000/x/z@sha256:${'7e'.repeat(32)}`), z.RepoDigests.join(' '));
  // CREATED as a pull records it: the config's time (inspect already said so; the list and its filters now agree)
  assert.match(await pod.podmanOk(['images', '--format', '{{.CreatedAt}}', ref]), /^2024-01-02 03:04:05 \+0000 UTC$/m);
  assert.equal((await pod.podmanOk(['images', '-q', '--filter', 'since=' + ref])).trim(), '', 'nothing created after an image of the same config time');
  const imgs = JSON.parse(await fsp.readFile(path.join(work, 'ps', 'overlay-images/images.json'), 'utf8')) as Array<{ created: string }>;
  assert.deepEqual(imgs.map((i) => i.created), [CREATED, CREATED]);
});

test('an image removed from the thinfs store: its running container goes on, one created from it still starts', async (t) => {
  if (skip || !pod) { t.skip(skip || 'needs the previous test\'s node'); return; }
  const ref = '127.0.0.1:5000/x/z@' + `sha256:${'7e'.repeat(32)}`;
  await pod.podmanOk(['run', '-d', '--name', 'gone-running', '--network=none', ref, 'sleep', '60']);
  await pod.podmanOk(['create', '--name', 'gone-later', '--network=none', ref, 'cat', '/b.txt']);
  await fsp.rm(path.join(store, 'images', 'z%3Av1.json'));
  await waitFor(async () => (await pod!.podman(['image', 'exists', ref])).code !== 0, 20_000, 200, 'the image gone from podman');
  assert.equal(await pod.podmanOk(['exec', 'gone-running', 'cat', '/b.txt']), 'b\n', 'the running container reads its image');
  const later = await pod.podman(['start', '-a', 'gone-later']);
  assert.equal(later.code, 0, later.stderr);
  assert.equal(later.stdout, 'b\n');
  await pod.podmanOk(['rm', '-f', '-t', '0', 'gone-running', 'gone-later']);
  // Its layer directory is kept (marked unused), not listed in layers.json; with keepUnusedMs 0 it goes.
  const top = JSON.parse(await fsp.readFile(path.join(work, 'ps', 'overlay-layers/layers.json'), 'utf8')) as Array<{ id: string }>;
  assert.equal(top.length, 2, 'base and a only');
  const dirs = (await fsp.readdir(path.join(work, 'ps', 'overlay'))).filter((e) => e !== 'l');
  assert.equal(dirs.length, 3, dirs.join(' '));
  const copy = path.join(work, 'ps-copy');
  await runOk('cp', ['-a', path.join(work, 'ps'), copy]);
  await generatePodmanStore({ store: await Store.open(store), mountpoint: path.join(work, 'mnt'), dir: copy, keepUnusedMs: 0 });
  assert.equal((await fsp.readdir(path.join(copy, 'overlay'))).filter((e) => e !== 'l').length, 2);
  assert.equal((await fsp.readdir(path.join(copy, 'overlay', 'l'))).length, 2);
});

test('podman-store --watch: a descriptor replaced under its name (a tag converted again) is followed within a poll, not a minute', async () => {
  const ws = await WritableStore.openDir(store);
  await ws.putImage(descriptor('moving:latest', 'localhost/moving:latest', [hex.base, hex.a]));
  const dir = path.join(work, 'ps-watch');
  const ready = path.join(work, 'ps-watch.ready');
  const watcher = spawn(process.execPath, [THINFS_MAIN, 'podman-store', store, path.join(work, 'mnt'), dir, '--watch', '--interval', '0.3', '--ready-file', ready], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    await waitFor(() => fsp.access(ready).then(() => true, () => false), 20_000, 50, 'podman-store ready');
    const topOf = async () => (JSON.parse(await fsp.readFile(path.join(dir, 'overlay-images/images.json'), 'utf8')) as Array<{ names: string[]; layer: string }>)
      .find((i) => i.names.includes('localhost/moving:latest'))?.layer;
    const before = await topOf();
    assert.ok(before);
    await new Promise((r) => setTimeout(r, 1000)); // a few polls with nothing new
    await ws.putImage(descriptor('moving:latest', 'localhost/moving:latest', [hex.base, hex.b]));
    await waitFor(async () => (await topOf()) !== before, 10_000, 100, 'the replaced image in images.json');
  } finally {
    watcher.kill('SIGTERM');
  }
});

test('podman-store --public-key over a signed store: a descriptor the manifest does not name gets no podman name; --refresh follows new revisions', async () => {
  const signed = path.join(work, 'signed');
  await thinfsOk(['init', signed]);
  await thinfsOk(['keygen', path.join(work, 'key')]);
  const key = path.join(work, 'key', 'thinfs.key');
  const pub = path.join(work, 'key', 'thinfs.pub');
  const env = { THINFS_SIGNING_KEY: key };
  const l = await makeLayer(work, 'signed-base', async (d) => { await fsp.writeFile(path.join(d, 's.txt'), 's\n'); });
  const h = (await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', signed, '--json', '--no-progress'], { env })).diffId.slice(7);
  const put = async (name: string) => {
    process.env.THINFS_SIGNING_KEY = key;
    try { await (await WritableStore.openDir(signed)).putImage(descriptor(name, `localhost/${name}`, [h])); } finally { delete process.env.THINFS_SIGNING_KEY; }
  };
  await put('good:1');
  // A descriptor written into images/ by someone without the key (the manifest does not name it)
  const good = await fsp.readFile(path.join(signed, 'images', 'good%3A1.json'), 'utf8');
  await fsp.writeFile(path.join(signed, 'images', 'rogue%3A1.json'), good.replace(/good:1/g, 'rogue:1'));
  const dir = path.join(work, 'ps-signed');
  const once = JSON.parse(await thinfsOk(['podman-store', signed, path.join(work, 'mnt'), dir, '--json', '--public-key', pub, '--trust-dir', path.join(work, 'trust')])) as { images: Array<{ names: string[] }> };
  assert.deepEqual(once.images.flatMap((i) => i.names), ['localhost/good:1']);
  const ready = path.join(work, 'ps-signed.ready');
  const watcher = spawn(process.execPath, [THINFS_MAIN, 'podman-store', signed, path.join(work, 'mnt'), dir, '--watch', '--interval', '0.3', '--refresh', '0.5',
    '--public-key', pub, '--trust-dir', path.join(work, 'trust'), '--ready-file', ready], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    await waitFor(() => fsp.access(ready).then(() => true, () => false), 20_000, 50, 'podman-store ready');
    // (a writer with the key signs all of images/: the rogue one is out while it publishes, back after)
    await fsp.rm(path.join(signed, 'images', 'rogue%3A1.json'));
    await put('later:1');
    await fsp.writeFile(path.join(signed, 'images', 'rogue%3A1.json'), good.replace(/good:1/g, 'rogue:1'));
    const names = async () => (JSON.parse(await fsp.readFile(path.join(dir, 'overlay-images/images.json'), 'utf8')) as Array<{ names: string[] }>).flatMap((i) => i.names).sort();
    await waitFor(async () => (await names()).includes('localhost/later:1'), 10_000, 100, 'the newly signed image');
    assert.deepEqual(await names(), ['localhost/good:1', 'localhost/later:1']);
  } finally {
    watcher.kill('SIGTERM');
  }
});

test('a layer directory rewritten (the mount moved) is never missing: diff and the l/ link are replaced in place', async () => {
  const dir = path.join(work, 'moving-mount');
  await (await WritableStore.openDir(store)).putImage(descriptor('mv:1', 'localhost/mv:1', [hex.base, hex.a]));
  const st = await Store.open(store);
  const gen = (mp: string) => generatePodmanStore({ store: st, mountpoint: path.join(work, mp), dir });
  await gen('mnt-a');
  const reader = spawn(process.execPath, ['-e', `
    const fs = require('fs'); const dir = process.argv[1]; let reads = 0, bad = 0, first = '';
    const stop = () => { console.log(JSON.stringify({ reads, bad, first })); process.exit(0); };
    process.on('SIGTERM', stop);
    const ids = JSON.parse(fs.readFileSync(dir + '/overlay-layers/layers.json', 'utf8')).map((l) => l.id);
    (function loop() {
      for (let i = 0; i < 200; i++) for (const id of ids) {
        reads++;
        try { fs.readlinkSync(dir + '/overlay/' + id + '/diff'); fs.readlinkSync(dir + '/overlay/l/' + fs.readFileSync(dir + '/overlay/' + id + '/link', 'utf8')); }
        catch (e) { bad++; first ||= id + ' ' + e.message; }
      }
      setImmediate(loop);
    })();`, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  reader.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  const done = new Promise<void>((r) => reader.on('exit', () => r()));
  try {
    for (let i = 0; i < 40; i++) { await gen(i % 2 ? 'mnt-a' : 'mnt-b'); await new Promise((r) => setTimeout(r, 5)); }
  } finally {
    reader.kill('SIGTERM');
    await done;
  }
  const r = JSON.parse(out) as { reads: number; bad: number; first: string };
  assert.ok(r.reads > 1000, `the reader read (${r.reads})`);
  assert.equal(r.bad, 0, `a layer directory or link was missing (${r.bad} of ${r.reads} reads, first: ${r.first})`);
  const id = (JSON.parse(await fsp.readFile(path.join(dir, 'overlay-layers/layers.json'), 'utf8')) as Array<{ id: string }>)[0]!.id;
  assert.match(await fsp.readlink(path.join(dir, 'overlay', id, 'diff')), /\/mnt-a\/layers\//, 'the last pass\'s mount');
  assert.deepEqual((await fsp.readdir(path.join(dir, 'overlay'))).filter((e) => e.startsWith('.')), [], 'no temporary left');
});

test('two descriptors claiming one name (a tag converted again under another store name): podman still lists the store, the newer one has the name', async (t) => {
  const ws = await WritableStore.openDir(store);
  await ws.putImage(descriptor('dup:1', 'localhost/dup:1', [hex.base, hex.a], { created: '2026-01-01T00:00:00.000Z' }));
  await ws.putImage(descriptor('dup:1-again', 'localhost/dup:1', [hex.base, hex.b], { created: '2026-02-01T00:00:00.000Z' }));
  const dir = path.join(work, 'ps-dup');
  await generatePodmanStore({ store: await Store.open(store), mountpoint: path.join(work, 'mnt'), dir });
  const imgs = JSON.parse(await fsp.readFile(path.join(dir, 'overlay-images/images.json'), 'utf8')) as Array<{ names: string[]; layer: string }>;
  const named = imgs.filter((i) => i.names.includes('localhost/dup:1'));
  assert.equal(named.length, 1, 'one image per name');
  // the newer conversion has it: its top layer is the chain of base and b (podman's layer id rule)
  assert.equal(named[0]!.layer, createHash('sha256').update(`${hex.base}+${hex.b}`).digest('hex'));
  const all = imgs.flatMap((i) => i.names);
  assert.equal(new Set(all).size, all.length, 'no name twice');
  if (skip) { t.skip(skip); return; }
  const conf = path.join(work, 'dup.conf');
  await thinfsOk(['podman-conf', dir, '--graphroot', path.join(work, 'dupnode/graph'), '--runroot', path.join(work, 'dupnode/run'), '-o', conf]);
  const p = await testPodman(path.join(work, 'dupnode'), { storageConf: conf });
  try {
    const r = await p.podman(['images', '--format', '{{.Repository}}:{{.Tag}}']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^localhost\/dup:1$/m);
  } finally { await p.cleanup(); }
});
