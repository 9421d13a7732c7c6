// A hostile mirror (test/helpers/hostile-server.ts) in front of a real store, read through a real mount:
// every read gets correct bytes from the next mirror or EIO within a bounded time, memory stays bounded,
// other files stay readable meanwhile, and a layer manifest served under another layer's name is refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from './helpers/web.js';
import { tmpDir, cleanupTmpDirs, runOk, thinfs, thinfsJson, thinfsOk, sha256 } from './helpers/proc.js';
import { startHostileServer, type HostileMode, type HostileServer } from './helpers/hostile-server.js';
import { pseudoRandom } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';

const MODES: HostileMode[] = ['wrong', '500', 'hang', 'endless', 'oversized', 'trickle'];
/** Short deadlines so a test takes seconds; the bound asserted below follows from them. */
const HTTP_FLAGS = ['--http-timeout', '6', '--headers-timeout', '2', '--low-speed-time', '2', '--low-speed-limit', '1024', '--http-retries', '1', '--host-reset', '0.05'];
const BOUND_MS = 15_000;

let dir = '';
let store = '';
let layerA = '';
let layerB = '';
const content = new Map<string, Buffer>();
let hostile: HostileServer;
let healthy: HostileServer;
const mounts: Mounted[] = [];

function objectRel(data: Buffer): string {
  const h = sha256(data); // files below the chunk minimum are one object named by their content
  return `data/${h.slice(0, 2)}/${h.slice(2)}`;
}

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  for (const [name, prefix] of [['a', 'A'], ['b', 'B']] as const) {
    const src = join(dir, `src-${name}`);
    await mkdir(src);
    const files = name === 'a' ? [...MODES.map((m) => `miss-${m}`), ...MODES.map((m) => `over-${m}`), 'other', 'other2'] : ['only-in-b'];
    for (const f of files) {
      const data = pseudoRandom(200_000, `${prefix}/${f}`);
      content.set(`${name}/${f}`, data);
      await writeFile(join(src, f), data);
    }
    await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, `${name}.tar`), '.']);
    const id = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, `${name}.tar`), '--store', store, '--json'])).diffId;
    if (name === 'a') layerA = id.slice(7); else layerB = id.slice(7);
  }
  hostile = await startHostileServer(store);
  healthy = await startHostileServer(store);
});

after(async () => {
  for (const m of mounts) { if (process.env.DEBUG_MOUNT) console.error(m.stderr()); await m.stop().catch(() => null); await forceUnmount(m.mp); }
  await hostile?.close();
  await healthy?.close();
  await cleanupTmpDirs();
});

async function vmHwmKb(pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(s)![1]);
}

async function timed<T>(p: Promise<T>): Promise<{ ms: number; value?: T; err?: NodeJS.ErrnoException }> {
  const t0 = Date.now();
  try { const value = await p; return { ms: Date.now() - t0, value }; } catch (e) { return { ms: Date.now() - t0, err: e as NodeJS.ErrnoException }; }
}

test('a layer manifest served under another layer\'s name is refused; the next mirror gives the right one', async () => {
  hostile.mode = 'swap';
  hostile.match = (rel) => rel === `layers/${layerA}.json`;
  hostile.swapWith = () => `layers/${layerB}.json`;
  try {
    const r = await thinfs(['ls', '--store', hostile.url, layerA, '/']);
    assert.notEqual(r.code, 0, `listing must fail, got: ${r.stdout}`);
    assert.match(r.stderr, /names layer sha256:/);
    assert.doesNotMatch(r.stdout, /only-in-b/);
    const ok = await thinfsOk(['ls', '--store', `${hostile.url},${healthy.url}`, layerA, '/']);
    assert.match(ok, /other2/);
    assert.doesNotMatch(ok, /only-in-b/);
  } finally { hostile.mode = 'ok'; }
});

test('hostile first mirror: every read fails over to the healthy mirror, with correct bytes and bounded memory', async () => {
  const m = await mountStore(`${hostile.url},${healthy.url}`, join(dir, 'mnt-two'), { cacheDir: join(dir, 'cache-two'), extra: HTTP_FLAGS });
  mounts.push(m);
  const root = join(m.mp, 'layers', layerA);
  for (const mode of MODES) {
    const want = content.get(`a/over-${mode}`)!;
    hostile.mode = mode;
    hostile.match = (rel) => rel === objectRel(want);
    await new Promise((r) => setTimeout(r, 200)); // past the failed mirror's backoff (--host-reset 0.05): it is asked first again
    const before = hostile.hostile.length;
    const r = await timed(readFile(join(root, `over-${mode}`)));
    hostile.mode = 'ok';
    assert.ok(!r.err, `${mode}: read failed: ${r.err?.message}`);
    assert.equal(sha256(r.value!), sha256(want), `${mode}: wrong bytes`);
    assert.ok(hostile.hostile.length > before, `${mode}: the hostile mirror was asked first`);
    assert.ok(r.ms < BOUND_MS, `${mode}: took ${r.ms} ms`);
  }
  const hwm = await vmHwmKb(m.child.pid!);
  assert.ok(hwm < 400 * 1024, `daemon peak memory ${hwm} kB`);
});

test('hostile only mirror: EIO within a bounded time, memory bounded, other files and listings stay responsive', async () => {
  const m = await mountStore(hostile.url, join(dir, 'mnt-one'), { cacheDir: join(dir, 'cache-one'), extra: HTTP_FLAGS });
  mounts.push(m);
  const root = join(m.mp, 'layers', layerA);
  assert.ok((await readdir(root)).includes('other'));
  for (const mode of MODES) {
    const bad = content.get(`a/miss-${mode}`)!;
    hostile.mode = mode;
    hostile.match = (rel) => rel === objectRel(bad);
    const pending = timed(readFile(join(root, `miss-${mode}`)));
    if (mode === 'hang' || mode === 'trickle') {
      // While that read hangs: another file and a listing answer at once.
      const other = mode === 'hang' ? 'other' : 'other2';
      const o = await timed(readFile(join(root, other)));
      assert.ok(!o.err, `${mode}: other file failed: ${o.err?.message}`);
      assert.equal(sha256(o.value!), sha256(content.get(`a/${other}`)!));
      assert.ok(o.ms < 3000, `${mode}: another file took ${o.ms} ms while a read hung`);
      const l = await timed(readdir(root));
      assert.ok(l.ms < 3000 && l.value?.includes(`miss-${mode}`), `${mode}: listing took ${l.ms} ms`);
    }
    const r = await pending;
    hostile.mode = 'ok';
    assert.equal(r.err?.code, 'EIO', `${mode}: expected EIO, got ${r.err?.code ?? 'bytes'}`);
    assert.ok(r.ms < BOUND_MS, `${mode}: EIO took ${r.ms} ms (bound ${BOUND_MS})`);
  }
  const hwm = await vmHwmKb(m.child.pid!);
  assert.ok(hwm < 400 * 1024, `daemon peak memory ${hwm} kB`);
  // A layer name answered with another layer's manifest shows nothing of that other layer.
  hostile.mode = 'swap';
  hostile.match = (rel) => rel === `layers/${layerB}.json`;
  hostile.swapWith = () => `layers/${layerA}.json`;
  try {
    const r = await timed(readdir(join(m.mp, 'layers', layerB)));
    assert.ok(r.err, `layer ${layerB} must not show layer A's files: ${r.value?.join(',')}`);
  } finally { hostile.mode = 'ok'; }
});

test('ordered proxies: a dead proxy moves on to the next; a failed preferred mirror is asked again after --host-reset', async () => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  // The hostile server answers absolute-form proxy requests too: here it is a healthy forward proxy.
  const proxy = await startHostileServer(store);
  try {
    const seen = proxy.requests.length;
    const out = await thinfsOk(['ls', '--store', healthy.url, '--proxy', `${dead},${proxy.url}`, layerA, '/']);
    assert.match(out, /other2/);
    assert.ok(proxy.requests.length > seen, 'the second proxy carried the requests');
  } finally { await proxy.close(); }

  // Preferred mirror failing (500 on everything): reads go to the second; once it recovers and the reset time has
  // passed, the preferred one gets the requests again.
  const m = await mountStore(`${hostile.url},${healthy.url}`, join(dir, 'mnt-reset'), { cacheDir: join(dir, 'cache-reset'), extra: [...HTTP_FLAGS.filter((_, i, a) => a[i] !== '--host-reset' && a[i - 1] !== '--host-reset'), '--host-reset', '2'] });
  mounts.push(m);
  try {
    hostile.mode = '500';
    hostile.match = (rel) => rel.startsWith('data/');
    const a = content.get('a/other')!;
    assert.equal(sha256(await readFile(join(m.mp, 'layers', layerA, 'other'))), sha256(a));
    hostile.mode = 'ok';
    // Within the backoff, the failed mirror is skipped.
    const before = hostile.requests.length;
    assert.equal(sha256(await readFile(join(m.mp, 'layers', layerA, 'other2'))), sha256(content.get('a/other2')!));
    assert.equal(hostile.requests.length, before, 'the failed mirror was avoided right after failing');
    await new Promise((r) => setTimeout(r, 2500));
    const before2 = hostile.requests.length;
    assert.equal(sha256(await readFile(join(m.mp, 'layers', layerA, 'miss-wrong'))), sha256(content.get('a/miss-wrong')!));
    assert.ok(hostile.requests.length > before2, 'after the reset time the preferred mirror is asked again');
  } finally { hostile.mode = 'ok'; await m.stop(); }
});

test('thinfs cat: a chunk refused while the previous one is still being written is a clear error, not a crash', async () => {
  // A file of several chunks: the mirror answers the catalog and the first chunk, then floods every later
  // object. The later chunk is fetched ahead while the first is written to a pipe that is slower than it.
  const src = join(dir, 'src-big');
  await mkdir(src);
  await writeFile(join(src, 'big'), pseudoRandom(6 << 20, 'big'));
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, 'big.tar'), '.']);
  const id = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'big.tar'), '--store', store, '--json'])).diffId;
  const srv = await startHostileServer(store, 'oversized');
  try {
    let objects = 0;
    srv.match = (rel) => rel.startsWith('data/') && ++objects > 2;
    const r = await thinfs(['cat', '--store', srv.url, ...HTTP_FLAGS, id, '/big']);
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /^thinfs: error: .*bytes expected: refused$/m);
    assert.doesNotMatch(r.stderr, /Node\.js|at async/, 'no unhandled rejection');
    assert.ok(srv.hostile.length > 0, 'a later chunk was refused');
  } finally {
    await srv.close();
  }
});
