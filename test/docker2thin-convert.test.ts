// docker2thin against a real registry (Debian's docker-registry on loopback, images pushed by skopeo):
// converted images mounted by `thinfs mount` (a child process) must equal the reference root filesystem
// made by skopeo + umoci; re-conversion downloads nothing (registry access log) and writes no object;
// shared base layers are fetched once; multi-arch selection; concurrent converters fetch each layer once;
// thin image push/pull; OCI layout and docker-archive sources; S3 upload mode.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  REPO_ROOT, run, runOk, thinfs, tmpDir, cleanupTmpDirs, storeSnapshot, treeListing, xattrDump, haveCommand, sha256File,
} from './helpers/proc.js';
import { diffTrees } from './helpers/oracle.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { startS3rver, startPublisher, S3_ENV, AWS, type S3Server, type PublisherProc } from './publisher-fixture.js';
import {
  populateBase, populateDelete, populateReplace, OciLayout, startRegistry, pushLayout, referenceRootfs, pushRaw, plainVariant, MT,
  type Layer, type RegistryServer,
} from './fixtures/images.js';
import { makeLayer } from './helpers/layers.js';
import { encodeImageDirName } from '../src/mount/names.js';

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const AMD64 = { os: 'linux', architecture: 'amd64' };
const ARM64 = { os: 'linux', architecture: 'arm64', variant: 'v8' };

function docker2thin(args: string[], env: Record<string, string> = {}) {
  return run(process.execPath, [D2T, ...args], { env: { THINFS_NO_PROGRESS: '1', ...env }, timeoutMs: 180_000 });
}

async function convertJson(args: string[], env: Record<string, string> = {}): Promise<any> {
  const r = await docker2thin([...args, '--json'], env);
  assert.equal(r.code, 0, `docker2thin ${args.join(' ')} failed (${r.code}):\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

let work: string;
let reg: RegistryServer;
let layout: string;
let L: Record<'base' | 'del' | 'rep' | 'b2' | 'amd' | 'arm', Layer>;
let store: string;
let skip: string | false = false;

async function newStore(name: string): Promise<string> {
  const dir = path.join(work, name);
  const r = await thinfs(['init', dir]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

function delta<T>(after: T[], before: T[]): T[] { return after.slice(before.length); }

before(async () => {
  for (const cmd of ['docker-registry', 'skopeo', 'umoci']) if (!(await haveCommand(cmd))) { skip = `${cmd} not installed (scripts/setup.sh)`; return; }
  work = await tmpDir('thinfs-d2t-');
  const lw = path.join(work, 'layers');
  await fsp.mkdir(lw);
  L = {
    base: await makeLayer(lw, 'base', populateBase, { compression: 'gzip' }),
    del: await makeLayer(lw, 'del', populateDelete, { compression: 'zstd' }),
    rep: await makeLayer(lw, 'rep', populateReplace, { compression: 'none' }),
    b2: await makeLayer(lw, 'b2', async (d) => {
      await fsp.mkdir(path.join(d, 'srv/b'), { recursive: true });
      await fsp.copyFile('/etc/os-release', path.join(d, 'srv/b/os-release'));
      await fsp.writeFile(path.join(d, 'srv/b/only-in-b.txt'), 'image b\n');
    }, { compression: 'gzip' }),
    amd: await makeLayer(lw, 'amd', async (d) => { await fsp.writeFile(path.join(d, 'arch.txt'), 'amd64\n'); }, { compression: 'gzip' }),
    arm: await makeLayer(lw, 'arm', async (d) => { await fsp.writeFile(path.join(d, 'arch.txt'), 'arm64\n'); }, { compression: 'gzip' }),
  };
  layout = path.join(work, 'layout');
  const lay = await new OciLayout(layout).init();
  await lay.tag(await lay.image([L.base, L.del, L.rep], AMD64), 'v1');
  await lay.tag(await lay.image([L.base, L.b2], AMD64, { configExtra: { Cmd: ['image-b'] } }), 'b1');
  const mAmd = await lay.image([L.base, L.amd], AMD64);
  const mArm = await lay.image([L.base, L.arm], ARM64);
  await lay.tag(await lay.index([{ blob: mAmd, platform: AMD64 }, { blob: mArm, platform: ARM64 }]), 'multi');
  reg = await startRegistry(path.join(work, 'registry'));
  await pushLayout(layout, 'v1', reg, 'test/a');
  await pushLayout(layout, 'b1', reg, 'test/b', { format: 'v2s2' });
  await pushLayout(layout, 'multi', reg, 'test/multi', { all: true });
  await pushLayout(layout, 'multi', reg, 'test/multi-docker', { all: true, format: 'v2s2' });
  store = await newStore('store');
});

after(async () => {
  await reg?.stop();
  await cleanupTmpDirs();
});

/** The manifest as the registry serves it, and its digest, read with skopeo (not our client). */
async function registryManifest(ref: string): Promise<{ raw: string; json: any }> {
  const raw = await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/${ref}`]);
  return { raw, json: JSON.parse(raw) };
}

let descA: any;
let descB: any;

test('convert an OCI image (gzip, zstd, plain layers; whiteouts, opaque dir) into the store', async (t) => {
  if (skip) return t.skip(skip);
  const out = path.join(work, 'a.thin.json');
  const before = await reg.gets('test/a');
  const r = await convertJson(['--insecure', '--store', store, '-o', out, `${reg.host}/test/a:v1`]);
  descA = r.descriptor;
  const man = await registryManifest('test/a:v1');
  assert.equal(descA.schemaVersion, 1);
  assert.equal(descA.mediaType, 'application/vnd.thinfs.image.v1+json');
  assert.equal(descA.name, 'a:v1');
  assert.equal(descA.reference, `${reg.host}/test/a:v1`);
  assert.equal(descA.manifestDigest, `sha256:${(await import('node:crypto')).createHash('sha256').update(man.raw).digest('hex')}`);
  assert.equal(descA.manifestMediaType, 'application/vnd.oci.image.manifest.v1+json');
  assert.deepEqual(descA.platform, AMD64);
  assert.equal(descA.configDigest, man.json.config.digest);
  assert.deepEqual(descA.config.config.Entrypoint, ['/bin/sh', '-c']);
  assert.equal(descA.config.config.WorkingDir, '/opt/app');
  assert.equal(descA.config.config.User, '1000:1000');
  assert.ok(descA.config.config.Env.includes('THINFS_TEST=1'));
  assert.deepEqual(descA.layers.map((l: any) => l.diffId), [L.base.diffId, L.del.diffId, L.rep.diffId]);
  assert.deepEqual(descA.layers.map((l: any) => l.digest), man.json.layers.map((l: any) => l.digest));
  assert.deepEqual(descA.layers.map((l: any) => l.size), man.json.layers.map((l: any) => l.size));
  assert.deepEqual(descA.layers.map((l: any) => l.mediaType), man.json.layers.map((l: any) => l.mediaType));
  assert.equal(descA.layers[1].mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
  for (const l of descA.layers) {
    const lm = JSON.parse(await fsp.readFile(path.join(store, l.manifest), 'utf8'));
    assert.equal(lm.diffId, l.diffId);
    assert.equal(lm.blobDigest, l.digest);
    assert.equal(lm.catalog, l.catalog);
  }
  assert.deepEqual(r.layers.map((l: any) => l.action), ['ingested', 'ingested', 'ingested']);
  // every layer blob fetched exactly once, plus the config
  const gets = delta(await reg.gets('test/a'), before);
  assert.deepEqual([...gets].sort(), [...man.json.layers.map((l: any) => l.digest), man.json.config.digest].sort());
  // -o file and the store's images/ entry hold the same descriptor
  const fromFile = JSON.parse(await fsp.readFile(out, 'utf8'));
  const inStore = JSON.parse(await fsp.readFile(path.join(store, 'images', `${encodeURIComponent('a:v1').replace(/\./g, '%2E')}.json`), 'utf8'));
  assert.deepEqual(fromFile, descA);
  assert.deepEqual(inStore, descA);
});

test('converting the same image again downloads no blob and writes no object', async (t) => {
  if (skip || !descA) return t.skip(skip || 'needs the first conversion');
  const snap = await storeSnapshot(store);
  const before = await reg.gets();
  const r = await convertJson(['--insecure', '--store', store, `${reg.host}/test/a:v1`]);
  assert.deepEqual(delta(await reg.gets(), before), [], 'no blob GET on re-conversion (registry access log)');
  assert.deepEqual(r.layers.map((l: any) => l.action), ['present', 'present', 'present']);
  assert.equal(r.configFromStore, true);
  const after = await storeSnapshot(store);
  assert.deepEqual(after.data, snap.data, 'no new object');
  assert.deepEqual(after.layers, snap.layers);
  assert.deepEqual(r.descriptor.layers, descA.layers);
});

test('a second image (Docker schema 2) sharing the base layer downloads only its new layer', async (t) => {
  if (skip || !descA) return t.skip(skip || 'needs the first conversion');
  const man = await registryManifest('test/b:b1');
  assert.equal(man.json.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  assert.equal(man.json.layers[0].mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
  const before = await reg.gets('test/b');
  const r = await convertJson(['--insecure', '--store', store, `${reg.host}/test/b:b1`]);
  descB = r.descriptor;
  const gets = delta(await reg.gets('test/b'), before);
  assert.deepEqual(gets.filter((d) => d !== man.json.config.digest), [man.json.layers[1].digest], 'only the new layer is downloaded');
  assert.deepEqual(r.layers.map((l: any) => l.action), ['present', 'ingested']);
  assert.equal(descB.manifestMediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  assert.deepEqual(descB.config.config.Cmd, ['image-b']);
  assert.deepEqual(descB.layers.map((l: any) => l.diffId), [L.base.diffId, L.b2.diffId]);
});

test('uncompressed layers from a registry are ingested as plain tars', async (t) => {
  if (skip) return t.skip(skip);
  const plain = [await plainVariant(L.base), await plainVariant(L.rep)];
  await pushRaw(reg, 'test/plain', 'v1', plain, AMD64);
  const man = await registryManifest('test/plain:v1');
  assert.deepEqual(man.json.layers.map((l: any) => l.mediaType), [MT.tar, MT.tar]);
  const fresh = await newStore('store-plain');
  const r = await convertJson(['--insecure', '--store', fresh, `${reg.host}/test/plain:v1`]);
  assert.deepEqual(r.layers.map((l: any) => l.action), ['ingested', 'ingested']);
  assert.deepEqual(r.descriptor.layers.map((l: any) => l.digest), [L.base.diffId, L.rep.diffId], 'a plain layer\'s blob digest is its diff id');
  for (const l of r.descriptor.layers) {
    const lm = JSON.parse(await fsp.readFile(path.join(fresh, l.manifest), 'utf8'));
    assert.equal(lm.sizes.blob, lm.sizes.tar);
  }
  // the main store already has both layers (ingested from gzip and plain blobs of other images)
  if (descA) {
    const again = await convertJson(['--insecure', '--store', store, `${reg.host}/test/plain:v1`]);
    assert.deepEqual(again.layers.map((l: any) => l.action), ['present', 'present']);
  }
});

test('foreign (non-distributable) layer: fetched from its URL when the registry does not hold it, verified', async (t) => {
  if (skip) return t.skip(skip);
  let hits = 0;
  let corrupt = false;
  const server = http.createServer(async (req, res) => {
    hits++;
    if (req.url !== `/foreign/${L.b2.digest}`) { res.writeHead(404); res.end(); return; }
    const data = await fsp.readFile(L.b2.file);
    if (corrupt) data[data.length >> 1] ^= 0xff;
    res.writeHead(200, { 'Content-Length': String(data.length) });
    res.end(data);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const freg = await startRegistry(path.join(work, 'registry-foreign'), { allowUrls: '^http://127\\.0\\.0\\.1' });
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/foreign/${L.b2.digest}`;
    const foreign = { ...L.b2, mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', urls: [url] };
    await pushRaw(freg, 'test/foreign', 'v1', [L.base, foreign], AMD64);
    const man = JSON.parse(await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${freg.host}/test/foreign:v1`]));
    assert.deepEqual(man.layers[1].urls, [url]);
    const s1 = await newStore('store-foreign');
    const r = await convertJson(['--insecure', '--store', s1, `${freg.host}/test/foreign:v1`]);
    assert.deepEqual(r.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.b2.diffId]);
    assert.equal(r.descriptor.layers[1].mediaType, 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip');
    assert.equal(hits, 1, 'the foreign layer came from its URL');
    // a corrupted foreign layer is refused like any blob
    corrupt = true;
    const s2 = await newStore('store-foreign-bad');
    const bad = await docker2thin(['--insecure', '--store', s2, `${freg.host}/test/foreign:v1`]);
    assert.equal(bad.code, 5, bad.stderr);
    assert.match(bad.stderr, /digest mismatch/);
    assert.deepEqual((await storeSnapshot(s2)).images, []);
  } finally {
    await freg.stop();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('multi-arch index: default platform is this machine, --platform picks another', async (t) => {
  if (skip) return t.skip(skip);
  if (process.arch !== 'x64') return t.skip('expects an amd64 host for the default-platform check');
  const idx = await registryManifest('test/multi:multi');
  assert.equal(idx.json.manifests.length, 2);
  const amd = await convertJson(['--insecure', '--store', store, `${reg.host}/test/multi:multi`]);
  assert.deepEqual(amd.descriptor.platform, AMD64);
  assert.equal(amd.descriptor.indexDigest, `sha256:${(await import('node:crypto')).createHash('sha256').update(idx.raw).digest('hex')}`);
  assert.equal(amd.descriptor.manifestDigest, idx.json.manifests.find((m: any) => m.platform.architecture === 'amd64').digest);
  assert.deepEqual(amd.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.amd.diffId]);
  const arm = await convertJson(['--insecure', '--store', store, '--platform', 'linux/arm64', '--name', 'multi:arm64', `${reg.host}/test/multi:multi`]);
  assert.deepEqual(arm.descriptor.platform, ARM64);
  assert.equal(arm.descriptor.name, 'multi:arm64');
  assert.deepEqual(arm.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.arm.diffId]);
  assert.deepEqual(arm.layers.map((l: any) => l.action), ['present', 'ingested']);
  // the same index as a Docker manifest list (schema 2)
  const list = await registryManifest('test/multi-docker:multi');
  assert.equal(list.json.mediaType, 'application/vnd.docker.distribution.manifest.list.v2+json');
  const armDocker = await convertJson(['--insecure', '--store', store, '--platform', 'linux/arm64/v8', '--name', 'multi-docker:arm64', `${reg.host}/test/multi-docker:multi`]);
  assert.equal(armDocker.descriptor.manifestMediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  assert.deepEqual(armDocker.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.arm.diffId]);
  // and straight from the OCI layout (index.json -> index -> manifest)
  const armOci = await convertJson(['--store', store, '--platform', 'linux/arm64', '--name', 'multi-oci:arm64', `oci:${layout}:multi`]);
  assert.deepEqual(armOci.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.arm.diffId]);
  assert.deepEqual(armOci.layers.map((l: any) => l.action), ['present', 'present']);
  const none = await docker2thin(['--insecure', '--store', store, '--platform', 'linux/s390x', `${reg.host}/test/multi:multi`]);
  assert.equal(none.code, 4, none.stderr);
  assert.match(none.stderr, /no image for platform linux\/s390x \(available: linux\/amd64, linux\/arm64\/v8\)/);
});

test('mounted images/<name>/rootfs equal skopeo + umoci reference root filesystems', async (t) => {
  if (skip || !descA || !descB) return t.skip(skip || 'needs the conversions');
  const refs: Array<[string, string]> = [
    ['a:v1', await referenceRootfs(reg, 'test/a', 'v1', work)],
    ['b:b1', await referenceRootfs(reg, 'test/b', 'b1', work)],
    ['multi:multi', await referenceRootfs(reg, 'test/multi', 'multi', work, AMD64)],
  ];
  const armLayout = path.join(work, 'ref-arm');
  await runOk('skopeo', ['copy', '--quiet', '--src-tls-verify=false', '--override-arch', 'arm64', '--override-variant', 'v8', `docker://${reg.host}/test/multi:multi`, `oci:${armLayout}:multi`]);
  await runOk('umoci', ['raw', 'unpack', '--image', `${armLayout}:multi`, path.join(work, 'rootfs-arm')]);
  refs.push(['multi:arm64', path.join(work, 'rootfs-arm')]);

  const mp = path.join(work, 'mnt');
  await fsp.mkdir(mp);
  let m: Mounted | null = null;
  try {
    m = await mountStore(store, mp, { cacheDir: path.join(work, 'cache') });
    for (const [name, ref] of refs) {
      const mounted = path.join(mp, 'images', encodeImageDirName(name), 'rootfs');
      const want = await treeListing(ref);
      const got = await treeListing(mounted);
      assert.ok(want.length > 5, `reference ${name} has content`);
      assert.deepEqual(diffTrees(want, got), [], `${name}: mounted rootfs differs from umoci's`);
      assert.equal(await xattrDump(mounted), await xattrDump(ref), `${name}: xattrs`);
    }
    // the layer semantics the fixture exercises, spelled out
    const a = path.join(mp, 'images', encodeImageDirName('a:v1'), 'rootfs');
    await assert.rejects(fsp.lstat(path.join(a, 'opt/app/remove-me.txt')), { code: 'ENOENT' });
    await assert.rejects(fsp.lstat(path.join(a, 'opt/app/old')), { code: 'ENOENT' });
    assert.deepEqual((await fsp.readdir(path.join(a, 'var/lib/data'))).sort(), ['fresh.txt']);
    assert.equal(await fsp.readFile(path.join(a, 'opt/app/conf/app.conf'), 'utf8'), 'setting=2\nreplaced=yes\n');
    assert.equal(await fsp.readlink(path.join(a, 'opt/app/conf/linkme.txt')), 'app.conf');
    assert.equal(await fsp.readFile(path.join(mp, 'images', encodeImageDirName('multi:arm64'), 'rootfs', 'arch.txt'), 'utf8'), 'arm64\n');
  } finally {
    if (m) assert.equal(await m.stop(), 0, m.stderr());
    await forceUnmount(mp);
  }
});

test('two converters sharing one store fetch every layer exactly once (per-layer lock)', async (t) => {
  if (skip || !descA) return t.skip(skip || 'needs the first conversion');
  const shared = await newStore('store-concurrent');
  const before = await reg.gets('test/a');
  const spawnOne = () => new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const c = spawn(process.execPath, [D2T, '--insecure', '--store', shared, '--json', `${reg.host}/test/a:v1`], { env: { ...process.env, THINFS_NO_PROGRESS: '1' } });
    let out = '', err = '';
    c.stdout.on('data', (b) => { out += b; });
    c.stderr.on('data', (b) => { err += b; });
    c.on('close', (code) => resolve({ code, out, err }));
  });
  const [r1, r2] = await Promise.all([spawnOne(), spawnOne()]);
  assert.equal(r1.code, 0, r1.err);
  assert.equal(r2.code, 0, r2.err);
  const gets = delta(await reg.gets('test/a'), before);
  for (const l of descA.layers) assert.equal(gets.filter((d) => d === l.digest).length, 1, `layer ${l.digest} fetched once, not ${gets.filter((d) => d === l.digest).length} times`);
  const actions = [...JSON.parse(r1.out).layers, ...JSON.parse(r2.out).layers].map((l: any) => l.action);
  assert.equal(actions.filter((a) => a === 'ingested').length, 3, `actions: ${actions}`);
  assert.equal((await storeSnapshot(shared)).layers.length, 3);
});

test('--push uploads a thin image (chunked) and pull-thin reads it back, verified', async (t) => {
  if (skip || !descA) return t.skip(skip || 'needs the first conversion');
  const r = await convertJson(['--insecure', '--store', store, '--push', '--push-chunk-size', '1000', `${reg.host}/test/a:v1`]);
  assert.equal(r.pushed.reference, `${reg.host}/test/a:v1-thin`);
  // skopeo, not our client, sees a one-layer OCI image marked thin
  const man = await registryManifest('test/a:v1-thin');
  assert.equal(man.json.annotations['org.thinfs.thin'], 'true');
  assert.equal(man.json.layers.length, 1);
  assert.ok(man.json.layers[0].size > 1000, 'layer large enough to need several PATCH chunks');
  const inspect = JSON.parse(await runOk('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/test/a:v1-thin`]));
  assert.equal(inspect.Digest, r.pushed.digest);
  assert.equal(inspect.Architecture, 'amd64');
  // extract thin.json with GNU tar from the blob skopeo copied
  const lay = path.join(work, 'thin-layout');
  await runOk('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/test/a:v1-thin`, `oci:${lay}:t`]);
  // skopeo may have recompressed the layer on the way: find it through the layout's own manifest
  const li = JSON.parse(await fsp.readFile(path.join(lay, 'index.json'), 'utf8'));
  const lm = JSON.parse(await fsp.readFile(path.join(lay, 'blobs', 'sha256', li.manifests[0].digest.slice(7)), 'utf8'));
  assert.equal(lm.layers.length, 1);
  const thinJson = await runOk('tar', ['-xOf', path.join(lay, 'blobs', 'sha256', lm.layers[0].digest.slice(7)), 'thin.json']);
  assert.deepEqual(JSON.parse(thinJson), r.descriptor);

  const other = await newStore('store-pulled');
  const p = await thinfs(['pull-thin', '--insecure', '--store', other, '--json', `${reg.host}/test/a:v1`]);
  assert.equal(p.code, 0, p.stderr);
  const pulled = JSON.parse(p.stdout);
  assert.equal(pulled.reference, `${reg.host}/test/a:v1-thin`);
  assert.deepEqual(pulled.descriptor, r.descriptor);
  assert.deepEqual(JSON.parse(await fsp.readFile(path.join(other, 'images', 'a%3Av1.json'), 'utf8')), r.descriptor);
  const notThin = await thinfs(['pull-thin', '--insecure', `${reg.host}/test/a@${descA.manifestDigest}`]);
  assert.equal(notThin.code, 3, notThin.stderr);
  assert.match(notThin.stderr, /is not a thin image/);
});

test('OCI layout and docker-archive sources: same layers, dedup across sources', async (t) => {
  if (skip) return t.skip(skip);
  const s1 = await newStore('store-oci');
  const o = await convertJson(['--store', s1, `oci:${layout}:v1`]);
  assert.deepEqual(o.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.del.diffId, L.rep.diffId]);
  assert.deepEqual(o.descriptor.layers.map((l: any) => l.digest), [L.base.digest, L.del.digest, L.rep.digest]);
  assert.deepEqual(o.descriptor.layers.map((l: any) => l.mediaType), [L.base.mediaType, L.del.mediaType, L.rep.mediaType]);
  assert.equal(o.descriptor.name, 'layout:v1');
  // docker archives cannot hold zstd layers: image b (gzip layers, stored uncompressed by skopeo in the archive)
  const archive = path.join(work, 'b.docker.tar');
  await runOk('skopeo', ['copy', '--quiet', `oci:${layout}:b1`, `docker-archive:${archive}:test/b:b1`]);
  const s2 = await newStore('store-archive');
  const d = await convertJson(['--store', s2, `docker-archive:${archive}`]);
  assert.deepEqual(d.descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.b2.diffId]);
  assert.equal(d.descriptor.name, 'b:b1');
  assert.deepEqual(d.descriptor.config.config.Cmd, ['image-b']);
  assert.deepEqual(d.layers.map((l: any) => l.action), ['ingested', 'ingested']);
  // and into the first store, where every layer already is: nothing to do
  const again = await convertJson(['--store', store, `docker-archive:${archive}`]);
  assert.deepEqual(again.layers.map((l: any) => l.action), ['present', 'present']);
});

test('S3 mode uploads verified layer blobs once; the publisher ingests them', async (t) => {
  if (skip || !descA) return t.skip(skip || 'needs the first conversion');
  if (!(await haveCommand(AWS))) return t.skip('aws CLI not installed');
  let s3: S3Server | null = null;
  let pub: PublisherProc | null = null;
  try {
    s3 = await startS3rver(path.join(work, 's3'), 'thin-layers');
    const args = ['--insecure', '--s3-endpoint', s3.endpoint, '--bucket', 'thin-layers', '--s3-prefix', 'incoming/', `${reg.host}/test/a:v1`];
    const r = await convertJson(args, S3_ENV);
    assert.deepEqual(r.layers.map((l: any) => l.action), ['uploaded', 'uploaded', 'uploaded']);
    // the real aws CLI downloads what we uploaded: each object is the verified blob
    const dl = path.join(work, 's3-download');
    await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3', 'cp', '--recursive', '--only-show-errors', 's3://thin-layers/incoming/', dl], { env: S3_ENV, timeoutMs: 120_000 });
    assert.equal((await fsp.readdir(dl)).length, 3);
    for (const l of r.descriptor.layers) {
      assert.equal(l.upload.bucket, 'thin-layers');
      const ext = l.mediaType.endsWith('zstd') ? '.tar.zst' : l.mediaType.endsWith('gzip') ? '.tar.gz' : '.tar';
      assert.equal(l.upload.key, `incoming/${l.diffId.slice(7)}${ext}`);
      assert.equal(`sha256:${await sha256File(path.join(dl, l.upload.key.slice('incoming/'.length)))}`, l.digest, 'uploaded object is the verified blob');
    }
    const k0 = r.descriptor.layers[0].upload.key;
    const head = JSON.parse(await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3api', 'head-object', '--bucket', 'thin-layers', '--key', k0], { env: S3_ENV }));
    assert.equal(head.Metadata['thinfs-diff-id'], r.descriptor.layers[0].diffId);
    const before = await reg.gets('test/a');
    const again = await convertJson(args, S3_ENV);
    assert.deepEqual(again.layers.map((l: any) => l.action), ['uploaded-before', 'uploaded-before', 'uploaded-before']);
    assert.deepEqual(delta(await reg.gets('test/a'), before).filter((d) => d !== descA.configDigest), []);
    // the publisher (a real `thinfs publisher`, reconcile loop only) ingests the uploads into its store
    const pubStore = path.join(work, 'store-published');
    pub = await startPublisher(['--store', pubStore, '--init', '--s3-endpoint', s3.endpoint, '--bucket', 'thin-layers', '--prefix', 'incoming/',
      '--no-webhook', '--reconcile-interval', '1', '--state', path.join(work, 'pub-state')], path.join(work, 'publisher.log'));
    // docker2thin --wait: polls the publisher's store, then stores the descriptor there (catalogs named)
    const waited = await convertJson([...args, '--published-store', pubStore, '--wait', '120', '--name', 'a-from-s3:v1'], S3_ENV);
    // (the publisher may already have published some layers when docker2thin looks)
    for (const l of waited.layers) assert.ok(['uploaded-before', 'present'].includes(l.action), l.action);
    for (const l of waited.descriptor.layers) {
      const lm = JSON.parse(await fsp.readFile(path.join(pubStore, l.manifest), 'utf8'));
      assert.equal(lm.diffId, l.diffId);
      assert.equal(lm.blobDigest, l.digest);
      assert.equal(l.catalog, lm.catalog);
    }
    assert.deepEqual(JSON.parse(await fsp.readFile(path.join(pubStore, 'images', 'a-from-s3%3Av1.json'), 'utf8')), waited.descriptor);
    // with the publisher's store known, published layers are not even looked up in S3
    const viaStore = await convertJson([...args, '--published-store', pubStore], S3_ENV);
    assert.deepEqual(viaStore.layers.map((l: any) => l.action), ['present', 'present', 'present']);
    // before publication the descriptor cannot name catalogs; once published it does
    assert.deepEqual(r.descriptor.layers.map((l: any) => l.catalog), ['', '', '']);
    for (const l of viaStore.descriptor.layers) {
      assert.equal(l.catalog, JSON.parse(await fsp.readFile(path.join(pubStore, l.manifest), 'utf8')).catalog);
    }
  } finally {
    if (pub) assert.equal(await pub.stop(), 0);
    await s3?.stop();
  }
});
