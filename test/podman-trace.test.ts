// A prefetch trace replays when podman starts a thin image natively (issue 14 on issue 13's path): `podman run REF`
// through the generated image store mounts an overlay over the mount's layers/<hex>/ and never touches images/; the
// lookup of the image's top layer starts the replay. A workload recorded under podman (`thinfs mount --record`) and
// attached to the image is fetched by the replay on a fresh node (prefetch hits); an image sharing only the base layer,
// and a direct look at the base layer, replay nothing. Oracle: the daemon's stats, and the bytes the container reads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { THINFS_MAIN, runOk, thinfsJson, thinfsOk, tmpDir, cleanupTmpDirs, haveCommand, sha256, waitFor } from './helpers/proc.js';
import { copyHostTools } from './helpers/host-tools.js';
import { testPodman, type TestPodman } from './helpers/podman.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { testDescriptor } from './helpers/descriptor.js';
import type { Mounted } from './fuse-mount-helper.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { WritableStore } from '../src/store/store.js';
import { encodeTrace, parseTrace } from '../src/format/trace.js';

let work = '';
let skip: string | false = false;
let store = '';
let mp = '';
let imageStore = '';
let pod: TestPodman | null = null;
let mounts: TrackedMounts | null = null;
const hex: Record<'base' | 'app' | 'other', string> = { base: '', app: '', other: '' };
const data: Array<{ rel: string; sha: string }> = [];

interface Prefetch { traces: number; traceErrors: number; tracesDone: number; fetched: number; hits: number; waste: number; traceChunks: number; layerTriggers: number; layerLowerSkips: number; layerIndexBuilds: number; layerIndexPublished: number; layerTriggersRefused: number }
const prefetchOf = async (m: Mounted) => ((await m.stats()) as unknown as { prefetch: Prefetch }).prefetch;

/** The container's workload: reads the app's data files, printing their hashes (checked against what was ingested). */
const WORKLOAD = 'for f in /data/a.bin /data/b.bin /data/c.bin; do sha256sum $f; done';

async function ingest(name: string, fill: (d: string) => Promise<void>): Promise<string> {
  const l = await makeLayer(work, name, fill);
  return (await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', store, '--json', '--no-progress'])).diffId.slice(7);
}

/** A descriptor podman can run: an image config naming its layers (the generated store serves it). */
async function publish(name: string, layerHexes: string[]): Promise<void> {
  const d = testDescriptor(name, store, layerHexes);
  d.reference = `oci:${name}`; // named localhost/<name> in podman's store
  d.config = { architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/usr/bin:/bin'] }, rootfs: { type: 'layers', diff_ids: layerHexes.map((h) => `sha256:${h}`) } };
  await (await WritableStore.openDir(store)).putImage(d);
}

/** Every test's mount is at work/mnt (where the generated image store points), each with a cache of its own. */
const mount = (name: string, extra: string[] = []): Promise<Mounted> =>
  mounts!.mount('mnt', { cache: `cache-${name}`, extra: ['--no-file-ahead', ...extra] });
const stop = (m: Mounted): Promise<void> => mounts!.stop(m);

async function runApp(): Promise<void> {
  const out = await pod!.podmanOk(['run', '--rm', '--network=none', 'localhost/trapp:v1', '/usr/bin/sh', '-c', WORKLOAD]);
  for (const f of data) assert.match(out, new RegExp(`^${f.sha}  /${f.rel}$`, 'm'), `${f.rel} read right`);
}

before(async () => {
  for (const c of ['podman', 'runc', 'sha256sum']) if (!(await haveCommand(c))) { skip = `${c} not installed (scripts/setup.sh)`; return; }
  work = await tmpDir('thinfs-podman-trace-');
  store = path.join(work, 'store');
  mp = path.join(work, 'mnt');
  mounts = trackedMounts(work, store);
  await thinfsOk(['init', store]);
  hex.base = await ingest('base', async (d) => {
    await copyHostTools(d, ['sh', 'cat', 'ls', 'sha256sum', 'true']);
    for (const x of ['tmp', 'proc', 'sys', 'dev', 'etc']) await fsp.mkdir(path.join(d, x), { recursive: true });
    await fsp.chmod(path.join(d, 'tmp'), 0o1777);
    await fsp.writeFile(path.join(d, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  });
  hex.app = await ingest('app', async (d) => {
    await fsp.mkdir(path.join(d, 'data'), { recursive: true });
    for (const [rel, size] of [['data/a.bin', 3 << 20], ['data/b.bin', 5 << 20], ['data/c.bin', 300_000], ['data/unused.bin', 4 << 20]] as const) {
      const bytes = pseudoRandom(size, rel);
      await fsp.writeFile(path.join(d, rel), bytes);
      if (!rel.includes('unused')) data.push({ rel, sha: sha256(bytes) });
    }
  });
  hex.other = await ingest('other', async (d) => { await fsp.mkdir(path.join(d, 'opt'), { recursive: true }); await fsp.writeFile(path.join(d, 'opt/other.txt'), 'other\n'); });
  await publish('trapp:v1', [hex.base, hex.app]);
  await publish('other:v1', [hex.base, hex.other]);
  // The node: the generated image store over the mountpoint (each test's mount comes and goes there), storage.conf.
  imageStore = path.join(work, 'podman-store');
  await runOk(process.execPath, [THINFS_MAIN, 'podman-store', store, mp, imageStore]);
  const conf = path.join(work, 'node', 'storage.conf');
  await fsp.mkdir(path.dirname(conf), { recursive: true });
  await thinfsOk(['podman-conf', imageStore, '--graphroot', path.join(work, 'node/graph'), '--runroot', path.join(work, 'node/run'), '-o', conf]);
  pod = await testPodman(path.join(work, 'node'), { storageConf: conf });
});

after(async () => {
  await pod?.cleanup();
  await mounts?.close();
  await cleanupTmpDirs();
});

test('podman run REF of an image with a trace: the top layer\'s first touch replays it; the base layer alone replays nothing', { timeout: 600_000 }, async (t) => {
  if (skip) { t.skip(skip); return; }
  // Record under podman, as a node would: the chunks its start and workload read through layers/.
  const traceFile = path.join(work, 'trapp.trace');
  const rec = await mount('record', ['--record', traceFile]);
  await runApp();
  await stop(rec);
  const trace = parseTrace(await fsp.readFile(traceFile));
  const appChunks = trace.chunks.filter((c) => c.layer === hex.app).length;
  assert.ok(appChunks >= 9, `the data files' chunks are traced (${appChunks} of ${trace.chunks.length})`);
  assert.ok(trace.chunks.some((c) => c.layer === hex.base), 'the base layer\'s reads (sh, sha256sum) are traced too');
  await thinfsOk(['trace', 'attach', '-s', store, 'trapp:v1', traceFile, '--level', '0']);

  // A fresh node (empty cache). First the other image, sharing only the base layer: nothing replays.
  const m = await mount('replay');
  assert.match(await pod!.podmanOk(['images', '--format', '{{.Repository}}:{{.Tag}}']), /^localhost\/trapp:v1$/m);
  assert.equal(await pod!.podmanOk(['run', '--rm', '--network=none', 'localhost/other:v1', '/usr/bin/cat', '/opt/other.txt']), 'other\n');
  await waitFor(async () => (await prefetchOf(m)).layerIndexBuilds >= 1 || undefined, 20_000, 50, 'images indexed by top layer');
  await new Promise((r) => setTimeout(r, 500));
  let p = await prefetchOf(m);
  assert.equal(p.traces, 0, `an image sharing the base layer replays nothing: ${JSON.stringify(p)}`);
  assert.equal(p.layerTriggers, 0);
  assert.equal(p.fetched, 0);

  // Then the traced image: its top layer's lookup starts the replay, which fetches what the container then reads.
  await runApp();
  p = (await waitFor(async () => { const x = await prefetchOf(m); return x.tracesDone === 1 ? x : undefined; }, 60_000, 50, 'trace replayed'))!;
  const s = await m.stats();
  assert.equal(p.layerTriggers, 1, JSON.stringify(p) + m.stderr().slice(-3000));
  assert.equal(p.traces, 1);
  assert.equal(p.traceErrors, 0);
  // Indexed from the store's published image index (one object), and the descriptor confirmed what it said.
  assert.equal(p.layerIndexPublished, p.layerIndexBuilds, 'every index of the images came from the published image index');
  assert.equal(p.layerTriggersRefused, 0);
  // The base layer's traced chunks the other image already brought are skipped; the rest is prefetched.
  assert.ok(p.fetched >= appChunks, `every traced chunk of the app layer fetched by the replay (${p.fetched} >= ${appChunks})`);
  assert.ok(p.hits >= appChunks, `and read by the container: prefetch hits (${JSON.stringify(p)})`);
  assert.equal(p.waste, 0, 'nothing fetched that the container did not read');
  assert.equal(s.ops.eio, 0);
  assert.match(await m.metrics(), /thinfs_prefetch_layer_triggers_total 1\b/);
  t.diagnostic(`traced ${trace.chunks.length} chunks (${appChunks} of the app layer); replay via the top layer: ${JSON.stringify(p)}; store fetches ${s.cache.fetches}`);
  // Once per image per mount: a second run starts nothing more.
  await runApp();
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await prefetchOf(m)).traces, 1);
  await stop(m);

  // Without podman: a look at the base layer directly replays nothing; at the app layer (trapp's top), the trace.
  const direct = await mount('direct');
  await fsp.readdir(path.join(mp, 'layers', hex.base));
  await waitFor(async () => (await prefetchOf(direct)).layerIndexBuilds >= 1 || undefined, 20_000, 50, 'images indexed by top layer');
  await new Promise((r) => setTimeout(r, 500));
  p = await prefetchOf(direct);
  assert.equal(p.traces + p.layerTriggers + p.fetched, 0, `base layer touched: ${JSON.stringify(p)}`);
  await fsp.readdir(path.join(mp, 'layers', hex.app));
  p = (await waitFor(async () => { const x = await prefetchOf(direct); return x.tracesDone === 1 ? x : undefined; }, 60_000, 50, 'trace replayed'))!;
  assert.equal(p.layerTriggers, 1);
  assert.equal(p.fetched, trace.chunks.length, 'a fresh cache: every traced chunk fetched');
  await stop(direct);
});

test('an image whose top layer is another image\'s base: its trace replays when it runs, not when the taller image is mounted over that layer', { timeout: 600_000 }, async (t) => {
  if (skip) { t.skip(skip); return; }
  await publish('trbase:v1', [hex.base]);
  // trapp's trace, kept to the base layer's chunks (sh, sha256sum): what trbase's start reads.
  await thinfsOk(['trace', 'attach', '-s', store, 'trbase:v1', path.join(work, 'trapp.trace'), '--level', '0']);
  await runOk(process.execPath, [THINFS_MAIN, 'podman-store', store, mp, imageStore]);

  // trapp's overlay looks up the app layer, then the base layer: the base's touch belongs to trapp's stack.
  const m = await mount('stack');
  await runApp();
  const p = (await waitFor(async () => { const x = await prefetchOf(m); return x.tracesDone >= 1 ? x : undefined; }, 60_000, 50, 'trace replayed'))!;
  await new Promise((r) => setTimeout(r, 500));
  const q = await prefetchOf(m);
  assert.equal(q.traces, 1, `only trapp's trace: ${JSON.stringify(q)}`);
  assert.equal(q.layerTriggers, 1);
  assert.equal(q.layerLowerSkips, 1, 'the base layer was touched as trapp\'s lower layer');
  assert.equal(q.fetched, p.fetched);
  await stop(m);

  // Run on its own, trbase's top layer (the base) starts its trace.
  const b = await mount('base-image');
  assert.match(await pod!.podmanOk(['run', '--rm', '--network=none', 'localhost/trbase:v1', '/usr/bin/sh', '-c', 'sha256sum /usr/bin/true']), /\/usr\/bin\/true$/m);
  const r = (await waitFor(async () => { const x = await prefetchOf(b); return x.tracesDone >= 1 ? x : undefined; }, 20_000, 50, 'trbase trace replayed').catch(async (e: unknown) => { throw new Error(`${String(e)}: ${JSON.stringify(await prefetchOf(b))}\n${b.stderr().slice(-3000)}`); }))!;
  assert.equal(r.layerTriggers, 1, JSON.stringify(r));
  assert.equal(r.layerLowerSkips, 0);
  // (Its chunks may already be local when it starts, after STACK_WAIT_MS: the base layer is one pack, fetched whole by sh's first read.)
  assert.equal(r.traces, 1, JSON.stringify(r));
  await stop(b);
});

test('several traced images on one top layer: each distinct trace replayed once, at most 4', { timeout: 300_000 }, async (t) => {
  if (skip) { t.skip(skip); return; }
  const app = parseTrace(await fsp.readFile(path.join(work, 'trapp.trace'))).chunks.filter((c) => c.layer === hex.app);
  // Five more images on trapp's layers, each with its own trace (the first k of trapp's app chunks); two with the same one.
  for (let k = 1; k <= 5; k++) {
    const file = path.join(work, `many${k}.trace`);
    await fsp.writeFile(file, encodeTrace(app.slice(0, k)));
    await publish(`many${k}:v1`, [hex.base, hex.app]);
    await thinfsOk(['trace', 'attach', '-s', store, `many${k}:v1`, file, '--level', '0']);
  }
  await publish('same:v1', [hex.base, hex.app]);
  await thinfsOk(['trace', 'attach', '-s', store, 'same:v1', path.join(work, 'many1.trace'), '--level', '0']);
  const m = await mount('many');
  await fsp.readdir(path.join(mp, 'layers', hex.app));
  const p = (await waitFor(async () => { const x = await prefetchOf(m); return x.layerTriggers > 0 && x.tracesDone === x.traces ? x : undefined; }, 60_000, 50, 'traces replayed'))!;
  await new Promise((r) => setTimeout(r, 500));
  const q = await prefetchOf(m);
  assert.equal(q.layerTriggers, 4, `7 images, 6 distinct traces on one top layer: 4 replayed (${JSON.stringify(q)})`);
  assert.equal(q.traces, 4);
  assert.ok(p.fetched <= app.length, 'chunks the traces share fetched once');
  await stop(m);
});
