// Issue 3, operations: clean shutdown on SIGTERM/SIGINT, stale mountpoint (ENOTCONN) recovery at start,
// `thinfs unmount` ending the daemon, a store served over HTTP (not listable), and a prefetch list.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { createReadStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, run, sha256, sha256File, thinfs, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeTreeTar } from './fixtures/tars.js';
import { pseudoRandom } from './helpers/layers.js';
import { forceUnmount, isMounted, mountStore, type Mounted } from './fuse-mount-helper.js';
import { putTestImage } from './helpers/descriptor.js';
import { encodeImageDirName } from '../src/mount/names.js';

let work: string;
let store: string;
let hex: string;
const content = {
  'a.txt': Buffer.from('alpha\n'), 'dir/b.bin': pseudoRandom(3 * 1024 * 1024 + 5, 'ops-b'), 'dir/c.bin': pseudoRandom(600 * 1024, 'ops-c'),
  'e.bin': pseudoRandom(100 * 1024, 'ops-e'), // below the minimum chunk size: one chunk, the whole file
};
const live: Mounted[] = [];
const used = new Set<string>();
let server: Server | null = null;

before(async () => {
  work = await tmpDir('thinfs-fuse-ops-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const src = path.join(work, 'src');
  for (const [rel, data] of Object.entries(content)) {
    await fsp.mkdir(path.dirname(path.join(src, rel)), { recursive: true });
    await fsp.writeFile(path.join(src, rel), data);
  }
  const r = await thinfsJson<{ diffId: string }>(['ingest', await makeTreeTar(src, path.join(work, 'l.tar')), '--store', store, '--json', '--no-progress']);
  hex = r.diffId.slice(7);
});

after(async () => {
  for (const m of live) await m.stop();
  for (const mp of used) await forceUnmount(mp);
  if (server) await new Promise((r) => server!.close(r));
  await cleanupTmpDirs();
});

async function mount(name: string, o: { store?: string; extra?: string[] } = {}): Promise<Mounted> {
  const m = await mountStore(o.store ?? store, path.join(work, name), { cacheDir: path.join(work, `cache-${name}`), extra: o.extra });
  live.push(m);
  used.add(m.mp);
  return m;
}
function forget(m: Mounted): void { live.splice(live.indexOf(m), 1); }
const exitOf = (m: Mounted) => new Promise<number | null>((r) => (m.child.exitCode !== null ? r(m.child.exitCode) : m.child.once('exit', (c) => r(c))));

describe('daemon lifecycle', () => {
  it('SIGINT unmounts cleanly and exits 0', async () => {
    const m = await mount('mnt-int');
    assert.equal(await fsp.readFile(path.join(m.mp, 'layers', hex, 'a.txt'), 'utf8'), 'alpha\n');
    m.child.kill('SIGINT');
    assert.equal(await exitOf(m), 0);
    forget(m);
    assert.equal(await isMounted(m.mp), false);
  });

  it('a daemon killed with SIGKILL leaves ENOTCONN; the next mount detects and recovers it', async () => {
    const m = await mount('mnt-stale');
    await fsp.stat(path.join(m.mp, 'layers', hex));
    m.child.kill('SIGKILL');
    await exitOf(m);
    forget(m);
    await assert.rejects(fsp.readdir(m.mp), { code: 'ENOTCONN' }, 'the dead mount answers "Transport endpoint is not connected"');
    const again = await mount('mnt-stale');
    assert.equal(await sha256File(path.join(again.mp, 'layers', hex, 'dir/b.bin')), sha256(content['dir/b.bin']));
    assert.match(again.stderr(), /stale FUSE mountpoint/);
    assert.equal(await again.stop(), 0);
    forget(again);
  });

  it('thinfs unmount ends the daemon (exit 0); unmounting again is a clear error', async () => {
    const m = await mount('mnt-unmount');
    await fsp.stat(path.join(m.mp, 'layers', hex));
    const r = await thinfs(['unmount', m.mp]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await Promise.race([exitOf(m), new Promise((res) => setTimeout(() => res('timeout'), 10_000))]), 0);
    forget(m);
    assert.equal(await isMounted(m.mp), false);
    const again = await thinfs(['unmount', m.mp]);
    assert.equal(again.code, 4);
    assert.match(again.stderr, /not mounted/);
  });

  it('a live mountpoint is refused; bad options fail with usage errors', async () => {
    const m = await mount('mnt-busy');
    const r = await thinfs(['mount', store, m.mp, '--cache-dir', path.join(work, 'cache-busy2')], { timeoutMs: 20_000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already a mountpoint/);
    assert.equal(await fsp.readFile(path.join(m.mp, 'layers', hex, 'a.txt'), 'utf8'), 'alpha\n', 'the first mount still serves');
    const bad = await thinfs(['mount', store, path.join(work, 'x'), '--cache-quota', 'lots']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--cache-quota/);
    const missing = await thinfs(['mount', path.join(work, 'no-store'), path.join(work, 'y')]);
    assert.equal(missing.code, 4);
    assert.match(missing.stderr, /no thinfs store/);
  });
});

describe('stores and prefetch', () => {
  it('mounts a store served over HTTP without a listing: layers are found by diff id on demand', async () => {
    // A plain static file server (no directory listings), the way a web server or CDN would serve the store.
    server = createServer((req, res) => {
      const rel = decodeURIComponent((req.url ?? '/').split('?')[0]!);
      const file = path.join(store, path.normalize(rel));
      if (!file.startsWith(store + path.sep) || rel.endsWith('/')) { res.writeHead(404); res.end(); return; }
      fsp.stat(file).then((st) => {
        if (!st.isFile()) { res.writeHead(404); res.end(); return; }
        res.writeHead(200, { 'content-length': st.size });
        if (req.method === 'HEAD') res.end(); else createReadStream(file).pipe(res);
      }, () => { res.writeHead(404); res.end(); });
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const m = await mount('mnt-http', { store: `http://127.0.0.1:${port}` });
    assert.deepEqual(await fsp.readdir(path.join(m.mp, 'layers')), [], 'nothing listable');
    for (const [rel, data] of Object.entries(content)) {
      assert.equal(await sha256File(path.join(m.mp, 'layers', hex, rel)), sha256(data), rel);
    }
    // Listings of layers/ may be kept by the kernel for the 1 s its attributes live.
    await waitFor(async () => (await fsp.readdir(path.join(m.mp, 'layers'))).includes(hex), 5000, 200, 'a touched layer is listed');
    assert.deepEqual(await fsp.readdir(path.join(m.mp, 'layers')), [hex]);
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('--prefetch fetches the listed files right after mounting, before any read', async () => {
    const list = path.join(work, 'prefetch.txt');
    await fsp.writeFile(list, `# warm these\nlayers/${hex}/dir/b.bin\nlayers/${hex}/missing\n`);
    const m = await mount('mnt-prefetch', { extra: ['--prefetch', list] });
    await waitFor(() => m.stderr().includes('prefetch done'), 15_000, 100, 'prefetch done');
    const s = await m.stats();
    assert.equal(s.ops.reads, 0, 'no reader yet');
    assert.ok(s.cache.fetches >= 2, 'catalog and the chunks of dir/b.bin were fetched');
    const before = s.cache.fetches;
    assert.equal(await sha256File(path.join(m.mp, 'layers', hex, 'dir/b.bin')), sha256(content['dir/b.bin']));
    assert.equal((await m.stats()).cache.fetches, before, 'the read needed no fetch');
    assert.match(m.stderr(), /"missing":\["layers\/[0-9a-f]+\/missing"\]/, 'the missing path is reported');
    assert.equal(await m.stop(), 0);
    forget(m);
  });
});

// What the own FUSE transport promises the kernel and the kernel gives back (native-notes/fuse.md).
describe('kernel protocol', () => {
  it('forgotten nodes are dropped and found again with the same inode numbers', async () => {
    const m = await mount('mnt-forget');
    const root = path.join(m.mp, 'layers', hex);
    const inos = new Map<string, bigint>();
    for (const rel of Object.keys(content)) inos.set(rel, (await fsp.stat(path.join(root, rel), { bigint: true })).ino);
    const s = await m.stats();
    const held = s.ops.liveNodes;
    // Lookups the transport answered from a listing it keeps make no node here (their ids say what they are).
    assert.ok(held + s.ops.lookupsByTransport >= Object.keys(content).length, `the kernel holds the nodes it looked up (${held} + ${s.ops.lookupsByTransport})`);
    // Drop dentries and inodes: the kernel sends FORGET for every node it let go.
    await fsp.writeFile('/proc/sys/vm/drop_caches', '2');
    await waitFor(async () => (await m.stats()).ops.liveNodes < held, 10_000, 100, 'FORGET lowers the live node count');
    for (const [rel, ino] of inos) {
      assert.equal((await fsp.stat(path.join(root, rel), { bigint: true })).ino, ino, `${rel}: same inode number after FORGET`);
      assert.equal(await sha256File(path.join(root, rel)), sha256(content[rel as keyof typeof content]));
    }
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('inode numbers under layers/ and images/ are the same on every mount of the same store, whatever the order of first use', async () => {
    const st = path.join(work, 'stable-store');
    await thinfsOk(['init', st]);
    const layerOf = async (name: string, files: Record<string, string>) => {
      const src = path.join(work, `stable-${name}`);
      for (const [rel, text] of Object.entries(files)) {
        await fsp.mkdir(path.dirname(path.join(src, rel)), { recursive: true });
        await fsp.writeFile(path.join(src, rel), text);
      }
      const tar = await makeTreeTar(src, path.join(work, `stable-${name}.tar`));
      return (await thinfsJson<{ diffId: string }>(['ingest', tar, '--store', st, '--json', '--no-progress'])).diffId.slice(7);
    };
    const l1 = await layerOf('l1', { 'a.txt': 'a\n', 'dir/b.txt': 'b\n', 'dir/sub/c.txt': 'c\n' });
    const l2 = await layerOf('l2', { 'x.txt': 'x\n', 'dir/y.txt': 'y\n' });
    await putTestImage(st, 'one:v1', [l1]);
    await putTestImage(st, 'two:v1', [l1, l2]);
    const one = path.join('images', encodeImageDirName('one:v1')), two = path.join('images', encodeImageDirName('two:v1'));
    const paths = [
      `layers/${l1}`, `layers/${l1}/a.txt`, `layers/${l1}/dir/sub/c.txt`, `layers/${l2}`, `layers/${l2}/dir/y.txt`,
      one, `${one}/rootfs`, `${one}/rootfs/a.txt`, `${one}/rootfs/dir`, two, `${two}/rootfs/dir`, `${two}/rootfs/dir/y.txt`,
      `${two}/rootfs/dir/sub/c.txt`, `${two}/rootfs/x.txt`, '.thinfs/stats',
    ];
    // stat(1) looks the paths up in the order given: the second mount meets layers and images the other way round.
    const inodes = async (name: string, order: string[]) => {
      const m = await mount(name, { store: st });
      try {
        const out = (await run('stat', ['-c', '%n %i', ...order], { cwd: m.mp })).stdout.trim().split('\n');
        return new Map(out.map((l) => [l.slice(0, l.lastIndexOf(' ')), l.slice(l.lastIndexOf(' ') + 1)]));
      } finally { assert.equal(await m.stop(), 0); forget(m); }
    };
    const first = await inodes('mnt-stable-1', paths);
    const second = await inodes('mnt-stable-2', [...paths].reverse());
    assert.equal(first.size, paths.length, `every path stat'ed: ${[...first.keys()]}`);
    assert.equal(new Set(first.values()).size, paths.length, 'distinct paths, distinct inodes');
    for (const p of paths) assert.equal(second.get(p), first.get(p), `${p}: the same inode number on both mounts`);
  });

  it('OPEN requests are timed like the others (an open replies itself, with its backing file, after the request handler)', async () => {
    const m = await mount('mnt-open-timed');
    const root = path.join(m.mp, 'layers', hex);
    for (const f of ['dir/b.bin', 'dir/c.bin', 'e.bin'] as const) assert.equal(sha256(await fsp.readFile(path.join(root, f))), sha256(content[f]));
    const open = (await m.stats()).ops.requests.open;
    assert.ok(open && open.n >= 1, `opens reached the daemon: ${JSON.stringify(open)}`);
    assert.ok(open.totalSec > 0 && open.maxSec > 0 && open.maxSec <= open.totalSec, `their time is counted: ${JSON.stringify(open)}`);
    const line = (await m.metrics()).split('\n').find((l) => l.startsWith('thinfs_fuse_request_seconds_total{op="open"}'));
    assert.ok(line && Number(line.split(' ').pop()) > 0, `and exported: ${line}`);
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('misses inside a layer and its listings are cached by the kernel; misses under layers/ are not', async () => {
    const m = await mount('mnt-negative');
    const root = path.join(m.mp, 'layers', hex);
    await fsp.stat(root);
    // Answered by JS or by the transport (from the layer directory's listing it keeps).
    const lookups = async () => { const s = await m.stats(); return s.ops.lookups + s.ops.lookupsByTransport; };
    const absent = async (p: string) => assert.equal(await fsp.stat(p).then(() => 'found', (e: NodeJS.ErrnoException) => e.code), 'ENOENT');
    let before = await lookups();
    await absent(path.join(root, 'no-such-file'));
    await absent(path.join(root, 'no-such-file'));
    assert.equal(await lookups(), before + 1, 'the second miss inside the layer is answered by a cached negative entry');
    before = await lookups();
    await absent(path.join(m.mp, 'layers', 'f'.repeat(64)));
    await absent(path.join(m.mp, 'layers', 'f'.repeat(64)));
    assert.equal(await lookups(), before + 2, 'a layer may be published later: misses under layers/ always ask');
    const readdirs = async () => (await m.stats()).ops.readdirs;
    const names = (await fsp.readdir(path.join(root, 'dir'))).sort();
    assert.deepEqual(names, ['b.bin', 'c.bin']);
    const r1 = await readdirs();
    assert.deepEqual((await fsp.readdir(path.join(root, 'dir'))).sort(), names);
    assert.equal(await readdirs(), r1, 'the second listing comes from the kernel cache');
    const req = (await m.stats()).ops.requests;
    assert.ok(req.lookup && req.lookup.n >= 3 && req.lookup.totalSec > 0, 'per-request counters are kept');
    const metrics = await m.metrics();
    assert.match(metrics, /thinfs_fuse_requests_total\{op="lookup"\} [1-9]/);
    assert.match(metrics, /thinfs_fuse_request_seconds_total\{op="readdirplus"\} /);
    assert.match(metrics, /thinfs_fuse_live_nodes [1-9]/);
    assert.equal(await m.stop(), 0);
    forget(m);
  });
});

describe('FUSE passthrough', () => {
  const sha = (rel: keyof typeof content) => sha256(content[rel]);
  const mmapSha = async (p: string) => (await run('python3', ['-c',
    'import hashlib, mmap, sys\nf = open(sys.argv[1], "rb")\nm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\nprint(hashlib.sha256(m).hexdigest())', p])).stdout.trim();

  it('a file read to the end gets a whole-file copy; its next open is passed through: no READ reaches thinfs', async (t) => {
    const m = await mount('mnt-pt');
    const f = path.join(m.mp, 'layers', hex, 'dir/b.bin');
    assert.equal(await sha256File(f), sha('dir/b.bin'));
    const s0 = await waitFor(async () => { const s = await m.stats(); return s.cache.filesAssembled >= 1 && s.cache.assembling === 0 ? s : null; },
      15_000, 100, 'the whole-file copy of dir/b.bin') as Awaited<ReturnType<Mounted['stats']>>;
    if (!m.stderr().includes('"passthrough":true')) { await m.stop(); forget(m); return t.skip('kernel without FUSE passthrough'); }
    assert.equal(await sha256File(f), sha('dir/b.bin'), 'passed-through bytes are right');
    assert.equal(await mmapSha(f), sha('dir/b.bin'), 'mmap of a passed-through file');
    const s1 = await m.stats();
    assert.ok(s1.ops.opensPassthrough > s0.ops.opensPassthrough, 'the open was passed through');
    assert.equal(s1.ops.reads, s0.ops.reads, 'the kernel read the local copy itself');
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('a file read end first (as a loader reads an ELF file), then the rest: the read that makes every chunk local gets it its whole-file copy', async (t) => {
    // Kernel readahead of one page, no fetching ahead: the daemon sees the reads below and nothing more.
    const m = await mount('mnt-pt-endfirst', { extra: ['--readahead', '4K', '--no-file-ahead'] });
    const rel = 'dir/b.bin', size = content[rel].length;
    const f = path.join(m.mp, 'layers', hex, rel);
    const fh = await fsp.open(f, 'r');
    try {
      const at = async (pos: number) => {
        const b = Buffer.alloc(Math.min(4096, size - pos));
        const { bytesRead } = await fh.read(b, 0, b.length, pos);
        assert.ok(b.subarray(0, bytesRead).equals(content[rel].subarray(pos, pos + bytesRead)), `bytes at ${pos}`);
      };
      await at(size - 100); // the end, first: only the last chunk is local then
      // Then a page every 32 KiB (chunks are far bigger), back to front, never near the end again.
      for (let pos = Math.floor((size - 64 * 1024) / 32768) * 32768; pos >= 0; pos -= 32768) await at(pos);
    } finally { await fh.close(); }
    const s0 = await waitFor(async () => { const s = await m.stats(); return s.cache.filesAssembled >= 1 && s.cache.assembling === 0 ? s : null; },
      15_000, 100, `the whole-file copy of ${rel}`) as Awaited<ReturnType<Mounted['stats']>>;
    if (!m.stderr().includes('"passthrough":true')) { await m.stop(); forget(m); return t.skip('kernel without FUSE passthrough'); }
    assert.equal(await sha256File(f), sha(rel), 'passed-through bytes are right');
    const s1 = await m.stats();
    assert.ok(s1.ops.opensPassthrough > s0.ops.opensPassthrough, 'the next open was passed through');
    assert.equal(s1.ops.reads, s0.ops.reads, 'the kernel read the local copy itself');
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('whole-file copies count against the quota; a file above a quarter of it gets none', async () => {
    const quota = 8 * 1024 * 1024; // dir/b.bin (3 MiB) is above a quarter of it
    const m = await mount('mnt-pt-quota', { extra: ['--cache-quota', String(quota)] });
    const root = path.join(m.mp, 'layers', hex);
    for (const rel of Object.keys(content)) assert.equal(await sha256File(path.join(root, rel)), sha(rel as keyof typeof content));
    await new Promise((r) => setTimeout(r, 500));
    const s = await m.stats();
    assert.equal(s.cache.filesAssembled, 0, 'no copy of a file bigger than quota/4');
    assert.ok(s.cache.usedBytes <= quota);
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('a backing file the cache evicts is let go: the next open of that file is decided again, not passed through to it', async (t) => {
    const quota = 2 * 1024 * 1024; // below dir/b.bin (3 MiB): reading it evicts e.bin's chunk
    const m = await mount('mnt-pt-evict', { extra: ['--cache-quota', String(quota)] });
    const e = path.join(m.mp, 'layers', hex, 'e.bin');
    assert.equal(await sha256File(e), sha('e.bin'));
    assert.equal(await sha256File(e), sha('e.bin'));
    const s0 = await m.stats();
    if (!s0.ops.opensPassthrough) { await m.stop(); forget(m); return t.skip('kernel without FUSE passthrough'); }
    assert.equal(await sha256File(path.join(m.mp, 'layers', hex, 'dir/b.bin')), sha('dir/b.bin'));
    const s1 = await m.stats();
    assert.ok(s1.cache.evictions > s0.cache.evictions, 'reading dir/b.bin evicted chunks');
    assert.equal(await sha256File(e), sha('e.bin'), 'right bytes after its chunk was evicted');
    const s2 = await m.stats();
    // Held by the transport, the evicted chunk would have been handed to the kernel again, with no word to JS.
    assert.equal(s2.ops.opensServed + s2.ops.opensPassthrough, s1.ops.opensServed + s1.ops.opensPassthrough + 1, 'the open was decided again');
    assert.ok(s2.cache.usedBytes <= quota);
    assert.equal(await m.stop(), 0);
    forget(m);
  });

  it('a one-chunk file passes through to its cached chunk, re-verified at open: a corrupted one is refetched', async () => {
    const cacheName = 'mnt-pt-verify';
    let m = await mount(cacheName);
    const f = path.join(m.mp, 'layers', hex, 'e.bin');
    assert.equal(await sha256File(f), sha('e.bin'));
    assert.equal(await m.stop(), 0);
    forget(m);
    // Flip a byte of the cached chunk: the next daemon must not hand that file to the kernel.
    const chunk = path.join(work, `cache-${cacheName}`, 'chunks', sha('e.bin').slice(0, 2), sha('e.bin').slice(2));
    const bytes = await fsp.readFile(chunk);
    bytes[1234] ^= 0xff;
    await fsp.writeFile(chunk, bytes);
    m = await mount(cacheName);
    assert.equal(await sha256File(f), sha('e.bin'), 'right bytes despite the corrupted cache file');
    assert.equal(await mmapSha(f), sha('e.bin'));
    const s = await m.stats();
    assert.equal(s.cache.corruptDropped, 1, 'the corrupted chunk was detected and dropped');
    assert.ok(s.cache.fetches >= 1, 'and fetched again from the store');
    assert.equal(await m.stop(), 0);
    forget(m);
  });
});
