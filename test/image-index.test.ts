// The published image index (src/format/image-index.ts): written beside the repository manifest by every publication,
// named by it, read by the mount's layer trigger as one object instead of one descriptor GET per image. Over a stock
// nginx serving a store of 50 images: the requests a mount makes at start (with the index, signed and unsigned, and
// for an older store whose manifest names none); a traced image started through layers/ replays either way; a
// tampered index under a signed manifest is refused with a warning and the mount falls back; an index naming a trace
// the descriptor does not (or another one) replays nothing it should not. Writers: trace attach/detach update it, gc
// keeps the one named and takes replaced ones, fsck finds one that disagrees with the descriptors and rebuilds it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, runOk, thinfs, thinfsJson, thinfsOk, waitFor } from './helpers/proc.js';
import { startNginx, type WebServer } from './helpers/web.js';
import { testDescriptor } from './helpers/descriptor.js';
import { pseudoRandom } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { Store, WritableStore } from '../src/store/store.js';
import { openLayerCatalog } from '../src/store/layer-catalog.js';
import { decodeObject, encodeObject } from '../src/store/codec.js';
import { imageIndexPath, objectPath } from '../src/store/layout.js';
import { encodeTrace } from '../src/format/trace.js';
import { encodeImageIndex, parseImageIndex, type ImageIndexEntry } from '../src/format/image-index.js';
import { decodeManifestFile, encodeManifestFile } from '../src/format/repo-manifest.js';
import type { FsckReport } from '../src/store/fsck.js';

const FILLERS = 48;
const MANIFEST = 'thinfs-published';

let dir = '';
/** Signed, 50 images (app:v1 traced, decoy:v1 and 48 fillers not). */
let store = '';
const keys = { priv: '', pub: '' };
const hex = { base: '', app: '', decoy: '', filler: '' };
let appTrace = { sha256: '', chunks: 0 };
const webs: WebServer[] = [];
const mounts: Mounted[] = [];

interface Prefetch { traces: number; tracesDone: number; fetched: number; layerTriggers: number; layerTriggersRefused: number; layerIndexBuilds: number; layerIndexPublished: number }
const prefetchOf = async (m: Mounted) => ((await m.stats()) as unknown as { prefetch: Prefetch }).prefetch;

async function layerWith(name: string, files: Record<string, Buffer>): Promise<string> {
  const src = join(dir, `src-${name}`);
  await mkdir(src, { recursive: true });
  for (const [f, b] of Object.entries(files)) await writeFile(join(src, f), b);
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, `${name}.tar`), '.']);
  return (await thinfsJson<{ diffId: string }>(['ingest', join(dir, `${name}.tar`), '--store', store, '--json', '--no-progress'], { env: { THINFS_SIGNING_KEY: keys.priv } })).diffId.slice(7);
}

const manifestOf = async (root: string) => JSON.parse(decodeManifestFile(await readFile(join(root, MANIFEST))).payload.toString()) as Record<string, unknown> & { imageIndex?: { sha256: string; size: number } };
async function indexOf(root: string): Promise<{ sha256: string; images: Record<string, ImageIndexEntry> }> {
  const e = (await manifestOf(root)).imageIndex!;
  return { sha256: e.sha256, images: parseImageIndex(decodeObject(e.sha256, await readFile(join(root, imageIndexPath(e.sha256))))).images };
}

/** Rewrite a store's manifest (unsigned) naming `entries` as its image index (null: none, as a store published before it). */
async function republishUnsigned(root: string, entries: Record<string, ImageIndexEntry> | null): Promise<string | null> {
  const m = await manifestOf(root);
  delete m.imageIndex;
  let sha: string | null = null;
  if (entries) {
    const bytes = encodeImageIndex(entries);
    sha = (await import('node:crypto')).createHash('sha256').update(bytes).digest('hex');
    await writeFile(join(root, imageIndexPath(sha)), encodeObject(bytes));
    m.imageIndex = { sha256: sha, size: bytes.length };
  }
  await writeFile(join(root, MANIFEST), encodeManifestFile(Buffer.from(JSON.stringify(m)), null));
  return sha;
}

async function serve(root: string, name: string): Promise<WebServer> {
  const w = await startNginx(root, join(dir, `nginx-${name}`));
  webs.push(w);
  return w;
}

async function mountAt(url: string, name: string, extra: string[] = []): Promise<Mounted> {
  const m = await mountStore(url, join(dir, `mnt-${name}`), { cacheDir: join(dir, `cache-${name}`), extra: ['--no-file-ahead', ...extra] });
  mounts.push(m);
  return m;
}

async function stop(m: Mounted): Promise<void> {
  assert.equal(await m.stop(), 0, m.stderr().slice(-2000));
  mounts.splice(mounts.indexOf(m), 1);
}

/** The access log lines of `w` from line `from` on, by kind: descriptors, the image index object, the manifest. */
async function requests(w: WebServer, from: number, indexSha: string | null): Promise<{ descriptors: number; index: number; manifest: number; all: string[] }> {
  const all = (await w.accessLog()).slice(from);
  return {
    descriptors: all.filter((l) => / \/images\/[^ ]+\.json /.test(l)).length,
    index: indexSha ? all.filter((l) => l.includes(`/${imageIndexPath(indexSha)} `)).length : 0,
    manifest: all.filter((l) => l.includes(`/${MANIFEST} `)).length,
    all,
  };
}

/** Mount, wait for the layer trigger's first index, and count what the start asked the store for. */
async function startCounted(w: WebServer, name: string, indexSha: string | null, extra: string[] = []) {
  const from = (await w.accessLog()).length;
  const m = await mountAt(w.url, name, extra);
  await waitFor(async () => (await prefetchOf(m)).layerIndexBuilds >= 1 || undefined, 30_000, 50, 'images indexed by top layer at mount start');
  await new Promise((r) => setTimeout(r, 300));
  return { m, req: await requests(w, from, indexSha) };
}

/** Podman's path: the lookup of the traced image's top layer under layers/ replays its trace (the whole of it). */
async function touchAppReplays(m: Mounted): Promise<Prefetch> {
  const p0 = await prefetchOf(m);
  await readdir(join(m.mp, 'layers', hex.app));
  const p = (await waitFor(async () => { const x = await prefetchOf(m); return x.tracesDone >= 1 ? x : undefined; }, 30_000, 50, `trace replayed (${m.stderr().slice(-2000)})`))!;
  assert.equal(p.traces, 1, JSON.stringify(p));
  assert.equal(p.layerTriggers, p0.layerTriggers + 1);
  assert.equal(p.fetched, appTrace.chunks, 'every traced chunk fetched');
  return p;
}

before(async () => {
  dir = await tmpDir('thinfs-image-index-');
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  await thinfsOk(['keygen', join(dir, 'key')]);
  keys.priv = join(dir, 'key', 'thinfs.key');
  keys.pub = join(dir, 'key', 'thinfs.pub');
  hex.base = await layerWith('base', { 'base.txt': Buffer.from('base\n') });
  hex.app = await layerWith('app', Object.fromEntries(['a', 'b', 'c', 'd', 'e', 'f'].map((n) => [`${n}.bin`, pseudoRandom(150_000, n)])));
  hex.decoy = await layerWith('decoy', { 'decoy.txt': Buffer.from('decoy\n') });
  hex.filler = await layerWith('filler', { 'filler.txt': Buffer.from('filler\n') });
  process.env.THINFS_SIGNING_KEY = keys.priv;
  try {
    const ws = await WritableStore.openDir(store);
    await ws.putImage(testDescriptor('app:v1', store, [hex.base, hex.app]));
    await ws.putImage(testDescriptor('decoy:v1', store, [hex.base, hex.decoy]));
    for (let i = 0; i < FILLERS; i++) await ws.putImage(testDescriptor(`fill-${String(i).padStart(2, '0')}:v1`, store, [hex.base, hex.filler]));
  } finally { delete process.env.THINFS_SIGNING_KEY; }
  // The app's trace: every chunk of its layer, as `thinfs mount --record` would have written it.
  const st = await Store.open(store);
  const { catalog, close } = await openLayerCatalog(st, `sha256:${hex.app}`);
  const hashes = catalog.allChunkHashes();
  await close();
  const chunks = await Promise.all(hashes.map(async (h) => ({ layer: hex.app, hash: h, size: (await st.getObject(h)).length })));
  await writeFile(join(dir, 'app.trace'), encodeTrace(chunks));
  const r = await thinfsJson<{ trace: { sha256: string } }>(['trace', 'attach', '-s', store, 'app:v1', join(dir, 'app.trace'), '--level', '0', '--json'], { env: { THINFS_SIGNING_KEY: keys.priv } });
  appTrace = { sha256: r.trace.sha256, chunks: chunks.length };
  assert.ok(appTrace.chunks >= 4, `the app layer has several chunks (${appTrace.chunks})`);
});

after(async () => {
  for (const m of mounts) { await m.stop().catch(() => null); await forceUnmount(m.mp); }
  for (const w of webs) await w.stop();
  await cleanupTmpDirs();
});

test('every publication names an image index that says what the descriptors say; trace attach and detach update it', async () => {
  const idx = await indexOf(store);
  assert.equal(Object.keys(idx.images).length, FILLERS + 2);
  assert.deepEqual(idx.images['app:v1']!.layers, [hex.base, hex.app]);
  assert.equal(idx.images['app:v1']!.trace, appTrace.sha256, 'the attached trace is in the index');
  assert.equal(idx.images['decoy:v1']!.trace, undefined);
  // Detached and attached again, each a new revision with a new index (what nodes see without a descriptor GET).
  const w = join(dir, 'writer');
  await cp(store, w, { recursive: true });
  const env = { env: { THINFS_SIGNING_KEY: keys.priv } };
  await thinfsOk(['trace', 'detach', '-s', w, 'app:v1'], env);
  const detached = await indexOf(w);
  assert.notEqual(detached.sha256, idx.sha256);
  assert.equal(detached.images['app:v1']!.trace, undefined, 'detach: no trace in the index');
  // gc keeps the index the manifest names and takes the one it replaced (no grace period to hide behind).
  const objects = async () => (await readdir(join(w, 'data'), { recursive: true })).length;
  const objectsBefore = await objects();
  const gc = await thinfsJson<{ indexesRemoved: number; removed: number }>(['gc', '-s', w, '--grace', '0', '--json']);
  // Every publication wrote one (52 so far); all but the one named are replaced.
  assert.ok(gc.indexesRemoved >= FILLERS + 2, `the replaced indexes were collected (${gc.indexesRemoved})`);
  await assert.rejects(stat(join(w, imageIndexPath(idx.sha256))));
  assert.deepEqual(await readdir(join(w, 'indexes')), [detached.sha256], 'the named index was kept, and only it');
  assert.equal(await objects(), objectsBefore - gc.removed, 'the index is no object of data/');
  await thinfsOk(['trace', 'attach', '-s', w, 'app:v1', join(dir, 'app.trace'), '--level', '0'], env);
  const again = await indexOf(w);
  assert.equal(again.images['app:v1']!.trace, appTrace.sha256);
  assert.equal(again.sha256, idx.sha256, 'the same store state gives the same index object');
  // (The test descriptors name config objects the store lacks: fsck reports those; the index is what is checked here.)
  const fsck = async () => JSON.parse((await thinfs(['fsck', '-s', w, '--json'], env)).stdout) as FsckReport;
  const ok = await fsck();
  assert.equal(ok.imageIndex, null);
  // An index that disagrees with the descriptors (here: a forged trace for decoy:v1): fsck reports and rebuilds it.
  await republishUnsigned(w, { ...again.images, 'decoy:v1': { ...again.images['decoy:v1']!, trace: appTrace.sha256 } });
  const bad = await fsck();
  assert.match(bad.imageIndex?.error ?? '', /disagrees with the descriptors of images \[decoy:v1\]/);
  assert.equal(bad.imageIndex?.rebuilt, true);
  assert.equal((await indexOf(w)).sha256, idx.sha256, 'rebuilt from the descriptors');
  assert.equal((await fsck()).imageIndex, null);
});

test('50 images over HTTP: a mount indexes them from one object at start, not 50 descriptor GETs; a store without the index still works the old way', async () => {
  const web = await serve(store, 'signed');
  const idx = await indexOf(store);
  // Signed: the manifest is read anyway (trust), the index is one more GET; no descriptor is asked for at start.
  const signed = await startCounted(web, 'signed', idx.sha256, ['--public-key', keys.pub]);
  assert.equal(signed.req.descriptors, 0, `no descriptor GET at start:\n${signed.req.all.join('\n')}`);
  assert.equal(signed.req.index, 1, 'the index: one GET');
  assert.ok((await prefetchOf(signed.m)).layerIndexPublished >= 1);
  await touchAppReplays(signed.m);
  await stop(signed.m);
  // Unsigned reader of the same store: the manifest as served, then the index.
  const plain = await startCounted(web, 'plain', idx.sha256);
  assert.equal(plain.req.descriptors, 0, `no descriptor GET at start:\n${plain.req.all.join('\n')}`);
  assert.equal(plain.req.index, 1);
  await touchAppReplays(plain.m);
  await stop(plain.m);
  // A store published before the index (its manifest names none): every descriptor, as before, and the replay works.
  const old = join(dir, 'old');
  await cp(store, old, { recursive: true });
  await republishUnsigned(old, null);
  const oldWeb = await serve(old, 'old');
  const legacy = await startCounted(oldWeb, 'old', null);
  assert.ok(legacy.req.descriptors >= FILLERS + 2, `the fallback fetches every descriptor (${legacy.req.descriptors})`);
  assert.equal((await prefetchOf(legacy.m)).layerIndexPublished, 0);
  await touchAppReplays(legacy.m);
  await stop(legacy.m);
  process.stdout.write(`# requests at mount start: descriptors ${legacy.req.descriptors} without the index, ${signed.req.descriptors} + ${signed.req.index} index GET with it\n`);
});

test('a tampered index under a signed manifest is refused with a warning; the mount falls back to the descriptors and still replays', async () => {
  const t = join(dir, 'tampered');
  await cp(store, t, { recursive: true });
  const idx = await indexOf(t);
  // Another index (decoy:v1 traced with the app's trace) in the place of the one the signed manifest names.
  const forged = encodeImageIndex({ ...idx.images, 'decoy:v1': { layers: [hex.base, hex.decoy], trace: appTrace.sha256 } });
  await writeFile(join(t, imageIndexPath(idx.sha256)), encodeObject(forged));
  const web = await serve(t, 'tampered');
  const r = await startCounted(web, 'tampered', idx.sha256, ['--public-key', keys.pub]);
  await waitFor(() => /published image index is refused/.test(r.m.stderr()) || undefined, 10_000, 50, 'the refusal is warned about');
  const p = await prefetchOf(r.m);
  assert.equal(p.layerIndexPublished, 0, 'nothing was built from the tampered index');
  assert.ok(r.req.descriptors >= FILLERS + 2, `fell back to every descriptor (${r.req.descriptors})`);
  // The decoy the forged index calls traced replays nothing; the app still does.
  await readdir(join(r.m.mp, 'layers', hex.decoy));
  await new Promise((res) => setTimeout(res, 500));
  assert.equal((await prefetchOf(r.m)).traces, 0);
  await touchAppReplays(r.m);
  // The mount serves files as ever.
  assert.equal(await readFile(join(r.m.mp, 'layers', hex.decoy, 'decoy.txt'), 'utf8'), 'decoy\n');
  await stop(r.m);
});

test('an index naming a trace or a top layer the descriptor does not replays only what the descriptor names', async () => {
  const f = join(dir, 'forged');
  await cp(store, f, { recursive: true });
  const idx = await indexOf(f);
  // decoy:v1 has no trace: the index says it has the app's; and it puts app:v1 (traced) on the decoy's layer.
  let sha = await republishUnsigned(f, {
    ...idx.images,
    'decoy:v1': { layers: [hex.base, hex.decoy], trace: appTrace.sha256 },
    'app:v1': { layers: [hex.base, hex.decoy], trace: appTrace.sha256 },
  });
  const web = await serve(f, 'forged');
  let r = await startCounted(web, 'forged', sha);
  assert.equal(r.req.descriptors, 0, 'indexed from the (forged) index');
  const from = (await web.accessLog()).length;
  await readdir(join(r.m.mp, 'layers', hex.decoy));
  await waitFor(async () => (await prefetchOf(r.m)).layerTriggers >= 1 || undefined, 10_000, 50, 'the index\'s claims acted on');
  await new Promise((res) => setTimeout(res, 1000));
  const q = await prefetchOf(r.m);
  assert.equal(q.traces, 0, `nothing replayed on the decoy's layer: ${JSON.stringify(q)}`);
  assert.equal(q.fetched, 0);
  assert.equal(q.layerTriggersRefused, q.layerTriggers, 'every start the index asked for was refused by its descriptor');
  const asked = (await web.accessLog()).slice(from);
  assert.ok(!asked.some((l) => l.includes(objectPath(appTrace.sha256))), `the app's trace was not fetched:\n${asked.join('\n')}`);
  await stop(r.m);
  // app:v1's trace named as one that does not exist: its descriptor's trace replays, the index's is never fetched.
  const bogus = 'f'.repeat(64);
  sha = await republishUnsigned(f, { ...idx.images, 'app:v1': { layers: [hex.base, hex.app], trace: bogus } });
  r = await startCounted(web, 'forged2', sha);
  await touchAppReplays(r.m);
  assert.ok(!(await web.accessLog()).some((l) => l.includes(objectPath(bogus))), 'the trace only the index names was never fetched');
  await stop(r.m);
});
