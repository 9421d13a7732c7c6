// Trace page data (`thinfs trace attach --pages`): a recording notes which parts of each chunk the workload read (the
// recording mount reads page by page); attach packs the traced bytes into a few segments, a chunk read in part as the
// parts read. A fresh node replays the segments, lands whole chunks as if fetched, and puts the parts in the kernel's
// page cache when the file is first opened: the process reads them with no READ reaching the daemon and no chunk
// fetched whole. A page outside the trace is still served right (its chunk fetched); a damaged segment is a warning and
// its chunks are read as without page data, never wrong bytes; gc keeps segments while the trace names them.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, sha256, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { putTestImage } from './helpers/descriptor.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';
import { objectPath } from '../src/store/layout.js';
import { Store } from '../src/store/store.js';
import { encodeImageDirName } from '../src/mount/names.js';
import { parseTrace, type Trace } from '../src/format/trace.js';

const IMAGE = 'libs:v1';
const PAGE = 4096;
let work: string;
let store: string;
const lib = pseudoRandom(3 << 20, 'libbig.so');
const small = pseudoRandom(20_000, 'small.py');
/** Pages of the big file the workload reads (as a loader maps a library: here and there). */
const PAGES = [0, 1, 2, 300, 301, 517, 700];
const mounts: Mounted[] = [];

interface PStats { traces: number; tracesDone: number; fetched: number; pageSegments: number; pageSegmentErrors: number; pageChunks: number; pagePushes: number; pageBytes: number }
type Stats = Awaited<ReturnType<Mounted['stats']>> & { prefetch: PStats };
const stats = async (m: Mounted) => (await m.stats()) as Stats;
const rootfs = (m: Mounted) => path.join(m.mp, 'images', encodeImageDirName(IMAGE), 'rootfs');

async function mount(name: string, extra: string[] = []): Promise<Mounted> {
  const m = await mountStore(store, path.join(work, `mnt-${name}`), { cacheDir: path.join(work, `cache-${name}`), extra });
  mounts.push(m);
  return m;
}
async function stop(m: Mounted): Promise<void> {
  assert.equal(await m.stop(), 0, m.stderr().slice(-2000));
  mounts.splice(mounts.indexOf(m), 1);
}

/** Reads the pages (pread, one page each) and the small file; checks every byte. */
async function workload(m: Mounted, pages = PAGES): Promise<void> {
  const fh = await fsp.open(path.join(rootfs(m), 'lib/libbig.so'), 'r');
  try {
    for (const p of pages) {
      const b = Buffer.alloc(PAGE);
      const { bytesRead } = await fh.read(b, 0, PAGE, p * PAGE);
      assert.equal(bytesRead, PAGE);
      assert.ok(b.equals(lib.subarray(p * PAGE, (p + 1) * PAGE)), `page ${p} has the file's bytes`);
    }
  } finally { await fh.close(); }
  assert.equal(sha256(await fsp.readFile(path.join(rootfs(m), 'lib/small.py'))), sha256(small));
}

async function replayed(m: Mounted): Promise<Stats> {
  await fsp.readdir(rootfs(m)); // the image's first touch
  return (await waitFor(async () => { const x = await stats(m); return x.prefetch.tracesDone === 1 ? x : undefined; }, 60_000, 50, 'trace replayed'))!;
}

describe('trace page data', { timeout: 300_000 }, () => {
  let trace: Trace;
  let attached: { pages: { segments: number; chunks: number; partly: number; bytes: number } };

  before(async () => {
    work = await tmpDir('thinfs-pages-');
    store = path.join(work, 'store');
    await thinfsOk(['init', store]);
    const l = await makeLayer(work, 'libs', async (dir) => {
      await fsp.mkdir(path.join(dir, 'lib'), { recursive: true });
      await fsp.writeFile(path.join(dir, 'lib/libbig.so'), lib);
      await fsp.writeFile(path.join(dir, 'lib/small.py'), small);
    });
    const r = await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', store, '--json', '--no-progress']);
    await putTestImage(store, IMAGE, [r.diffId.slice(7)]);

    const traceFile = path.join(work, 'libs.trace');
    const rec = await mount('record', ['--record', traceFile]);
    await workload(rec);
    await stop(rec);
    trace = parseTrace(await fsp.readFile(traceFile));
    attached = await thinfsJson(['trace', 'attach', '-s', store, IMAGE, traceFile, '--pages', '--json']);
  });
  after(async () => {
    for (const m of mounts.splice(0)) { await m.stop().catch(() => {}); await forceUnmount(m.mp); }
    await cleanupTmpDirs();
  });

  it('the recording notes the pages read of the big file, and attach packs them as page data', () => {
    const parts = trace.chunks.filter((c) => c.ranges);
    assert.ok(parts.length >= 1, `chunks read in part carry their ranges: ${JSON.stringify(trace.chunks.map((c) => [c.size, c.ranges]))}`);
    const readOfBig = parts.reduce((n, c) => n + c.ranges!.reduce((a, r) => a + r[1], 0), 0);
    // Page by page: no readahead on the recording mount, so what was read is the workload's pages (a page may straddle
    // two chunks: then both record their part of it).
    assert.ok(readOfBig >= PAGES.length * PAGE && readOfBig <= (PAGES.length + 4) * PAGE, `recorded ${readOfBig} bytes of the big file`);
    assert.ok(attached.pages.segments >= 1 && attached.pages.partly === parts.length, JSON.stringify(attached));
    assert.equal(attached.pages.bytes, readOfBig + trace.chunks.filter((c) => !c.ranges).reduce((n, c) => n + c.size, 0));
  });

  for (const [name, flags] of [['node', []], ['node-nopt', ['--no-passthrough']]] as Array<[string, string[]]>) it(`a fresh node${flags.length ? ` (${flags.join(' ')}: kernels without FUSE passthrough)` : ''} gets the traced bytes from the segments alone; the pages are in the page cache at open: no READ, no chunk fetched whole`, async () => {
    const m = await mount(name, flags);
    const s = await replayed(m);
    assert.equal(s.prefetch.pageSegments, attached.pages.segments, JSON.stringify(s.prefetch));
    assert.equal(s.prefetch.fetched, 0, 'no traced chunk fetched on its own');
    assert.equal(s.prefetch.pageChunks, trace.chunks.length);
    const before = s.cache.fetches;
    const reads0 = s.ops.reads;
    await workload(m);
    const a = await stats(m);
    assert.equal(a.cache.fetches, before, 'the workload fetched nothing: the small file landed from a segment, the pages were pushed');
    assert.ok(a.prefetch.pagePushes >= 1 && a.prefetch.pageBytes >= PAGES.length * PAGE, JSON.stringify(a.prefetch));
    // The big file's pages were in the page cache: its reads never reached the daemon (the small file's may).
    assert.ok(a.ops.reads - reads0 <= 1, `READs reaching the daemon: ${a.ops.reads - reads0}`);
    // A page the trace does not hold: served right (its chunk fetched whole, as without page data).
    await workload(m, [100, 650]);
    assert.ok((await stats(m)).cache.fetches > before, 'the page outside the trace was fetched');
    await stop(m);
  });

  it('a damaged segment is a warning; its chunks are read as without page data, with the right bytes', async () => {
    const d = (await (await Store.open(store)).getImage(IMAGE))!;
    const t = parseTrace(await (await Store.open(store)).getObject(d.trace!.sha256));
    const seg = t.pages![0]!;
    const file = path.join(store, objectPath(seg.hash));
    const good = await fsp.readFile(file);
    const bad = Buffer.from(good);
    bad[bad.length - 5]! ^= 0xff;
    await fsp.writeFile(file, bad);
    try {
      const m = await mount('damaged');
      const s = await replayed(m);
      assert.ok(s.prefetch.pageSegmentErrors >= 1, JSON.stringify(s.prefetch));
      await workload(m);
      assert.match(m.stderr(), /page data segment failed/);
      await stop(m);
    } finally { await fsp.writeFile(file, good); }
  });

  it('gc keeps the segments while the trace names them, and collects them after detach', async () => {
    const segs = trace && (await (async () => {
      const st = await Store.open(store);
      const d = (await st.getImage(IMAGE))!;
      return parseTrace(await st.getObject(d.trace!.sha256)).pages!.map((p) => path.join(store, objectPath(p.hash)));
    })());
    await thinfsOk(['gc', '-s', store, '--grace', '0']);
    for (const f of segs) await fsp.access(f);
    await thinfsOk(['trace', 'detach', '-s', store, IMAGE]);
    await thinfsOk(['gc', '-s', store, '--grace', '0']);
    for (const f of segs) await assert.rejects(fsp.access(f), 'collected once no trace names it');
  });
});
