// More hostile mirrors (test/helpers/hostile-server.ts) than store-http-hostile.test.ts covers, read through a real
// mount: a body that stalls after its headers, a slow loris that stays above the low-speed limit, interim 102 answers
// and never a final one, gzip, redirects to
// another host and to itself, a 206 to a request without a range. Every read gets the exact bytes from the next mirror
// or EIO within a bounded time, and a SIGTERM unmounts cleanly while a read is stuck on a mirror.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, runOk, thinfsJson, thinfsOk, sha256 } from './helpers/proc.js';
import { startHostileServer, type HostileMode, type HostileServer } from './helpers/hostile-server.js';
import { pseudoRandom } from './helpers/layers.js';
import { mountStore, forceUnmount, isMounted, type Mounted } from './fuse-mount-helper.js';

const MODES: HostileMode[] = ['slowloris', 'processing', 'stall', 'gzip', 'redirect', 'loop', 'partial'];
/** Short deadlines so a test takes seconds. */
const HTTP_FLAGS = ['--http-timeout', '6', '--headers-timeout', '2', '--low-speed-time', '2', '--low-speed-limit', '1024', '--http-retries', '1', '--host-reset', '0.05'];
/** Failing over must not cost the read's whole deadline (--http-timeout 6): a healthy mirror is there to be asked. */
const FAILOVER_MS = 4_500;
const BOUND_MS = 15_000;
/** --http-timeout 6 and slack: what a read that waits out the store may take before its EIO. */
const ONE_DEADLINE_MS = 9_000;

let dir = '';
let store = '';
let layer = '';
/** A second layer: its catalog is another valid object a mirror may serve for the first layer's. */
let layer2 = '';
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
  const src = join(dir, 'src');
  await mkdir(src);
  // Incompressible, so the stored object is as big as the file: a loris at 700 B/s would need minutes for it.
  for (const f of [...MODES.map((m) => `miss-${m}`), ...MODES.map((m) => `over-${m}`), 'other', 'hung', 'other2']) {
    const data = pseudoRandom(200_000, `more/${f}`);
    content.set(f, data);
    await writeFile(join(src, f), data);
  }
  // Small files travel in packs too (one request for the directory's members; each member is also its own object).
  await mkdir(join(src, 'pkg'));
  for (let i = 0; i < 8; i++) {
    const data = pseudoRandom(20_000, `more/pkg/f${i}`);
    content.set(`pkg/f${i}`, data);
    await writeFile(join(src, 'pkg', `f${i}`), data);
  }
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, 'a.tar'), '.']);
  layer = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'a.tar'), '--store', store, '--json'])).diffId.slice(7);
  const src2 = join(dir, 'src2');
  await mkdir(src2);
  await writeFile(join(src2, 'only-in-2'), 'two\n');
  await runOk('tar', ['--numeric-owner', '-C', src2, '-cf', join(dir, 'b.tar'), '.']);
  layer2 = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'b.tar'), '--store', store, '--json'])).diffId.slice(7);
  hostile = await startHostileServer(store);
  healthy = await startHostileServer(store);
  hostile.redirectTo = healthy.url;
});

after(async () => {
  for (const m of mounts) { if (process.env.DEBUG_MOUNT) console.error(m.stderr()); await m.stop().catch(() => null); await forceUnmount(m.mp); }
  await hostile?.close();
  await healthy?.close();
  await cleanupTmpDirs();
});

async function timed<T>(p: Promise<T>): Promise<{ ms: number; value?: T; err?: NodeJS.ErrnoException }> {
  const t0 = Date.now();
  try { const value = await p; return { ms: Date.now() - t0, value }; } catch (e) { return { ms: Date.now() - t0, err: e as NodeJS.ErrnoException }; }
}

test('hostile first mirror: every misbehaviour fails over to the healthy mirror with the exact bytes, well before the read\'s deadline', async () => {
  const m = await mountStore(`${hostile.url},${healthy.url}`, join(dir, 'mnt-two'), { cacheDir: join(dir, 'cache-two'), extra: HTTP_FLAGS });
  mounts.push(m);
  const root = join(m.mp, 'layers', layer);
  for (const mode of MODES) {
    const want = content.get(`over-${mode}`)!;
    hostile.mode = mode;
    hostile.match = (rel) => rel === objectRel(want);
    await new Promise((r) => setTimeout(r, 200)); // past the failed mirror's backoff (--host-reset 0.05): it is asked first again
    const before = hostile.hostile.length;
    const r = await timed(readFile(join(root, `over-${mode}`)));
    hostile.mode = 'ok';
    assert.ok(!r.err, `${mode}: read failed after ${r.ms} ms: ${r.err?.message}`);
    assert.equal(sha256(r.value!), sha256(want), `${mode}: wrong bytes`);
    assert.ok(hostile.hostile.length > before, `${mode}: the hostile mirror was asked first`);
    assert.ok(r.ms < FAILOVER_MS, `${mode}: took ${r.ms} ms`);
  }
});

test('hostile only mirror: EIO within a bounded time, other files stay readable meanwhile', async () => {
  const m = await mountStore(hostile.url, join(dir, 'mnt-one'), { cacheDir: join(dir, 'cache-one'), extra: HTTP_FLAGS });
  mounts.push(m);
  const root = join(m.mp, 'layers', layer);
  for (const mode of MODES) {
    const bad = content.get(`miss-${mode}`)!;
    hostile.mode = mode;
    hostile.match = (rel) => rel === objectRel(bad);
    const pending = timed(readFile(join(root, `miss-${mode}`)));
    if (mode === 'slowloris' || mode === 'stall') {
      const o = await timed(readFile(join(root, mode === 'stall' ? 'other' : 'other2')));
      assert.ok(!o.err && o.ms < 3000, `${mode}: another file took ${o.ms} ms (${o.err?.message ?? 'ok'}) while a read hung`);
    }
    const r = await pending;
    hostile.mode = 'ok';
    assert.equal(r.err?.code, 'EIO', `${mode}: expected EIO, got ${r.err?.code ?? 'bytes'}`);
    assert.ok(r.ms < BOUND_MS, `${mode}: EIO took ${r.ms} ms (bound ${BOUND_MS})`);
    // One deadline, not two: the kernel asks again at once for a READ whose readahead failed, and that retry fails at
    // once (the chunk's load had just failed after waiting out the store).
    assert.ok(r.ms < ONE_DEADLINE_MS, `${mode}: EIO took ${r.ms} ms (one --http-timeout: ${ONE_DEADLINE_MS})`);
  }
  assert.ok((await m.stats()).cache.failedFast >= 1, 'retried READs failed at once');
});

test('packed small files: a damaged pack falls back to the member\'s own object (exact bytes); a hanging mirror gives EIO within the read\'s deadline, not one deadline for the pack and another for the object', async () => {
  const m = await mountStore(hostile.url, join(dir, 'mnt-pack'), { cacheDir: join(dir, 'cache-pack'), extra: HTTP_FLAGS });
  mounts.push(m);
  const root = join(m.mp, 'layers', layer, 'pkg');
  assert.equal((await readdir(root)).length, 8);
  try {
    hostile.mode = 'wrong';
    hostile.match = (rel) => rel.startsWith('packs/');
    const w = await timed(readFile(join(root, 'f1')));
    assert.ok(!w.err, `damaged pack: ${w.err?.message}`);
    assert.equal(sha256(w.value!), sha256(content.get('pkg/f1')!));
    assert.ok(hostile.hostile.some((r) => r.startsWith('packs/')), 'the pack was asked for');

    hostile.mode = 'hang';
    hostile.match = (rel) => rel.startsWith('packs/') || rel.startsWith('data/');
    const before = hostile.hostile.length;
    const r = await timed(readFile(join(root, 'f5')));
    assert.equal(r.err?.code, 'EIO', `expected EIO, got ${r.err?.code ?? 'bytes'}`);
    assert.ok(hostile.hostile.length > before);
    // --http-timeout 6: the READ ends within it, and the kernel's second READ (after a failed readahead) at once.
    assert.ok(r.ms < ONE_DEADLINE_MS, `EIO took ${r.ms} ms (one --http-timeout: ${ONE_DEADLINE_MS})`);
  } finally { hostile.mode = 'ok'; }
});

test('a layer\'s catalog answered with another layer\'s (a valid object, wrong name): refused; the next mirror gives the right one', async () => {
  const catalogOf = async (hex: string) => (JSON.parse(await readFile(join(store, 'layers', `${hex}.json`), 'utf8')) as { catalog: string }).catalog;
  const [c1, c2] = [await catalogOf(layer), await catalogOf(layer2)];
  hostile.mode = 'swap';
  hostile.match = (rel) => rel === `data/${c1.slice(0, 2)}/${c1.slice(2)}`;
  hostile.swapWith = () => `data/${c2.slice(0, 2)}/${c2.slice(2)}`;
  try {
    const one = await mountStore(hostile.url, join(dir, 'mnt-cat1'), { cacheDir: join(dir, 'cache-cat1'), extra: HTTP_FLAGS });
    mounts.push(one);
    const r = await timed(readdir(join(one.mp, 'layers', layer)));
    assert.equal(r.err?.code, 'EIO', `expected EIO, got ${r.err?.code ?? r.value?.join(',')}`);
    assert.ok(r.ms < BOUND_MS);
    assert.ok(hostile.hostile.length > 0);
    const two = await mountStore(`${hostile.url},${healthy.url}`, join(dir, 'mnt-cat2'), { cacheDir: join(dir, 'cache-cat2'), extra: HTTP_FLAGS });
    mounts.push(two);
    const names = await readdir(join(two.mp, 'layers', layer));
    assert.ok(names.includes('other') && !names.includes('only-in-2'), names.join(','));
  } finally { hostile.mode = 'ok'; }
});

test('SIGTERM while a read hangs on a mirror: the daemon unmounts and exits at once; the reader gets an error, not a hang', async () => {
  const m = await mountStore(hostile.url, join(dir, 'mnt-term'), { cacheDir: join(dir, 'cache-term'), extra: ['--http-timeout', '120', '--headers-timeout', '100'] });
  mounts.push(m);
  const root = join(m.mp, 'layers', layer);
  await readFile(join(root, 'other'));
  hostile.mode = 'hang';
  hostile.match = (rel) => rel === objectRel(content.get('hung')!);
  try {
    const pending = timed(readFile(join(root, 'hung')));
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(hostile.hostile.length > 0, 'the read reached the hanging mirror');
    const t0 = Date.now();
    const code = await m.stop();
    assert.equal(code, 0, m.stderr());
    assert.ok(Date.now() - t0 < 8000, `stopping took ${Date.now() - t0} ms`);
    assert.equal(await isMounted(m.mp), false);
    const r = await Promise.race([pending, new Promise<null>((res) => setTimeout(() => res(null), 5000))]);
    assert.ok(r && r.err, `the stuck reader must get an error once the daemon is gone, got ${r ? 'bytes' : 'nothing within 5 s'}`);
  } finally { hostile.mode = 'ok'; }
});
