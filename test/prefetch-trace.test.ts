// Issue 14, acceptance 3: a trace recorded on a first run (`thinfs mount --record`), attached to an image
// (`thinfs trace attach`) and replayed on a fresh node: the traced chunks are local before the process reads them
// (no store fetch when it does), counted as prefetch hits; a corrupt or missing trace object is a warning, never fatal.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, sha256, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { putTestImage, testDescriptor } from './helpers/descriptor.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';
import { objectPath } from '../src/store/layout.js';
import { Store, WritableStore } from '../src/store/store.js';
import { encodeImageDirName } from '../src/mount/names.js';
import { parseTrace } from '../src/format/trace.js';
import { CatalogReader } from '../src/catalog/reader.js';
import { INFLIGHT_BYTES } from '../src/mount/prefetch.js';
import { startHostileServer } from './helpers/hostile-server.js';

const IMAGE = 'app:v1';
let work: string;
let store: string;
let layerHex: string;
const files: Array<{ rel: string; sha: string }> = [];
/** Files the workload reads (the rest of the layer is never read). */
const TOUCHED = ['lib/a.so', 'lib/mod/m1.py', 'lib/mod/m3.py', 'lib/mod/text.py', 'bin/tool', 'share/big.dat'];
const mounts: Mounted[] = [];

interface PrefetchStats { traces: number; traceErrors: number; fetched: number; hits: number; waste: number; tracesDone: number; traceChunks: number; fileChunks: number; inflight: number; queued: number; fills: number; fillsDone: number; fillChunks: number; fillBytes: number }
type Stats = Awaited<ReturnType<Mounted['stats']>> & { prefetch: PrefetchStats };

async function mount(name: string, extra: string[] = []): Promise<Mounted> {
  const m = await mountStore(store, path.join(work, `mnt-${name}`), { cacheDir: path.join(work, `cache-${name}`), extra });
  mounts.push(m);
  return m;
}

/** A mount of the store through an HTTP server (url). */
async function mountStoreUrl(url: string, name: string, extra: string[] = []): Promise<Mounted> {
  const m = await mountStore(url, path.join(work, `mnt-${name}`), { cacheDir: path.join(work, `cache-${name}`), extra });
  mounts.push(m);
  return m;
}

async function stop(m: Mounted): Promise<void> {
  const code = await m.stop();
  mounts.splice(mounts.indexOf(m), 1);
  assert.equal(code, 0, `daemon exits 0\n${m.stderr().slice(-2000)}`);
}

const rootfs = (m: Mounted) => path.join(m.mp, 'images', encodeImageDirName(IMAGE), 'rootfs');
const stats = async (m: Mounted) => (await m.stats()) as Stats;

/** The workload: reads the touched files through the image, checking their bytes. */
async function workload(m: Mounted): Promise<void> {
  for (const rel of TOUCHED) {
    const want = files.find((f) => f.rel === rel)!.sha;
    assert.equal(sha256(await fsp.readFile(path.join(rootfs(m), rel))), want, rel);
  }
}

async function traceObject(): Promise<string> {
  const d = (await (await Store.open(store)).getImage(IMAGE))!;
  assert.ok(d.trace, 'the descriptor names a trace');
  return path.join(store, objectPath(d.trace.sha256));
}

describe('trace-driven prefetch', { timeout: 300_000 }, () => {
  before(async () => {
    work = await tmpDir('thinfs-trace-');
    store = path.join(work, 'store');
    await thinfsOk(['init', store]);
    const l = await makeLayer(work, 'app', async (dir) => {
      const add = async (rel: string, data: Buffer) => {
        await fsp.mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
        await fsp.writeFile(path.join(dir, rel), data);
        files.push({ rel, sha: sha256(data) });
      };
      await add('lib/a.so', pseudoRandom(3 << 20, 'a.so'));
      for (let i = 0; i < 6; i++) await add(`lib/mod/m${i}.py`, pseudoRandom(150_000 + i * 1000, `m${i}`));
      // Compressible (source text): what `trace attach` stores compressed harder.
      await add('lib/mod/text.py', Buffer.from(Array.from({ length: 9000 }, (_, i) => `def f${i}(x):\n    return x * ${(i * 7919) % 997} + ${(i * 104729) % 10007}\n`).join('')));
      await add('bin/tool', pseudoRandom(400_000, 'tool'));
      await add('share/big.dat', pseudoRandom(6 << 20, 'big'));
      await add('share/unused.dat', pseudoRandom(2 << 20, 'unused'));
    });
    const r = await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', store, '--json', '--no-progress']);
    layerHex = r.diffId.slice(7);
    await putTestImage(store, IMAGE, [layerHex]);
  });
  after(async () => {
    for (const m of mounts.splice(0)) { await m.stop().catch(() => {}); await forceUnmount(m.mp); }
    await cleanupTmpDirs();
  });

  it('records a trace, attaches it, and replays it ahead of the process on a fresh node', async () => {
    const traceFile = path.join(work, 'app.trace');
    const first = await mount('record', ['--record', traceFile, '--no-file-ahead']);
    await workload(first);
    const firstFetches = (await stats(first)).cache.fetches;
    await stop(first);
    const t = parseTrace(await fsp.readFile(traceFile));
    assert.ok(t.chunks.length >= TOUCHED.length, `every touched file's chunks recorded (${t.chunks.length})`);
    // The first run fetched every chunk it read, and the catalog: the trace is exactly those chunks.
    assert.equal(t.chunks.length, firstFetches - 1);

    const storedSize = async (h: string) => (await fsp.stat(path.join(store, objectPath(h)))).size;
    const sizesBefore = await Promise.all(t.chunks.map((c) => storedSize(c.hash)));
    const att = await thinfsJson<{ chunks: number; trace: { sha256: string }; recompressed: { changed: number; before: number; after: number } }>(['trace', 'attach', '-s', store, IMAGE, traceFile, '--json']);
    assert.equal(att.chunks, t.chunks.length);
    // Every cold start fetches the traced chunks: attach stores them compressed harder (same bytes, same names).
    const sizesAfter = await Promise.all(t.chunks.map((c) => storedSize(c.hash)));
    const text = files.find((f) => f.rel === 'lib/mod/text.py')!;
    const ti = t.chunks.findIndex((c) => c.hash === text.sha);
    assert.ok(ti >= 0, 'the text file (one chunk) is traced');
    assert.ok(sizesAfter[ti]! < sizesBefore[ti]! * 0.9, `compressible chunk stored smaller: ${sizesBefore[ti]} -> ${sizesAfter[ti]}`);
    assert.ok(sizesAfter.every((a, i) => a <= sizesBefore[i]!), 'no object grew');
    assert.equal(att.recompressed.after, sizesAfter.reduce((a, b) => a + b, 0));
    const st = await Store.open(store);
    for (const c of t.chunks) assert.equal((await st.getObject(c.hash)).length, c.size, 'each rewritten object decodes to its hash');
    assert.ok(await fsp.stat(await traceObject()), 'the trace is an object in the store');
    // gc keeps it while the descriptor names it (no grace period to hide behind).
    await thinfsOk(['gc', '-s', store, '--grace', '0']);
    assert.ok(await fsp.stat(await traceObject()), 'gc kept the trace object');

    // A fresh node (empty cache), file-ahead off: only the trace can bring chunks before they are read.
    const m = await mount('replay', ['--no-file-ahead']);
    await fsp.readdir(rootfs(m)); // first touch of the image
    const s = (await waitFor(async () => { const x = await stats(m); return x.prefetch.tracesDone === 1 ? x : undefined; }, 60_000, 50, 'trace replayed'))!;
    assert.equal(s.prefetch.traces, 1, JSON.stringify(s.prefetch) + m.stderr().slice(-3000));
    assert.equal(s.prefetch.fetched, t.chunks.length, 'every traced chunk fetched before the process read anything');
    assert.equal(s.ops.reads, 0, 'nothing read yet');
    const before = s.cache.fetches;
    await workload(m);
    const after2 = await stats(m);
    assert.equal(after2.cache.fetches, before, 'the workload fetched nothing: its chunks were already local');
    assert.equal(after2.prefetch.hits, t.chunks.length, 'every prefetched chunk was read: all hits');
    assert.equal(after2.prefetch.waste, 0);
    const metrics = await m.metrics();
    assert.match(metrics, new RegExp(`thinfs_prefetch_hits_total ${t.chunks.length}\\b`));
    assert.match(metrics, /thinfs_prefetch_waste_chunks 0\b/);
    await stop(m);

    // Without the trace (control): the same workload on a fresh node fetches as it reads.
    await thinfsOk(['trace', 'detach', '-s', store, IMAGE]);
    const plain = await mount('plain', ['--no-file-ahead']);
    await fsp.readdir(rootfs(plain));
    const b0 = (await stats(plain)).cache.fetches;
    await workload(plain);
    assert.equal((await stats(plain)).cache.fetches - b0, t.chunks.length, 'without a trace every chunk is fetched when read');
    await stop(plain);
    await thinfsOk(['trace', 'attach', '-s', store, IMAGE, traceFile]);
  });

  it('a file read sequentially from its start has the rest of its chunks fetched ahead, in parallel (file-ahead)', async (t) => {
    // File-ahead alone: the image's trace, which the lookup of its top layer under layers/ replays (podman's path), is
    // detached meanwhile.
    await thinfsOk(['trace', 'detach', '-s', store, IMAGE]);
    t.after(() => thinfsOk(['trace', 'attach', '-s', store, IMAGE, path.join(work, 'app.trace')]));
    const fetched = async (m: Mounted) => (await m.stats()).cache.fetches - 1; // minus the catalog
    const big = files.find((f) => f.rel === 'share/big.dat')!;
    const file = (m: Mounted) => path.join(m.mp, 'layers', layerHex, 'share/big.dat');
    /** The first 2 MiB of the 6 MiB file, 64 KiB at a time, as a copy would. */
    const readHead = async (m: Mounted) => {
      const fh = await fsp.open(file(m), 'r');
      try { for (let off = 0; off < 2 << 20; off += 65536) await fh.read(Buffer.alloc(65536), 0, 65536, off); } finally { await fh.close(); }
    };
    // Control: without file-ahead, the head of the file fetches only the chunks the kernel asked for.
    const off = await mount('noahead', ['--no-file-ahead']);
    await readHead(off);
    await new Promise((r) => setTimeout(r, 500));
    const partial = await fetched(off);
    assert.equal(sha256(await fsp.readFile(file(off))), big.sha);
    const total = await fetched(off);
    assert.ok(partial < total, `the head alone needs fewer chunks (${partial} of ${total})`);
    await stop(off);

    const on = await mount('ahead');
    await readHead(on);
    const s = (await waitFor(async () => { const x = await stats(on); return x.prefetch.fileChunks > 0 && x.prefetch.inflight === 0 && x.prefetch.queued === 0 ? x : undefined; }, 30_000, 50, 'file-ahead done'))!;
    assert.equal(s.cache.fetches - 1, total, 'every chunk of the file fetched after reading its head');
    // The kernel's own readahead may already have read some of them (hits); the rest is waste until read.
    assert.ok(s.prefetch.fetched > 0 && s.prefetch.waste > 0 && s.prefetch.hits + s.prefetch.waste === s.prefetch.fetched, JSON.stringify(s.prefetch));
    assert.equal(sha256(await fsp.readFile(file(on))), big.sha);
    const after2 = await stats(on);
    assert.equal(after2.cache.fetches, s.cache.fetches, 'the rest of the file was already local');
    assert.equal(after2.prefetch.hits, s.prefetch.fetched);
    assert.equal(after2.prefetch.waste, 0);
    await stop(on);
  });

  it('a traced image\'s catalogs are fetched at its first touch and go first: one trace fetch at a time until they are loaded, then at most 8 MiB of chunks in flight', async () => {
    const desc = (await (await Store.open(store)).getImage(IMAGE))!;
    const traceRel = objectPath(desc.trace!.sha256);
    const layer = (await (await Store.open(store)).getLayer(`sha256:${layerHex}`))!;
    const catalogRel = objectPath(layer.catalog);
    const traced = parseTrace(await (await Store.open(store)).getObject(desc.trace!.sha256)).chunks;
    // Every object request but the trace's hangs (nothing completes): what is in flight is what prefetch asked for.
    const srv = await startHostileServer(store, 'hang');
    srv.match = (rel) => rel.startsWith('data/') && rel !== traceRel;
    try {
      const m = await mountStoreUrl(srv.url, 'gate', ['--no-file-ahead', '--headers-timeout', '1', '--http-timeout', '60', '--host-reset', '0.05']);
      // A lookup of the image's directory only: its rootfs is not asked for.
      await fsp.stat(path.join(m.mp, 'images', encodeImageDirName(IMAGE)));
      await waitFor(async () => (await stats(m)).prefetch.inflight > 0 && srv.requests.includes(catalogRel) || undefined, 20_000, 20, 'catalog requested, trace replaying');
      await new Promise((r) => setTimeout(r, 300));
      let s = await stats(m);
      assert.equal(s.prefetch.inflight, 1, `one trace fetch while the catalog loads: ${JSON.stringify(s.prefetch)}`);
      assert.equal(s.prefetch.queued, traced.length - 1);
      assert.equal(s.layersLoaded, 0);
      // The catalog now comes (its hung request times out and is asked again): the replay widens, bounded by bytes.
      srv.match = (rel) => rel.startsWith('data/') && rel !== traceRel && rel !== catalogRel;
      s = (await waitFor(async () => { const x = await stats(m); return x.layersLoaded === 1 && x.prefetch.inflight > 1 ? x : undefined; }, 30_000, 20, 'catalog loaded, replay widened'))!;
      await new Promise((r) => setTimeout(r, 300));
      s = await stats(m);
      let fit = 0;
      for (let sum = 0; fit < traced.length && (fit === 0 || sum + traced[fit]!.size <= INFLIGHT_BYTES); fit++) sum += traced[fit]!.size;
      assert.ok(fit < traced.length, 'the trace is bigger than the bound (the test would show nothing otherwise)');
      assert.equal(s.prefetch.inflight, fit, `in flight: the trace's first ${fit} chunks (${JSON.stringify(s.prefetch)})`);
      assert.equal(s.prefetch.queued, traced.length - fit);
      // Everything served again: the replay finishes and the workload reads the right bytes, fetching nothing.
      srv.mode = 'ok';
      s = (await waitFor(async () => { const x = await stats(m); return x.prefetch.tracesDone === 1 ? x : undefined; }, 60_000, 50, 'trace replayed'))!;
      assert.equal(s.prefetch.fetched, traced.length);
      await workload(m);
      assert.equal((await stats(m)).cache.fetches, s.cache.fetches);
      await stop(m);
    } finally { await srv.close(); }
  });

  it('a file whose traced chunk lands after its directory\'s first open is handed to the transport then: its open never reaches JS', async () => {
    const st = await Store.open(store);
    const traced = parseTrace(await st.getObject((await st.getImage(IMAGE))!.trace!.sha256)).chunks;
    // lib/mod/m3.py is one chunk (its hash is the file's), traced; its object is held back until the directory was opened.
    const m3 = files.find((f) => f.rel === 'lib/mod/m3.py')!;
    assert.ok(traced.some((c) => c.hash === m3.sha), 'm3.py is traced, as one chunk');
    const held = objectPath(m3.sha);
    const srv = await startHostileServer(store, 'hold');
    srv.match = (rel) => rel === held;
    try {
      const m = await mountStoreUrl(srv.url, 'hand-late', ['--no-file-ahead']);
      await fsp.readdir(rootfs(m)); // first touch: the replay starts
      await waitFor(async () => (await stats(m)).prefetch.fetched === traced.length - 1 && srv.requests.includes(held) || undefined, 30_000, 20, 'every traced chunk but the held one');
      // The first open in lib/mod/ goes to JS, which hands the directory's local one-chunk files to the transport; m3's
      // chunk is not local yet.
      const m1 = files.find((f) => f.rel === 'lib/mod/m1.py')!;
      assert.equal(sha256(await fsp.readFile(path.join(rootfs(m), m1.rel))), m1.sha);
      const before = await stats(m);
      const jsOpens = before.ops.requests.open?.n ?? 0;
      assert.ok(jsOpens >= 1, 'the first open of the directory reached JS');
      srv.release();
      const done = (await waitFor(async () => { const x = await stats(m); return x.prefetch.tracesDone === 1 ? x : undefined; }, 30_000, 20, 'trace replayed'))!;
      assert.equal(done.prefetch.fetched, traced.length);
      assert.equal(sha256(await fsp.readFile(path.join(rootfs(m), m3.rel))), m3.sha, 'exact bytes');
      const after = await stats(m);
      assert.equal(after.ops.requests.open?.n ?? 0, jsOpens, `m3.py's open did not reach JS (${JSON.stringify(after.ops)})`);
      assert.equal(after.ops.opensByTransport, before.ops.opensByTransport + 1, 'the transport opened it');
      assert.equal(after.cache.fetches, done.cache.fetches, 'nothing fetched by the read');
      await stop(m);
    } finally { await srv.close(); }
  });

  it('the catalogs an image descriptor names are asked for beside the layer manifests, not after them; a wrong one costs only its fetch', async () => {
    const st = await Store.open(store);
    const catalog = (await st.getLayer(`sha256:${layerHex}`))!.catalog;
    const ws = await WritableStore.openDir(store);
    const named = (name: string, cat: string) => { const d = testDescriptor(name, store, [layerHex]); d.layers[0]!.catalog = cat; return d; };
    await ws.putImage(named('early:v1', catalog));
    // Another object (a chunk of the layer) where the catalog should be: the layer manifest's catalog is the one used.
    await ws.putImage(named('wrongcat:v1', files.find((f) => f.rel === 'lib/mod/text.py')!.sha));
    const srv = await startHostileServer(store, 'hold');
    srv.match = (rel) => rel.startsWith('layers/');
    try {
      const m = await mountStoreUrl(srv.url, 'early', ['--no-file-ahead']);
      const file = (img: string) => path.join(m.mp, 'images', encodeImageDirName(img), 'rootfs', 'lib', 'mod', 'text.py');
      // The layer manifest is held back: the catalog is asked for all the same.
      const read = fsp.readFile(file('early:v1'));
      await waitFor(() => srv.requests.includes(objectPath(catalog)) || undefined, 15_000, 20, 'catalog requested while the layer manifest is held');
      assert.equal(srv.requests.filter((r) => r.startsWith('layers/')).length, 1, 'the layer manifest was asked for (and is held)');
      srv.mode = 'ok';
      srv.release();
      assert.equal(sha256(await read), files.find((f) => f.rel === 'lib/mod/text.py')!.sha);
      let s = await stats(m);
      assert.equal(s.cache.catalogFetches, 1, 'one fetch of the catalog served both');
      assert.equal(s.layersLoaded, 1);
      // A descriptor naming the wrong object: the layer (already loaded) is used as its manifest says.
      assert.equal(sha256(await fsp.readFile(file('wrongcat:v1'))), files.find((f) => f.rel === 'lib/mod/text.py')!.sha);
      await stop(m);
      // And on a fresh node: the wrong object is fetched (and verified as what it is), never opened as a catalog.
      const w = await mountStoreUrl(srv.url, 'wrongcat', ['--no-file-ahead']);
      const wf = path.join(w.mp, 'images', encodeImageDirName('wrongcat:v1'), 'rootfs', 'lib', 'mod', 'text.py');
      assert.equal(sha256(await fsp.readFile(wf)), files.find((f) => f.rel === 'lib/mod/text.py')!.sha);
      s = await stats(w);
      assert.equal(s.layersLoaded, 1);
      assert.equal(s.ops.eio, 0);
      await stop(w);
    } finally { await srv.close(); }
  });

  it('--fill-rate fetches the rest of a touched image after its trace, no faster than the rate: then every file reads with no fetch', async () => {
    const RATE = 512 << 10;
    const m = await mount('fill', ['--fill-rate', '512K', '--no-file-ahead']);
    await fsp.readdir(rootfs(m)); // first touch: the trace, then the fill
    const s = (await waitFor(async () => { const x = await stats(m); return x.prefetch.fillsDone === 1 ? x : undefined; }, 60_000, 50, 'fill done'))!;
    assert.equal(s.prefetch.tracesDone, 1);
    assert.ok(s.prefetch.fillChunks > 0 && s.prefetch.fillBytes > 0, JSON.stringify(s.prefetch));
    // The rate is a cap: the fill's bytes, less the one chunk it may start at once, took at least bytes / rate.
    const times = (msg: string) => m.stderr().split('\n').map((l) => { try { return JSON.parse(l) as { msg?: string; time?: number }; } catch { return {}; } }).find((o) => o.msg === msg)?.time;
    const t0 = times('background fill started')!, t1 = times('background fill done')!;
    const st = await Store.open(store);
    const man = (await st.getLayer(`sha256:${layerHex}`))!;
    const catFile = path.join(work, 'fill-catalog.sqlite');
    await fsp.writeFile(catFile, await st.getObject(man.catalog));
    const cat = CatalogReader.open(catFile);
    const biggest = Math.max(...cat.chunkPage([0, -1], 1e6).map((c) => c.size));
    cat.close();
    assert.ok(s.prefetch.fillBytes > 1.5 * biggest, `enough filled to see the rate (${s.prefetch.fillBytes} B, chunks up to ${biggest} B)`);
    assert.ok((t1 - t0) / 1000 >= (s.prefetch.fillBytes - biggest) / RATE, `fill of ${s.prefetch.fillBytes} B took ${t1 - t0} ms at ${RATE} B/s`);
    // Everything is local now: every file of the layer, read whole, fetches nothing.
    for (const f of files) assert.equal(sha256(await fsp.readFile(path.join(rootfs(m), f.rel))), f.sha, f.rel);
    const after = await stats(m);
    assert.equal(after.cache.fetches, s.cache.fetches, 'no read needed the store');
    assert.match(await m.metrics(), new RegExp(`thinfs_fill_bytes_total ${s.prefetch.fillBytes}\\b`));
    await stop(m);
  });

  it('the fill stops before the cache passes 80% of its quota: what was read stays', async () => {
    // The traced chunks (~11 MB) fit; the rest of the layer (~2.7 MB) would pass 80% of 14 MiB.
    const m = await mount('fill-quota', ['--fill-rate', '100M', '--no-file-ahead', '--cache-quota', '14M']);
    await fsp.readdir(rootfs(m));
    const s = (await waitFor(async () => { const x = await stats(m); return x.prefetch.fillsDone === 1 ? x : undefined; }, 60_000, 50, 'fill ended'))!;
    assert.match(m.stderr(), /background fill stopped/);
    assert.ok(s.cache.usedBytes <= 0.8 * 14 * (1 << 20), `cache within 80% of its quota (${s.cache.usedBytes})`);
    assert.equal(s.cache.evictions, 0, 'nothing was evicted for the fill: every traced chunk is still local');
    assert.equal(s.prefetch.fetched, s.prefetch.traceChunks, 'the trace was replayed whole first');
    await stop(m);
  });

  it('the fill waits while a reader waits on the store, and goes on after', async () => {
    // m0.py is not traced: its object is held, so a reader of it waits on the store.
    const m0 = files.find((f) => f.rel === 'lib/mod/m0.py')!;
    const held = objectPath(m0.sha);
    const srv = await startHostileServer(store, 'hold');
    srv.match = (rel) => rel === held;
    try {
      const m = await mountStoreUrl(srv.url, 'fill-wait', ['--fill-rate', '100M', '--no-file-ahead']);
      const reading = fsp.readFile(path.join(rootfs(m), m0.rel)); // touches the image: trace, then fill
      await waitFor(async () => (await stats(m)).prefetch.tracesDone === 1 && srv.requests.includes(held) || undefined, 30_000, 20, 'trace replayed, the reader waiting');
      await new Promise((r) => setTimeout(r, 700));
      let s = await stats(m);
      assert.equal(s.prefetch.fills, 1, 'the fill started');
      assert.equal(s.prefetch.fillChunks, 0, `nothing filled while the reader waits (${JSON.stringify(s.prefetch)})`);
      srv.release();
      assert.equal(sha256(await reading), m0.sha);
      s = (await waitFor(async () => { const x = await stats(m); return x.prefetch.fillsDone === 1 ? x : undefined; }, 30_000, 50, 'fill done'))!;
      assert.ok(s.prefetch.fillChunks > 0);
      await stop(m);
    } finally { await srv.close(); }
  });

  for (const damage of ['corrupt', 'missing'] as const) {
    it(`a ${damage} trace object is ignored with a warning; the image still works`, async () => {
      const obj = await traceObject();
      const saved = await fsp.readFile(obj);
      if (damage === 'corrupt') {
        const bad = Buffer.from(saved);
        bad[bad.length - 3]! ^= 0xff;
        await fsp.writeFile(obj, bad);
      } else await fsp.rm(obj);
      try {
        const m = await mount(`bad-${damage}`);
        await fsp.readdir(rootfs(m));
        const s = (await waitFor(async () => { const x = await stats(m); return x.prefetch.traceErrors === 1 ? x : undefined; }, 30_000, 50, 'trace refused'))!;
        assert.equal(s.prefetch.traces, 0);
        assert.equal(s.prefetch.fetched, 0);
        assert.match(m.stderr(), /prefetch trace ignored/);
        await workload(m);
        assert.equal((await stats(m)).ops.eio, 0);
        await stop(m);
      } finally { await fsp.writeFile(obj, saved); }
    });
  }
});
