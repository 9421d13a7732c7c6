// Issue 3, acceptance 3-6: laziness measured from the mount's own counters, EIO on a damaged store object,
// the node-local cache under a quota and across a daemon restart, and 16 concurrent reader processes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, run, sha256, sha256File, thinfsJson, thinfsOk, tmpDir } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { type Mounted } from './fuse-mount-helper.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { Store } from '../src/store/store.js';
import { CatalogReader } from '../src/catalog/reader.js';
import { objectPath } from '../src/store/layout.js';

const MiB = 1024 * 1024;
const BIG_FILES = 20;            // 20 x 10 MiB + small files: ~210 MB
const BIG_SIZE = 10 * MiB + 4321;
const MAX_CHUNK = 4 * MiB;       // the chunker's maximum (src/chunker DEFAULT_CHUNKING)

interface IngestJson { diffId: string; catalog: string }
interface FileInfo { rel: string; size: number; sha: string }

let work: string;
let store: string;
let big: { hex: string; files: FileInfo[]; bytes: number; catalogFramed: number };
let small: { hex: string; files: FileInfo[] };
/** The mounts of this file's tests (stopped and unmounted at the end). */
let mounts: TrackedMounts;

/** A layer of these files (test/helpers/layers.ts makeLayer), ingested into the store; its tree and tar removed after. */
async function ingestFiles(label: string, files: Array<{ rel: string; data: Buffer }>): Promise<{ hex: string; files: FileInfo[] }> {
  const l = await makeLayer(work, label, async (dir) => {
    for (const f of files) {
      await fsp.mkdir(path.dirname(path.join(dir, f.rel)), { recursive: true });
      await fsp.writeFile(path.join(dir, f.rel), f.data);
    }
  });
  const r = await thinfsJson<IngestJson>(['ingest', l.file, '--store', store, '--json', '--no-progress']);
  await fsp.rm(l.file);
  await fsp.rm(path.join(work, `${label}.d`), { recursive: true });
  return { hex: r.diffId.slice(7), files: files.map((f) => ({ rel: f.rel, size: f.data.length, sha: sha256(f.data) })) };
}

const mount = (name: string, cache: string, o: { quota?: string; memCache?: string; extra?: string[] } = {}): Promise<Mounted> =>
  mounts.mount(name, { cache, ...o });
const stop = (m: Mounted): Promise<void> => mounts.stop(m);

/** Chunk hashes of a file, read from the layer catalog with the core API (the test's own view of the store). */
async function chunksOf(hex: string, rel: string): Promise<string[]> {
  const s = await Store.open(store);
  const m = (await s.getLayer(`sha256:${hex}`))!;
  const f = path.join(work, `catalog-${m.catalog}.sqlite`);
  await fsp.writeFile(f, await s.getObject(m.catalog));
  const cat = CatalogReader.open(f);
  try { return cat.chunks(cat.resolve(rel)!.ino).map((c) => c.hash); } finally { cat.close(); }
}

async function duBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fsp.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) total += (await fsp.stat(path.join(e.parentPath, e.name))).size;
  }
  return total;
}

before(async () => {
  work = await tmpDir('thinfs-fuse-lazy-');
  store = path.join(work, 'store');
  mounts = trackedMounts(work, store);
  await thinfsOk(['init', store]);
  // Pseudo-random content: it does not compress, so bytes fetched measure bytes needed.
  const files: Array<{ rel: string; data: Buffer }> = [];
  for (let i = 0; i < BIG_FILES; i++) files.push({ rel: `data/big-${String(i).padStart(2, '0')}.bin`, data: pseudoRandom(BIG_SIZE, `big${i}`) });
  for (let i = 0; i < 40; i++) files.push({ rel: `small/s-${i}.bin`, data: pseudoRandom(1024 + i * 1500, `s${i}`) });
  files.push({ rel: 'small/one-kib.txt', data: pseudoRandom(1024, 'kib') });
  const b = await ingestFiles('big', files);
  const manifest = JSON.parse(await fsp.readFile(path.join(store, 'layers', `${b.hex}.json`), 'utf8')) as { catalog: string };
  const catalogFramed = (await fsp.stat(path.join(store, objectPath(manifest.catalog)))).size;
  big = { ...b, bytes: files.reduce((n, f) => n + f.data.length, 0), catalogFramed };
  small = await ingestFiles('small', [0, 1, 2].map((i) => ({ rel: `f${i}.bin`, data: pseudoRandom(3 * MiB + i, `c${i}`) })));
});

after(async () => {
  await mounts?.close();
  await cleanupTmpDirs();
});

describe('laziness', () => {
  it('reading 1 KiB of a ~200 MB layer fetches only the catalog and the chunks under that read', async () => {
    assert.ok(big.bytes > 200e6, 'the layer is ~200 MB');
    const m = await mount('mnt-lazy', 'cache-lazy');
    const root = path.join(m.mp, 'layers', big.hex);
    assert.equal(await sha256File(path.join(root, 'small/one-kib.txt')), big.files.find((f) => f.rel === 'small/one-kib.txt')!.sha);
    const s1 = await m.stats();
    // A 1 KiB file is inlined in the catalog: the catalog is the only object fetched.
    assert.equal(s1.cache.catalogFetches, 1);
    assert.equal(s1.cache.fetches, 1, 'only the catalog object was fetched');
    assert.equal(s1.cache.fetchedBytes, big.catalogFramed);

    // The first KiB of a 10 MiB file: the read plus kernel readahead (at most 1 MiB here: --readahead 1M)
    // lie within [0, 1 MiB + 4 KiB), so at most the chunks covering that range are fetched: <= 1 MiB plus
    // one maximum-size chunk (4 MiB). The whole layer is ~200 MB, so the bound is < 3% of it.
    const fh = await fsp.open(path.join(root, 'data/big-07.bin'));
    const buf = Buffer.alloc(1024);
    await fh.read(buf, 0, 1024, 0);
    await fh.close();
    assert.deepEqual(buf, pseudoRandom(BIG_SIZE, 'big7').subarray(0, 1024));
    const s2 = await m.stats();
    const chunkBytes = s2.cache.fetchedBytes - s1.cache.fetchedBytes;
    const bound = MiB + MAX_CHUNK;
    assert.ok(chunkBytes > 0 && chunkBytes <= bound, `fetched ${chunkBytes} bytes of chunks for a 1 KiB read (bound ${bound})`);
    assert.ok(s2.cache.fetchedBytes < 0.03 * big.bytes, `total fetched ${s2.cache.fetchedBytes} < 3% of ${big.bytes}`);
    const metrics = await m.metrics();
    assert.match(metrics, new RegExp(`^thinfs_store_fetched_bytes_total ${s2.cache.fetchedBytes}$`, 'm'), 'Prometheus agrees with the stats');
    await stop(m);
  });
});

describe('integrity', () => {
  it('a flipped byte in a stored chunk gives EIO for that file only, logged with the object name', async () => {
    const victim = (await chunksOf(small.hex, 'f1.bin'))[0]!;
    const gone = (await chunksOf(small.hex, 'f2.bin'))[0]!;
    const victimFile = path.join(store, objectPath(victim));
    const goneFile = path.join(store, objectPath(gone));
    const good = await fsp.readFile(victimFile);
    const goneBytes = await fsp.readFile(goneFile);
    const bad = Buffer.from(good);
    bad[bad.length - 100]! ^= 0x01;
    await fsp.writeFile(victimFile, bad);
    await fsp.rm(goneFile);
    const m = await mount('mnt-corrupt', 'cache-corrupt');
    try {
      const root = path.join(m.mp, 'layers', small.hex);
      await assert.rejects(fsp.readFile(path.join(root, 'f1.bin')), { code: 'EIO' });
      await assert.rejects(fsp.readFile(path.join(root, 'f2.bin')), { code: 'EIO' }, 'missing object: EIO too');
      const cat = await run('cat', [path.join(root, 'f1.bin')]);
      assert.notEqual(cat.code, 0);
      assert.match(cat.stderr, /Input\/output error/);
      assert.equal(await sha256File(path.join(root, 'f0.bin')), small.files[0]!.sha, 'other files still read');
      const s = await m.stats();
      assert.ok(s.ops.eio >= 3 && s.cache.errors >= 2);
      assert.ok(m.stderr().includes(victim) && m.stderr().includes(gone), 'log lines name the bad objects');
      // Failures are not cached: once the store is repaired the same mount reads the file.
      await fsp.writeFile(victimFile, good);
      await fsp.writeFile(goneFile, goneBytes);
      assert.equal(await sha256File(path.join(root, 'f1.bin')), small.files[1]!.sha);
      assert.equal(await sha256File(path.join(root, 'f2.bin')), small.files[2]!.sha);
      // Nothing corrupt was written to the node-local cache.
      for (const h of [victim, gone]) {
        const cached = await fsp.readFile(path.join(m.cacheDir, 'chunks', h.slice(0, 2), h.slice(2))).catch(() => null);
        if (cached) assert.equal(sha256(cached), h);
      }
    } finally {
      await fsp.writeFile(victimFile, good);
      await fsp.writeFile(goneFile, goneBytes);
      await stop(m);
    }
  });

  it('a corrupted file in the node-local cache is dropped and refetched', async () => {
    const m1 = await mount('mnt-cc1', 'cache-cc');
    const rel = 'f0.bin';
    assert.equal(await sha256File(path.join(m1.mp, 'layers', small.hex, rel)), small.files[0]!.sha);
    await stop(m1);
    const h = (await chunksOf(small.hex, rel))[0]!;
    const cached = path.join(work, 'cache-cc', 'chunks', h.slice(0, 2), h.slice(2));
    const b = await fsp.readFile(cached);
    b[7]! ^= 0xff;
    await fsp.writeFile(cached, b);
    // Served reads (not passthrough): the first daemon built a whole-file copy, which a passed-through open would use
    // instead of the damaged chunk (test/fuse-ops.test.ts covers a damaged chunk under passthrough).
    const m2 = await mount('mnt-cc2', 'cache-cc', { extra: ['--no-passthrough'] });
    assert.equal(await sha256File(path.join(m2.mp, 'layers', small.hex, rel)), small.files[0]!.sha);
    const s = await m2.stats();
    assert.equal(s.cache.corruptDropped, 1);
    assert.equal(s.cache.fetches, 1, 'exactly the damaged chunk was fetched again (catalog and other chunks came from the cache dir)');
    await stop(m2);
  });
});

describe('node-local cache', () => {
  it('quota at 1/3 of the working set: full read correct, cache under quota, restart reuses cached chunks', async () => {
    const quota = Math.floor(big.bytes / 3);
    const cacheDir = path.join(work, 'cache-quota');
    // Chunk-level accounting, so every read is served (no whole-file copies for passthrough in this test).
    const m1 = await mount('mnt-q1', 'cache-quota', { quota: String(quota), memCache: '8M', extra: ['--no-passthrough'] });
    const root1 = path.join(m1.mp, 'layers', big.hex);
    for (const f of big.files) assert.equal(await sha256File(path.join(root1, f.rel)), f.sha, f.rel);
    const s1 = await m1.stats();
    assert.ok(s1.cache.evictions > 0, 'the quota forced evictions');
    assert.ok(s1.cache.usedBytes <= quota, `index says ${s1.cache.usedBytes} <= ${quota}`);
    await stop(m1);
    // The quota covers the catalog too.
    const onDisk = await duBytes(path.join(cacheDir, 'chunks')) + await duBytes(path.join(cacheDir, 'catalogs'));
    assert.ok(onDisk <= quota, `chunks and catalog on disk ${onDisk} <= quota ${quota}`);
    assert.ok(onDisk >= quota * 0.5, `the cache is actually used (${onDisk} bytes)`);

    // Restart: the index is rebuilt from the directory; the most recently read file is served without the store.
    const m2 = await mount('mnt-q2', 'cache-quota', { quota: String(quota), memCache: '8M', extra: ['--no-passthrough'] });
    const s2a = await m2.stats();
    assert.equal(s2a.cache.usedBytes, onDisk, 'index rebuilt from what is on disk');
    const last = big.files.filter((f) => f.rel.startsWith('data/')).at(-1)!;
    const lastChunks = await chunksOf(big.hex, last.rel);
    assert.equal(await sha256File(path.join(m2.mp, 'layers', big.hex, last.rel)), last.sha);
    const s2 = await m2.stats();
    assert.equal(s2.cache.fetches, 0, 'no store fetch at all: catalog and chunks came from the cache dir');
    assert.ok(s2.cache.diskHits >= new Set(lastChunks).size, 'every chunk was a cache-dir hit');
    await stop(m2);
  });

  it('16 parallel reader processes over two mounts sharing one cache dir get correct bytes', async () => {
    const a = await mount('mnt-par-a', 'cache-par', { memCache: '16M' });
    const b = await mount('mnt-par-b', 'cache-par', { memCache: '16M' });
    const same = big.files.find((f) => f.rel === 'data/big-03.bin')!;
    const others = big.files.filter((f) => f.rel.startsWith('data/') && f !== same).slice(0, 8);
    const jobs: Array<{ mp: string; f: FileInfo }> = [];
    for (let i = 0; i < 8; i++) jobs.push({ mp: i % 2 ? a.mp : b.mp, f: same });
    for (let i = 0; i < 8; i++) jobs.push({ mp: i % 2 ? b.mp : a.mp, f: others[i]! });
    const results = await Promise.all(jobs.map((j) => run('sha256sum', [path.join(j.mp, 'layers', big.hex, j.f.rel)])));
    results.forEach((r, i) => {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.split(' ')[0], jobs[i]!.f.sha, `reader ${i} (${jobs[i]!.f.rel})`);
    });
    // Same files again through dd with odd block sizes, so reads straddle chunk boundaries differently.
    const dd = await Promise.all(jobs.slice(0, 16).map((j, i) => run('bash', ['-c',
      `dd if="$1" bs=${[4097, 65536, 1048575, 333333][i % 4]} status=none | sha256sum`, 'x', path.join(j.mp, 'layers', big.hex, j.f.rel)])));
    dd.forEach((r, i) => assert.equal(r.stdout.split(' ')[0], jobs[i]!.f.sha, `dd reader ${i}`));
    const [sa, sb] = [await a.stats(), await b.stats()];
    assert.equal(sa.ops.eio + sb.ops.eio, 0);
    await stop(a);
    await stop(b);
  });
});
