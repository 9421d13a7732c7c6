// Many nodes, one store (issue 15; the Wharf paper's layer locks): 8 docker2thin processes convert 3 images that
// share base layers into one store at the same time. The registry's own access log must show each blob (layers
// and configs) fetched exactly once; each layer is ingested by exactly one process while different layers are
// held (fetched and ingested) at the same time; every image then mounts and its merged rootfs equals umoci's
// unpack of the same image. The same again on a real NFS mount over loopback when the kernel has NFS (else
// skipped with the exact error: native-notes/nfs.md). And a converter SIGKILLed while it holds a layer's lock
// mid-download: another one takes the layer over once the lock is stale, publishes it once, and the layer
// exports back equal to its tar.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as http from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { REPO_ROOT, runOk, thinfsOk, tmpDir, cleanupTmpDirs, storeSnapshot, treeListing, xattrDump, haveCommand, waitFor } from './helpers/proc.js';
import { diffTrees, compareTars } from './helpers/oracle.js';
import { nfsLoopback } from './helpers/nfs.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import {
  populateBase, populateDelete, populateReplace, OciLayout, startRegistry, pushLayout, referenceRootfs,
  type Layer, type RegistryServer,
} from './fixtures/images.js';
import { encodeImageDirName } from '../src/mount/names.js';

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const AMD64 = { os: 'linux', architecture: 'amd64' };
const CONVERTERS = 8;

let work: string;
let reg: RegistryServer;
let skip: string | false = false;
let L: Record<'base' | 'mid' | 'a' | 'b' | 'c' | 'big', Layer>;
/** repo -> its layers, bottom first. */
const IMAGES: Record<string, Array<keyof typeof L>> = { 'many/a': ['base', 'mid', 'a'], 'many/b': ['base', 'mid', 'b'], 'many/c': ['base', 'c'] };
const configs = new Map<string, string>();

/** A few MiB of incompressible data, so a layer's fetch + ingest lasts long enough to overlap with others. */
async function bulk(dir: string, name: string, mib: number): Promise<void> {
  await fsp.mkdir(path.join(dir, 'srv', name), { recursive: true });
  for (let i = 0; i < mib; i++) await fsp.writeFile(path.join(dir, 'srv', name, `part-${i}.bin`), pseudoRandom(1 << 20, `${name}-${i}`));
}

before(async () => {
  for (const cmd of ['docker-registry', 'skopeo', 'umoci']) if (!(await haveCommand(cmd))) { skip = `${cmd} not installed (scripts/setup.sh)`; return; }
  work = await tmpDir('thinfs-many-');
  const lw = path.join(work, 'layers');
  await fsp.mkdir(lw);
  L = {
    base: await makeLayer(lw, 'base', async (d) => { await populateBase(d); await bulk(d, 'base', 12); }, { compression: 'gzip' }),
    mid: await makeLayer(lw, 'mid', async (d) => { await populateDelete(d); await bulk(d, 'mid', 8); }, { compression: 'zstd' }),
    a: await makeLayer(lw, 'a', async (d) => { await populateReplace(d); await bulk(d, 'a', 6); }, { compression: 'gzip' }),
    b: await makeLayer(lw, 'b', async (d) => { await bulk(d, 'b', 6); await fsp.writeFile(path.join(d, 'srv/only-b.txt'), 'b\n'); }, { compression: 'gzip' }),
    c: await makeLayer(lw, 'c', async (d) => { await populateDelete(d); await bulk(d, 'c', 6); }, { compression: 'zstd' }),
    big: await makeLayer(lw, 'big', async (d) => { await bulk(d, 'big', 24); }, { compression: 'gzip' }),
  };
  const layout = path.join(work, 'layout');
  const lay = await new OciLayout(layout).init();
  for (const [repo, names] of Object.entries(IMAGES)) {
    const img = await lay.image(names.map((n) => L[n]), AMD64, { configExtra: { Cmd: [repo] } });
    configs.set(repo, img.config.digest);
    await lay.tag(img, repo.split('/')[1]!);
  }
  await lay.tag(await lay.image([L.big], AMD64), 'big');
  reg = await startRegistry(path.join(work, 'registry'));
  for (const repo of Object.keys(IMAGES)) await pushLayout(layout, repo.split('/')[1]!, reg, repo);
  await pushLayout(layout, 'big', reg, 'many/big');
});

after(async () => {
  await reg?.stop();
  await cleanupTmpDirs();
});

interface Converter { child: ChildProcess; done: Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> }

function converter(args: string[]): Converter {
  const child = spawn(process.execPath, [D2T, '--insecure', '--json', ...args], { env: { ...process.env, THINFS_NO_PROGRESS: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  child.stdout!.on('data', (b) => { out += b; });
  child.stderr!.on('data', (b) => { err += b; });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }>((res) => child.on('close', (code, signal) => res({ code, signal, out, err })));
  return { child, done };
}

/** The layer locks held right now (proper-lockfile lock directories under locks/). */
async function heldFetchLocks(store: string): Promise<string[]> {
  return (await fsp.readdir(path.join(store, 'locks')).catch(() => [] as string[])).filter((n) => n.startsWith('fetch-') && n.endsWith('.lock'));
}

/** 8 converters at once on `store`; every check of acceptance 2. */
async function eightConverters(store: string, mountWork: string): Promise<void> {
  const repos = Object.keys(IMAGES);
  const before = await reg.gets();
  // Sample the held layer locks while the converters run: different layers must be held at the same time.
  let maxHeld = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      maxHeld = Math.max(maxHeld, (await heldFetchLocks(store)).length);
      await new Promise((r) => setTimeout(r, 15));
    }
  })();
  const procs = Array.from({ length: CONVERTERS }, (_, i) => converter(['--store', store, `${reg.host}/${repos[i % repos.length]}:${repos[i % repos.length]!.split('/')[1]}`]));
  const results = await Promise.all(procs.map((p) => p.done));
  sampling = false;
  await sampler;
  results.forEach((r, i) => assert.equal(r.code, 0, `converter ${i} failed:\n${r.err}`));

  // Each blob, layer or config, was fetched from the registry exactly once by the 8 of them.
  const gets = (await reg.gets()).slice(before.length);
  const layerDigests = [...new Set(Object.values(IMAGES).flat())].map((n) => L[n].digest);
  const expected = [...layerDigests, ...configs.values()].sort();
  assert.deepEqual([...gets].sort(), expected, 'registry access log: every blob GET exactly once, nothing else');

  // Each layer ingested by exactly one converter; the others found it present or waited for it.
  const actions = new Map<string, string[]>();
  for (const r of results) for (const l of JSON.parse(r.out).layers) actions.set(l.diffId, [...(actions.get(l.diffId) ?? []), l.action]);
  for (const n of new Set(Object.values(IMAGES).flat())) {
    const a = actions.get(L[n].diffId) ?? [];
    assert.equal(a.filter((x) => x === 'ingested').length, 1, `layer ${n}: ${a.join(', ')}`);
    assert.ok(a.every((x) => ['ingested', 'waited', 'present'].includes(x)), `layer ${n}: ${a.join(', ')}`);
  }
  assert.ok(maxHeld >= 2, `different layers were fetched at the same time (at most ${maxHeld} layer lock(s) held at once)`);
  const snap = await storeSnapshot(store);
  assert.equal(snap.layers.length, layerDigests.length);
  assert.deepEqual((await fsp.readdir(path.join(store, 'txn'))).filter((n) => !n.startsWith('.')), [], 'no staging left');
  assert.deepEqual(await heldFetchLocks(store), [], 'every lock released');

  // Every image mounts; its merged rootfs equals umoci's unpack of the same image.
  const mp = path.join(mountWork, 'mnt');
  await fsp.mkdir(mp, { recursive: true });
  let m: Mounted | null = null;
  try {
    m = await mountStore(store, mp, { cacheDir: path.join(mountWork, 'cache') });
    for (const repo of repos) {
      const tag = repo.split('/')[1]!;
      const ref = await referenceRootfs(reg, repo, tag, mountWork);
      const mounted = path.join(mp, 'images', encodeImageDirName(`${tag}:${tag}`), 'rootfs');
      const want = await treeListing(ref, { hash: true });
      assert.ok(want.length > 10, `reference ${repo} has content`);
      assert.deepEqual(diffTrees(want, await treeListing(mounted, { hash: true })), [], `${repo}: mounted rootfs differs from umoci's unpack`);
      assert.equal(await xattrDump(mounted), await xattrDump(ref), `${repo}: xattrs`);
    }
  } finally {
    if (m) assert.equal(await m.stop(), 0, m.stderr());
    await forceUnmount(mp);
  }
}

test(`${CONVERTERS} converters, 3 images sharing base layers, one store: each blob fetched once, images equal umoci's`, async (t) => {
  if (skip) return t.skip(skip);
  const store = path.join(work, 'store-local');
  await thinfsOk(['init', store]);
  await eightConverters(store, path.join(work, 'local'));
});

test(`the same on a real NFS mount over loopback`, async (t) => {
  if (skip) return t.skip(skip);
  const exported = path.join(work, 'nfs-export');
  const mnt = path.join(work, 'nfs-mnt');
  await fsp.mkdir(exported);
  await fsp.mkdir(mnt);
  const nfs = await nfsLoopback(exported, mnt);
  if ('skip' in nfs) return t.skip(nfs.skip);
  try {
    const store = path.join(nfs.mount.dir, 'store');
    await thinfsOk(['init', store]);
    await eightConverters(store, path.join(work, 'nfs-local'));
    // What the converters wrote through NFS is what the server holds.
    assert.deepEqual(await storeSnapshot(path.join(exported, 'store')), await storeSnapshot(store));
  } finally {
    await nfs.mount.stop();
  }
});

/** A loopback HTTP proxy to the registry that sends blob bodies at `bytesPerSec`, so a download can be caught half-way. */
async function slowProxy(target: RegistryServer, bytesPerSec: number): Promise<{ host: string; stop(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const up = http.request({ host: '127.0.0.1', port: target.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode!, ur.headers);
      if (!/\/blobs\/sha256:/.test(req.url ?? '') || req.method !== 'GET') { ur.pipe(res); return; }
      const tick = 50;
      const per = Math.max(1, Math.floor(bytesPerSec * tick / 1000));
      let pending = Buffer.alloc(0);
      let ended = false;
      ur.on('data', (c: Buffer) => { pending = Buffer.concat([pending, c]); if (pending.length > per * 8) ur.pause(); });
      ur.on('end', () => { ended = true; });
      const timer = setInterval(() => {
        if (res.destroyed) { clearInterval(timer); ur.destroy(); return; }
        const out = pending.subarray(0, per);
        pending = pending.subarray(out.length);
        if (out.length) res.write(out);
        if (pending.length <= per * 8) ur.resume();
        if (ended && pending.length === 0) { clearInterval(timer); res.end(); }
      }, tick);
    });
    up.on('error', () => { res.destroy(); });
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    host: `127.0.0.1:${(server.address() as { port: number }).port}`,
    stop: async () => { server.closeAllConnections(); await new Promise((r) => server.close(r)); },
  };
}

test('a converter SIGKILLed holding a layer lock: taken over once the lock is stale, published once, exports equal to its tar', async (t) => {
  if (skip) return t.skip(skip);
  const store = path.join(work, 'store-kill');
  await thinfsOk(['init', store]);
  const proxy = await slowProxy(reg, 2 << 20);
  try {
    const hex = L.big.diffId.slice(7);
    const holder = converter(['--store', store, `${proxy.host}/many/big:big`]);
    // It holds the layer's lock and has started staging the ingest (a transaction directory exists).
    await waitFor(async () => (await heldFetchLocks(store)).includes(`fetch-${hex}.lock`) && (await fsp.readdir(path.join(store, 'txn'))).length > 0, 60_000, 50, 'the holder to lock and start ingesting');
    await new Promise((r) => setTimeout(r, 1000));
    holder.child.kill('SIGKILL');
    const killed = await holder.done;
    assert.equal(killed.signal, 'SIGKILL');
    assert.deepEqual((await storeSnapshot(store)).layers, [], 'killed before publishing');
    const killedAt = Date.now();
    // Two more converters at once (straight to the registry): one takes the stale lock over, the other waits for it.
    const [r1, r2] = await Promise.all([converter(['--store', store, `${reg.host}/many/big:big`]).done, converter(['--store', store, `${reg.host}/many/big:big`]).done]);
    assert.equal(r1.code, 0, r1.err);
    assert.equal(r2.code, 0, r2.err);
    const waitedMs = Date.now() - killedAt;
    assert.ok(waitedMs >= 15_000, `the dead holder's lock was respected until stale (took over after ${waitedMs} ms)`);
    const actions = [JSON.parse(r1.out).layers[0].action, JSON.parse(r2.out).layers[0].action].sort();
    assert.deepEqual(actions, ['ingested', 'waited'], 'one converter ingested the layer, the other found it published');
    const snap = await storeSnapshot(store);
    assert.deepEqual(snap.layers, [`${hex}.json`]);
    // The killed holder's staging is all that is left of it; gc removes it (its process is dead).
    await thinfsOk(['gc', '--store', store, '--grace', '0']);
    assert.deepEqual(await fsp.readdir(path.join(store, 'txn')), []);
    const exported = path.join(work, 'big-export.tar');
    await thinfsOk(['export', '--store', store, L.big.diffId, '-o', exported]);
    const cmp = await compareTars(L.big.file.replace(/\.gz$/, ''), exported, await tmpDir('thinfs-many-cmp-'));
    assert.deepEqual(cmp.tree, [], 'exported layer equals its tar');
  } finally {
    await proxy.stop();
  }
});
