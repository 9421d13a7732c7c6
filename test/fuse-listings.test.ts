// Issue 3, directory listings: the catalog's pre-encoded listings (src/catalog/dirblocks.ts) expanded by the transport,
// listings handed ahead of a scan (src/mount/listing-ahead.ts), listings longer than one READDIRPLUS page, seekdir
// cookies, and catalogs written before listings were pre-encoded (served by the JS path, same answers).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, findScan as scan, noDirSize, runOk, statNames, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeTreeTar } from './fixtures/tars.js';
import { type Mounted } from './fuse-mount-helper.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { rewriteLayerCatalog } from './helpers/catalog.js';
import { ROOT_INO } from '../src/catalog/schema.js';
import { buildDirBlocks } from '../src/catalog/dirblocks.js';
import { openLayerCatalog } from '../src/store/layer-catalog.js';
import { Store } from '../src/store/store.js';

let work: string;
let store: string;
let src: string;
let hex: string;
/** GNU tar's extraction of the layer. */
let extracted: string;
const BIG = 3000;
const DEPTH = 4, FANOUT = 3;
/** The mounts of this file's tests (stopped and unmounted at the end). */
let mounts: TrackedMounts;

before(async () => {
  work = await tmpDir('thinfs-fuse-listings-');
  store = path.join(work, 'store');
  mounts = trackedMounts(work, store);
  src = path.join(work, 'src');
  await thinfsOk(['init', store]);
  // A directory far longer than one READDIRPLUS page, names of every length up to 255 bytes, some not UTF-8.
  const big = path.join(src, 'big');
  await fsp.mkdir(big, { recursive: true });
  for (let i = 0; i < BIG; i++) {
    const stem = Buffer.from(`f${i}-`);
    const pad = Buffer.alloc(i % 250, i % 3 === 0 ? 0xe9 : 0x61); // 0xe9 alone is not UTF-8
    await fsp.writeFile(Buffer.from(path.join(big, '/') + Buffer.concat([stem, pad]).toString('latin1'), 'latin1'), `${i}\n`);
  }
  // A tree for a depth-first scan: every directory has a few files and FANOUT subdirectories.
  const grow = async (dir: string, depth: number): Promise<void> => {
    await fsp.mkdir(dir, { recursive: true });
    for (let f = 0; f < 3; f++) await fsp.writeFile(path.join(dir, `file${f}.txt`), `${dir} ${f}\n`.repeat(depth + 1));
    if (depth < DEPTH) for (let d = 0; d < FANOUT; d++) await grow(path.join(dir, `sub${d}`), depth + 1);
  };
  await grow(path.join(src, 'tree'), 0);
  await fsp.mkdir(path.join(src, 'empty'));
  await fsp.writeFile(path.join(src, 'hard1'), 'linked\n');
  await fsp.link(path.join(src, 'hard1'), path.join(src, 'hard2'));
  await fsp.symlink('tree/sub0/file0.txt', path.join(src, 'link'));
  await runOk('mkfifo', [path.join(src, 'fifo')]);
  const r = await thinfsJson<{ diffId: string }>(['ingest', await makeTreeTar(src, path.join(work, 'l.tar')), '--store', store, '--json', '--no-progress']);
  hex = r.diffId.slice(7);
  extracted = path.join(work, 'extracted');
  await fsp.mkdir(extracted);
  await runOk('tar', ['-xpf', path.join(work, 'l.tar'), '--numeric-owner', '-C', extracted]);
});

after(async () => {
  await mounts?.close();
  await cleanupTmpDirs();
});

const mount = (name: string): Promise<Mounted> => mounts.mount(name);
const stop = (m: Mounted): Promise<void> => mounts.stop(m);

/** Per entry: d_ino from the listing, st_ino from lstat, and the names sharing an inode (hardlinks). Python, bytes names. */
async function inodes(dir: string): Promise<{ mismatched: string[]; byIno: Record<string, string[]> }> {
  const py = `
import os, sys, json
bad, by = [], {}
for e in os.scandir(os.fsencode(sys.argv[1])):
    st = os.lstat(e.path)
    if e.inode() != st.st_ino: bad.append(e.name.decode('latin1'))
    by.setdefault(str(st.st_ino), []).append(e.name.decode('latin1'))
print(json.dumps({'mismatched': bad, 'byIno': by}))`;
  return JSON.parse(await runOk('python3', ['-c', py, dir])) as { mismatched: string[]; byIno: Record<string, string[]> };
}

/** The names of a directory read twice with perl: straight through, and again after seekdir to a cookie from telldir. */
async function seekdirCheck(dir: string, after: number): Promise<{ all: number; rest: number; again: number; same: boolean }> {
  const pl = `
opendir(my $d, $ARGV[0]) or die "$!";
my @all; my $pos; my $i = 0;
while (defined(my $n = readdir($d))) { push @all, $n; $pos = telldir($d) if ++$i == $ARGV[1]; }
seekdir($d, $pos);
my @again; while (defined(my $n = readdir($d))) { push @again, $n; }
my @rest = @all[$ARGV[1] .. $#all];
print scalar(@all), " ", scalar(@rest), " ", scalar(@again), " ", (join("\\0", @rest) eq join("\\0", @again) ? 1 : 0), "\\n";`;
  const [all, rest, again, same] = (await runOk('perl', ['-e', pl, dir, String(after)])).trim().split(' ').map(Number);
  return { all: all!, rest: rest!, again: again!, same: same === 1 };
}

describe('directory listings', () => {
  it('a scan sees what GNU tar extracted, with d_ino = st_ino, hardlinks sharing one, and long listings complete', async () => {
    const m = await mount('mnt-scan');
    const root = path.join(m.mp, 'layers', hex);
    const want = await scan(extracted), got = await scan(root);
    // Directory sizes are the filesystem's own (ext4 block multiples; thinfs: 4096): compared apart from them.
    assert.equal(noDirSize(got), noDirSize(want));
    // 7 names at the top, the long directory's, and the tree's 120 directories and 363 files below it.
    assert.equal(got.split('\n').length, 7 + BIG + 483, 'every entry listed once');

    const top = await inodes(root);
    assert.deepEqual(top.mismatched, [], 'the listing carries the inode numbers stat shows');
    assert.ok(Object.values(top.byIno).some((names) => names.sort().join() === 'hard1,hard2'), 'hardlinks share an inode number');
    const big = await inodes(path.join(root, 'big'));
    assert.deepEqual(big.mismatched, []);
    assert.equal(Object.keys(big.byIno).length, BIG, 'one inode per file of the long listing');
    await stop(m);
  });

  it('a depth-first scan is answered from listings handed ahead, not one JS round trip per directory', async () => {
    const m = await mount('mnt-ahead');
    const tree = path.join(m.mp, 'layers', hex, 'tree');
    const dirs = Number((await runOk('find', [tree, '-type', 'd', '-printf', 'x'])).length);
    assert.equal(dirs, 121); // 1 + 3 + 9 + 27 + 81
    const s = await m.stats();
    const viaJs = s.ops.requests.readdirplus?.n ?? 0;
    assert.ok(s.ops.listingsAhead >= dirs / 2, `most listings answered by the transport (${s.ops.listingsAhead} of ${dirs}; ${viaJs} by JS)`);
    assert.ok(viaJs < dirs / 2, `few listings needed the JS thread (${viaJs})`);
    assert.ok(s.ops.lookups < 20, `a scan needs no lookup per name (${s.ops.lookups} lookups)`);
    assert.match(await m.metrics(), /thinfs_fuse_listings_ahead_total [1-9]/);
    await stop(m);
  });

  it('seekdir to a telldir cookie resumes a long listing where it was, in the middle of a page too', async () => {
    const m = await mount('mnt-seek');
    for (const at of [1, 2, 3, 777, BIG]) {
      const r = await seekdirCheck(path.join(m.mp, 'layers', hex, 'big'), at);
      assert.equal(r.all, BIG + 2, 'every name and . and ..');
      assert.equal(r.again, r.rest, `after seekdir to entry ${at}: as many names as were left`);
      assert.ok(r.same, `after seekdir to entry ${at}: the same names`);
    }
    await stop(m);
  });

  it('catalogs ship without listings; the mount rebuilds them, and an older catalog shipping them gives the same answers', async () => {
    const m0 = await mount('mnt-new');
    const rebuilt = await scan(path.join(m0.mp, 'layers', hex));
    const s0 = await m0.stats();
    await stop(m0);
    // What ingest writes now: no dirblocks table in the catalog object.
    const { catalog, close } = await openLayerCatalog(await Store.open(store), hex);
    try { assert.equal(catalog.hasDirBlocks, false, 'the shipped catalog has no pre-encoded listings'); } finally { await close(); }
    assert.ok(s0.ops.listingsAhead > 0, 'the rebuilt listings are handed ahead like shipped ones');
    // The layer's catalog with its dirblocks table, as earlier versions wrote it.
    const restore = await rewriteLayerCatalog(store, hex, work, (db) => { db.transaction(() => buildDirBlocks(db))(); db.exec('VACUUM'); });
    try {
      const m = await mount('mnt-old');
      const root = path.join(m.mp, 'layers', hex);
      assert.equal(await scan(root), rebuilt);
      assert.deepEqual((await inodes(root)).mismatched, []);
      const r = await seekdirCheck(path.join(root, 'big'), 777);
      assert.ok(r.same && r.again === r.rest);
      const s = await m.stats();
      assert.ok(s.ops.listingsAhead > 0, 'the shipped listings are used');
      await stop(m);
    } finally {
      await restore();
    }
  });

  it('a damaged listing in a catalog gives EIO, and the log line carries the error with its stack', async () => {
    // A well-formed object whose catalog holds a listing cut short: the handler throws, unexpectedly.
    const restore = await rewriteLayerCatalog(store, hex, work, (db) => {
      // An older catalog (shipping its listings) with the root's cut short.
      db.transaction(() => buildDirBlocks(db))();
      db.prepare('UPDATE dirblocks SET ents = ? WHERE dir = ?').run(Buffer.alloc(10, 7), ROOT_INO);
    });
    try {
      const m = await mount('mnt-damaged');
      await assert.rejects(fsp.readdir(path.join(m.mp, 'layers', hex)), { code: 'EIO' });
      assert.equal((await fsp.readFile(path.join(m.mp, 'layers', hex, 'hard1'), 'utf8')), 'linked\n', 'the rest of the layer is served');
      await stop(m);
      const lines = m.stderr().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; op?: string; err?: { message?: string; stack?: string } });
      const failed = lines.find((l) => l.msg === 'operation failed: EIO');
      assert.ok(failed, `a log line for the failed operation:\n${m.stderr()}`);
      assert.equal(failed.op, 'readdirplus');
      assert.match(failed.err?.message ?? '', /malformed listing for directory inode 1/);
      assert.match(failed.err?.stack ?? '', /\n\s+at .*readdirBlock/, 'the stack is kept');
    } finally {
      await restore();
    }
  });
});

describe('the listings the transport keeps (src/fuse/native/listings-cache.c)', () => {
  it('a listing handed ahead once answers LOOKUPs and then the READDIR from C, held once', async () => {
    const m = await mount('mnt-one-copy');
    const root = path.join(m.mp, 'layers', hex);
    // Listing the layer's root (answered by JS) hands its subdirectories' listings ahead: big/ first.
    await fsp.readdir(root);
    await waitFor(async () => ((await m.stats()).ops.listingsKept >= 30 ? true : null), 10_000, 20, 'listings handed ahead');
    const before = await m.stats();
    // Names in big/, never listed nor looked in: answered from its listing handed ahead...
    const names = ['big/f1-a', 'big/f2-aa', 'big/f2999-' + 'a'.repeat(2999 % 250), 'big/nothing'];
    assert.deepEqual(await statNames(root, names), await statNames(extracted, names));
    const mid = await m.stats();
    assert.ok(mid.ops.lookupsByTransport - before.ops.lookupsByTransport >= names.length,
      `LOOKUPs answered by the transport (${mid.ops.lookupsByTransport - before.ops.lookupsByTransport})`);
    assert.equal(mid.ops.requests.lookup?.n ?? 0, before.ops.requests.lookup?.n ?? 0, 'no LOOKUP reached JS');
    // ...and so is its listing afterwards, every page, from the same copy.
    assert.equal((await fsp.readdir(path.join(root, 'big'))).length, BIG);
    const after = await m.stats();
    assert.equal(after.ops.listingsAhead - mid.ops.listingsAhead, 1, 'the READDIR was answered by the transport');
    assert.equal(after.ops.requests.readdirplus?.n ?? 0, mid.ops.requests.readdirplus?.n ?? 0, 'no READDIR reached JS');
    // big/'s listing is over 150 kB (3000 records of 50 bytes and more): not copied again for lookups, or on its way
    // from READDIR to LOOKUP; what was kept since is the few small listings the readahead handed next.
    assert.ok(after.ops.listingsKeptBytes - before.ops.listingsKeptBytes < 50 * BIG,
      `listings kept grew by ${after.ops.listingsKeptBytes - before.ops.listingsKeptBytes} bytes`);
    assert.equal(after.ops.listingsEvicted, 0);
    // Once read to its end the kernel keeps the listing; lookups in it are still the transport's.
    const last = await m.stats();
    assert.deepEqual(await statNames(root, ['big/nothing2']), ['big/nothing2 ENOENT']);
    assert.equal((await m.stats()).ops.lookupsByTransport - last.ops.lookupsByTransport, 1);
    await stop(m);
  });

  it('beyond its budget the least recently used listing is dropped; lookups in it are then answered by JS, alike', async () => {
    const m = await mounts.mount('mnt-budget', { extra: ['--listing-cache', '8K'] });
    const root = path.join(m.mp, 'layers', hex);
    // Every leaf directory of the tree (81 listings of 177 bytes, more than 8 KiB), a name looked up in each: the
    // lookup reaching JS keeps that directory's listing, pushing the oldest out.
    const leaves: string[] = [];
    const walk = (d: string, depth: number): void => {
      if (depth === DEPTH) { leaves.push(d); return; }
      for (let i = 0; i < FANOUT; i++) walk(`${d}/sub${i}`, depth + 1);
    };
    walk('tree', 0);
    assert.equal(leaves.length, 81);
    for (const d of leaves) assert.deepEqual(await statNames(root, [`${d}/nothing`]), [`${d}/nothing ENOENT`]);
    const before = await m.stats();
    assert.ok(before.ops.listingsEvicted > 0, `listings were dropped for the budget (${before.ops.listingsEvicted})`);
    assert.ok(before.ops.listingsKeptBytes <= 8192, `within the budget (${before.ops.listingsKeptBytes} bytes)`);
    // The first leaf's listing went first: a lookup in it reaches JS, which answers it right and hands the listing
    // back; the next is the transport's again.
    const first = leaves[0]!;
    assert.deepEqual(await statNames(root, [`${first}/nothing2`]), [`${first}/nothing2 ENOENT`]);
    const mid = await m.stats();
    assert.equal((mid.ops.requests.lookup?.n ?? 0) - (before.ops.requests.lookup?.n ?? 0), 1, 'answered by JS');
    assert.equal(mid.ops.lookupsByTransport, before.ops.lookupsByTransport);
    const files = [`${first}/file1.txt`, `${first}/file2.txt`];
    assert.deepEqual(await statNames(root, files), await statNames(extracted, files));
    const after = await m.stats();
    assert.equal(after.ops.lookupsByTransport - mid.ops.lookupsByTransport, 2, 'kept again: answered by the transport');
    assert.equal(await fsp.readFile(path.join(root, files[0]!), 'utf8'), await fsp.readFile(path.join(extracted, files[0]!), 'utf8'));
    // A listing handed ahead is dropped alike: a scan under this budget still sees every entry.
    assert.equal(noDirSize(await scan(path.join(root, 'tree'))), noDirSize(await scan(path.join(extracted, 'tree'))));
    await stop(m);
  });
});
