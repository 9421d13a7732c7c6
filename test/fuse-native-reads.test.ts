// Issue 14, the read path off the JS thread. Without passthrough, reads of files whose verified bytes are in the
// node-local cache are answered by the FUSE transport's thread (src/fuse/native/fileread.c): exact bytes (cmp against
// the source tree), never seen by the JS thread (its read counter stays 0, the transport's counts them), and a cache
// file written to after it was verified is never served (JS serves the node from chunks it verifies again). Cold reads
// decode and verify store objects on the threadpool (src/store/native/decode.c): a damaged object is EIO, never bytes.
// Cold reads of a file served by READs (with or without passthrough) are answered by the transport too once its chunks
// have landed (fetched, verified and written to the cache in one threadpool job): the JS thread sees the first READs
// only, a changed cache file is verified again before any of its bytes are served, a damaged object is EIO. The same
// warm reads through an image view (images/NAME/rootfs, what rootless podman's --rootfs uses) are the transport's too.
// With passthrough, the first opens of files handed over with their directory are the transport's (it gives the kernel
// the verified chunk file); a damaged one is refused there and opened by JS, which fetches it again.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, run, sha256, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { type Mounted } from './fuse-mount-helper.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { Store } from '../src/store/store.js';
import { CatalogReader } from '../src/catalog/reader.js';
import { objectPath } from '../src/store/layout.js';
import { encodeImageDirName } from '../src/mount/names.js';
import { putTestImage } from './helpers/descriptor.js';

const MiB = 1024 * 1024;

let work: string;
let store: string;
let src: string;
let hex: string;
/** The mounts of this file's tests (stopped and unmounted at the end). */
let mounts: TrackedMounts;

/** Files of the layer: a multi-chunk file (served from its whole-file copy), single-chunk files, a tiny one, compressible text. */
const FILES: Array<{ rel: string; data: Buffer }> = [
  { rel: 'big/multi.bin', data: pseudoRandom(13 * MiB + 777, 'multi') },
  ...Array.from({ length: 12 }, (_, i) => ({ rel: `small/s${i}.bin`, data: pseudoRandom(2000 + i * 9000, `s${i}`) })),
  // Tiny: its bytes live in the catalog (no chunk), handed to the transport with its directory.
  { rel: 'small/tiny.txt', data: Buffer.from('a file small enough to be inline in its catalog\n') },
  { rel: 'text/words.txt', data: Buffer.from(Array.from({ length: 40000 }, (_, i) => `line ${i} of a compressible file\n`).join('')) },
];

const mount = (name: string, cache: string, extra: string[] = []): Promise<Mounted> =>
  mounts.mount(name, { cache, extra: ['--no-passthrough', ...extra] });
const stop = (m: Mounted): Promise<void> => mounts.stop(m);

/** cmp of every file of the layer through the mount against the source tree. */
async function cmpAll(m: Mounted): Promise<void> {
  for (const f of FILES) {
    const r = await run('cmp', [path.join(src, f.rel), path.join(m.mp, 'layers', hex, f.rel)]);
    assert.equal(r.code, 0, `${f.rel} differs: ${r.stdout}${r.stderr}`);
  }
}

async function chunksOf(rel: string): Promise<string[]> {
  return (await chunkRefsOf(rel)).map((c) => c.hash);
}

async function chunkRefsOf(rel: string): Promise<Array<{ hash: string; offset: number; size: number }>> {
  const s = await Store.open(store);
  const man = (await s.getLayer(`sha256:${hex}`))!;
  const f = path.join(work, `catalog-${man.catalog}.sqlite`);
  await fsp.writeFile(f, await s.getObject(man.catalog));
  const cat = CatalogReader.open(f);
  try { return cat.chunks(cat.resolve(rel)!.ino).map((c) => ({ hash: c.hash, offset: c.offset, size: c.size })); } finally { cat.close(); }
}

/** Overwrite one byte of a file in place (same inode and size: only its times tell). */
async function flipByte(file: string, at: number): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] ^= 0x5a;
    await fh.write(b, 0, 1, at);
  } finally { await fh.close(); }
}

/** Drop clean page-cache pages (the FUSE inodes' too), not dentries or inodes: the next read of a file reaches the daemon. */
async function dropPages(): Promise<void> {
  await run('sync', []);
  await fsp.writeFile('/proc/sys/vm/drop_caches', '1');
}

/** Reads an open file from its start in 1 MiB reads: the bytes got until the end or the first error, and that error. */
async function readFrom(fh: fsp.FileHandle, size: number): Promise<{ data: Buffer; err: NodeJS.ErrnoException | null }> {
  const b = Buffer.alloc(size);
  let got = 0;
  try {
    while (got < size) {
      const { bytesRead } = await fh.read(b, got, Math.min(MiB, size - got), got);
      if (!bytesRead) break;
      got += bytesRead;
    }
  } catch (e) { return { data: b.subarray(0, got), err: e as NodeJS.ErrnoException }; }
  return { data: b.subarray(0, got), err: null };
}

before(async () => {
  work = await tmpDir('thinfs-native-reads-');
  store = path.join(work, 'store');
  mounts = trackedMounts(work, store);
  await thinfsOk(['init', store]);
  const l = await makeLayer(work, 'layer', async (dir) => {
    for (const f of FILES) {
      await fsp.mkdir(path.dirname(path.join(dir, f.rel)), { recursive: true });
      await fsp.writeFile(path.join(dir, f.rel), f.data);
    }
  });
  src = path.join(work, 'layer.d');
  // Without packs: every chunk is fetched as its own object, so the cold test's damaged objects are the ones read.
  const r = await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', store, '--json', '--no-progress'], { env: { THINFS_PACKS: '0' } });
  hex = r.diffId.slice(7);
  // Warm a cache: a full read (cold, served by JS), then wait for the multi-chunk file's whole-file copy.
  const m = await mount('mnt-fill', 'cache-warm');
  await cmpAll(m);
  await waitFor(async () => { const s = await m.stats(); return s.cache.filesAssembled >= 1 && s.cache.assembling === 0; }, 60_000, 100, 'whole-file copy');
  await stop(m);
});

after(async () => {
  await mounts?.close();
  await cleanupTmpDirs();
});

describe('warm opens with passthrough', () => {
  it('the transport gives the kernel a handed-over file\'s chunk file at its first open; a damaged one goes to JS, exact', async (t) => {
    // A copy of the warm cache: this test damages a file of its own.
    await run('cp', ['-a', path.join(work, 'cache-warm'), path.join(work, 'cache-pt')]);
    const small = FILES.filter((f) => f.rel.startsWith('small/'));
    const dirs = new Set(FILES.map((f) => path.dirname(f.rel))).size;
    const m = await mounts.mount('mnt-pt', { cache: 'cache-pt' });
    try {
      await cmpAll(m);
      const s = await m.stats();
      if (!s.ops.opensPassthrough) return t.skip('kernel without FUSE passthrough');
      assert.equal(s.ops.requests.open?.n ?? 0, dirs, `one open per directory reached the JS thread (${JSON.stringify(s.ops)})`);
      // small/: the first file opened there went to JS, the rest (the tiny one included) were the transport's.
      assert.equal(s.ops.opensByTransport, small.length - 1, 'every other file of small/ was opened by the transport');
      // One-chunk files passed through (JS's or the transport's); the tiny one is served from its inline bytes.
      assert.equal(s.ops.opensPassthrough, FILES.length - 1, `every file with a local file passed through (${JSON.stringify(s.ops)})`);
      assert.equal(s.ops.reads, 0, 'the JS thread answered no READ (the tiny file is the transport\'s)');
      assert.equal(s.cache.fetches, 0, 'nothing came from the store');
    } finally { await stop(m); }
    // A handed-over chunk damaged on disk: hashed at its open on the transport's thread, refused, opened by JS, which
    // finds the damage, drops the chunk and fetches it again: the bytes read are exact.
    const victim = small[7]!;
    const h = (await chunksOf(victim.rel))[0]!;
    await flipByte(path.join(work, 'cache-pt', 'chunks', h.slice(0, 2), h.slice(2)), 10);
    const m2 = await mounts.mount('mnt-pt2', { cache: 'cache-pt' });
    try {
      await cmpAll(m2);
      const s = await m2.stats();
      assert.equal(s.cache.corruptDropped, 1, 'the damaged chunk was found by JS and dropped');
      assert.equal(s.cache.fetches, 1, 'and fetched again');
      assert.equal(s.ops.opensByTransport, small.length - 2, 'the intact files were still opened by the transport');
      assert.equal(s.ops.requests.open?.n ?? 0, dirs + 1, 'the damaged one went to JS');
    } finally { await stop(m2); }
  });
});

describe('warm reads without passthrough', () => {
  it('are exact and answered by the transport thread, not the JS thread', async () => {
    const m = await mount('mnt-warm', 'cache-warm');
    try {
      await cmpAll(m);
      const s = await m.stats();
      // The first file opened in a directory goes through JS, which then hands its neighbours to the transport.
      const dirs = new Set(FILES.map((f) => path.dirname(f.rel))).size;
      assert.equal(s.ops.requests.open?.n ?? 0, dirs, 'one open per directory reached the JS thread');
      const total = FILES.reduce((n, f) => n + f.data.length, 0);
      assert.equal(s.ops.reads, 0, `the JS thread answered no READ (requests: ${JSON.stringify(s.ops.requests)})`);
      assert.equal(s.ops.opensNative, FILES.length, 'every file opened onto a verified local file');
      assert.ok(s.ops.nativeReads > 0, 'the transport counted the READs it answered');
      assert.equal(s.ops.nativeReadBytes, total, 'every byte read came from the transport');
      assert.equal(s.cache.fetches, 0, 'nothing came from the store');
    } finally { await stop(m); }
  });

  it('through an image view too: one open per directory reaches the JS thread, every read the transport', async () => {
    await putTestImage(store, 'native:v1', [hex]);
    const m = await mount('mnt-warm-image', 'cache-warm');
    try {
      const root = path.join(m.mp, 'images', encodeImageDirName('native:v1'), 'rootfs');
      for (const f of FILES) {
        const r = await run('cmp', [path.join(src, f.rel), path.join(root, f.rel)]);
        assert.equal(r.code, 0, `${f.rel} differs: ${r.stdout}${r.stderr}`);
      }
      const s = await m.stats();
      const dirs = new Set(FILES.map((f) => path.dirname(f.rel))).size;
      assert.equal(s.ops.requests.open?.n ?? 0, dirs, 'one open per directory reached the JS thread');
      assert.equal(s.ops.reads, 0, `the JS thread answered no READ (requests: ${JSON.stringify(s.ops.requests)})`);
      assert.equal(s.ops.opensNative, FILES.length, 'every file opened onto a verified local file');
      assert.equal(s.cache.fetches, 0, 'nothing came from the store');
    } finally { await stop(m); }
  });

  it('with --no-native-reads the JS thread answers them (the counter above is the feature)', async () => {
    const m = await mount('mnt-js', 'cache-warm', ['--no-native-reads']);
    try {
      await cmpAll(m);
      const s = await m.stats();
      assert.ok(s.ops.reads > 0);
      assert.equal(s.ops.nativeReads, 0);
    } finally { await stop(m); }
  });

  it('a cache file written to after it was verified is never served: JS re-verifies and serves exact bytes', async () => {
    const m = await mount('mnt-corrupt', 'cache-warm');
    const big = FILES[0]!, small = FILES[5]!;
    const bigRel = path.join(m.mp, 'layers', hex, big.rel), smallRel = path.join(m.mp, 'layers', hex, small.rel);
    // Held open throughout: the kernel keeps the nodes, and the transport the copies it was handed at their open.
    const held = [await fsp.open(bigRel, 'r'), await fsp.open(smallRel, 'r')];
    const readAll = async (fh: fsp.FileHandle, size: number) => {
      const b = Buffer.alloc(size);
      for (let got = 0; got < size;) { const { bytesRead } = await fh.read(b, got, size - got, got); if (!bytesRead) break; got += bytesRead; }
      return b;
    };
    try {
      assert.equal(sha256(await readAll(held[0]!, big.data.length)), sha256(big.data));
      assert.equal(sha256(await readAll(held[1]!, small.data.length)), sha256(small.data));
      const before = await m.stats();
      assert.equal(before.ops.reads, 0, 'served by the transport so far');
      // Damage the files the transport holds, in place: the whole-file copy and the single chunk.
      const copies = await fsp.readdir(path.join(m.cacheDir, 'files'), { recursive: true, withFileTypes: true });
      const copy = copies.find((e) => e.isFile())!;
      await flipByte(path.join(copy.parentPath, copy.name), 5 * MiB + 3);
      const h = (await chunksOf(small.rel))[0]!;
      await flipByte(path.join(m.cacheDir, 'chunks', h.slice(0, 2), h.slice(2)), 100);
      // The mount's page cache still has the good bytes: drop it (pages only: the open files keep their nodes), so
      // the reads reach the daemon again.
      await dropPages();
      assert.equal(sha256(await readAll(held[0]!, big.data.length)), sha256(big.data), 'multi-chunk file exact after its copy was damaged');
      assert.equal(sha256(await readAll(held[1]!, small.data.length)), sha256(small.data), 'single-chunk file exact after its chunk was damaged');
      const s = await m.stats();
      assert.equal(s.ops.opensNative, before.ops.opensNative, 'no new open: the transport still held the damaged files');
      assert.ok(s.ops.reads > 0, 'the damaged files were served by the JS thread');
      assert.ok(s.cache.corruptDropped >= 1, 'the damaged chunk was found and dropped');
      assert.equal(s.ops.eio, 0);
    } finally {
      for (const fh of held) await fh.close();
      await stop(m);
    }
    // A new daemon does not trust the damaged copy either (its identity no longer matches its record), nor a damaged
    // chunk of a file handed to the transport with its directory (hashed at its open there: JS serves it, exact).
    const h7 = (await chunksOf(FILES[8]!.rel))[0]!;
    await flipByte(path.join(work, 'cache-warm', 'chunks', h7.slice(0, 2), h7.slice(2)), 10);
    const m2 = await mount('mnt-corrupt2', 'cache-warm');
    try {
      await cmpAll(m2);
      const s = await m2.stats();
      assert.ok(s.cache.corruptDropped >= 1, 'the damaged chunk was found by JS and dropped');
      assert.ok(s.ops.opensNative >= 10, 'the intact files were still opened by the transport');
    } finally { await stop(m2); }
  });
});

describe('cold reads', () => {
  it('a damaged store object (raw or zstd) is EIO, never bytes; the rest reads exactly', async () => {
    const text = FILES[FILES.length - 1]!, raw = FILES[3]!;
    const victims = [(await chunksOf(text.rel))[0]!, (await chunksOf(raw.rel))[0]!];
    const saved: Array<[string, Buffer]> = [];
    for (const v of victims) {
      const f = path.join(store, objectPath(v));
      const b = await fsp.readFile(f);
      saved.push([f, Buffer.from(b)]);
      b[b.length - 10]! ^= 0xff; // in the payload, past the 16-byte header
      await fsp.chmod(f, 0o644).catch(() => {});
      await fsp.writeFile(f, b);
    }
    assert.equal(saved[0]![1][4], 1, 'the text file is stored zstd-compressed');
    assert.equal(saved[1]![1][4], 0, 'the random file is stored raw');
    const m = await mount('mnt-cold', 'cache-cold');
    try {
      for (const f of [text, raw]) {
        const r = await run('cat', [path.join(m.mp, 'layers', hex, f.rel)]);
        assert.notEqual(r.code, 0, `${f.rel}: read of a damaged object fails`);
        assert.match(r.stderr, /Input\/output error/);
      }
      // The others: exact (cold: fetched, decoded and verified on the threadpool).
      for (const f of FILES.slice(0, 3)) {
        assert.equal(sha256(await fsp.readFile(path.join(m.mp, 'layers', hex, f.rel))), sha256(f.data), f.rel);
      }
      const s = await m.stats();
      assert.ok(s.ops.eio >= 2);
      // Nothing damaged reached the cache directory.
      for (const v of victims) {
        const cached = await fsp.readFile(path.join(m.cacheDir, 'chunks', v.slice(0, 2), v.slice(2))).catch(() => null);
        assert.equal(cached, null, `damaged object ${v} not cached`);
      }
    } finally {
      await stop(m);
      for (const [f, b] of saved) await fsp.writeFile(f, b);
    }
  });

  for (const [mode, extra] of [['without passthrough', ['--no-passthrough']], ['with passthrough', []]] as const) {
    it(`${mode}: READs of landed chunks are answered by the transport, exact; after the fetch none reaches the JS thread`, async () => {
      const big = FILES[0]!;
      const m = await mounts.mount(`mnt-land-${extra.length}`, { cache: `cache-land-${extra.length}`, extra: [...extra] });
      const fh = await fsp.open(path.join(m.mp, 'layers', hex, big.rel), 'r');
      try {
        const first = await readFrom(fh, big.data.length);
        assert.equal(first.err, null);
        assert.equal(sha256(first.data), sha256(big.data), 'cold read exact');
        const s1 = await m.stats();
        // How many READs of this first pass reach JS depends on the machine's speed: those that arrive before their
        // chunks land (JS has them answered by the transport once they have).
        assert.ok(s1.cache.fetches >= 13, 'fetched from the store');
        // Again through the same open, page cache dropped: every READ is answered by the transport, none by JS.
        await dropPages();
        const again = await readFrom(fh, big.data.length);
        assert.equal(sha256(again.data), sha256(big.data), 'second read exact');
        const s2 = await m.stats();
        assert.equal(s2.ops.reads, s1.ops.reads, 'no READ reached the JS thread');
        assert.ok(s2.ops.nativeReads >= s1.ops.nativeReads + 13, 'the transport answered them');
        assert.equal(s2.ops.nativeReadBytes - s1.ops.nativeReadBytes, big.data.length, 'every byte of the second read from the transport');
        assert.equal(s2.cache.fetches, s1.cache.fetches, 'nothing fetched again');
      } finally {
        await fh.close();
        await stop(m);
      }
    });
  }

  it('with --no-native-reads cold READs are answered by the JS thread (the counters above are the feature)', async () => {
    const big = FILES[0]!;
    const m = await mount('mnt-land-off', 'cache-land-off', ['--no-native-reads']);
    const fh = await fsp.open(path.join(m.mp, 'layers', hex, big.rel), 'r');
    try {
      assert.equal(sha256((await readFrom(fh, big.data.length)).data), sha256(big.data));
      const s = await m.stats();
      assert.equal(s.ops.nativeReads, 0);
      assert.ok(s.ops.reads >= 13);
    } finally {
      await fh.close();
      await stop(m);
    }
  });

  it('a landed chunk file changed after its fetch is verified again: exact bytes, never the changed ones', async () => {
    const big = FILES[0]!;
    const refs = await chunkRefsOf(big.rel);
    const m = await mount('mnt-land-changed', 'cache-land-changed');
    const fh = await fsp.open(path.join(m.mp, 'layers', hex, big.rel), 'r');
    try {
      assert.equal(sha256((await readFrom(fh, big.data.length)).data), sha256(big.data));
      const before = await m.stats();
      // Two chunk files the transport holds: one damaged in place (same inode and size), one replaced by a file of the
      // same bytes but another identity (renamed over it): both are verified again, the damaged one refetched.
      const file = (h: string) => path.join(m.cacheDir, 'chunks', h.slice(0, 2), h.slice(2));
      const damaged = refs[3]!, replaced = refs[7]!;
      await flipByte(file(damaged.hash), 1000);
      const copy = `${file(replaced.hash)}.copy`;
      await fsp.copyFile(file(replaced.hash), copy);
      await fsp.rename(copy, file(replaced.hash));
      await dropPages();
      const again = await readFrom(fh, big.data.length);
      assert.equal(again.err, null);
      assert.equal(sha256(again.data), sha256(big.data), 'exact after a landed chunk file changed');
      const s = await m.stats();
      assert.ok(s.ops.reads > before.ops.reads, 'the READs of the changed files went to the JS thread');
      assert.ok(s.cache.corruptDropped >= 1, 'the damaged chunk was found and dropped');
      assert.ok(s.cache.fetches > before.cache.fetches, 'and fetched again');
      assert.equal(s.ops.eio, 0);
      // Once verified again they are answered by the transport again.
      await dropPages();
      const third = await readFrom(fh, big.data.length);
      assert.equal(sha256(third.data), sha256(big.data));
      const s3 = await m.stats();
      assert.equal(s3.ops.reads, s.ops.reads, 'no READ reached the JS thread after the re-verification');
    } finally {
      await fh.close();
      await stop(m);
    }
  });

  it('a damaged object in the middle of a file read through landed chunks is EIO; no byte of it or after it is served', async () => {
    const big = FILES[0]!;
    const refs = await chunkRefsOf(big.rel);
    const victim = refs[6]!;
    const f = path.join(store, objectPath(victim.hash));
    const saved = await fsp.readFile(f);
    const bad = Buffer.from(saved);
    bad[bad.length - 10]! ^= 0xff;
    await fsp.writeFile(f, bad);
    const m = await mount('mnt-land-eio', 'cache-land-eio');
    const fh = await fsp.open(path.join(m.mp, 'layers', hex, big.rel), 'r');
    try {
      const r = await readFrom(fh, big.data.length);
      assert.equal(r.err?.code, 'EIO', 'the read fails with EIO');
      assert.ok(r.data.length <= victim.offset, `no byte of the damaged chunk served (${r.data.length} > ${victim.offset})`);
      assert.ok(r.data.equals(big.data.subarray(0, r.data.length)), 'the bytes before it exact');
      // Reads past it (from the first page holding none of its bytes) are exact; the damaged range stays EIO.
      const past = Math.ceil((victim.offset + victim.size) / 4096) * 4096;
      const after = Buffer.alloc(MiB);
      const { bytesRead } = await fh.read(after, 0, MiB, past);
      assert.ok(bytesRead > 0);
      assert.ok(after.subarray(0, bytesRead).equals(big.data.subarray(past, past + bytesRead)));
      await assert.rejects(fh.read(Buffer.alloc(4096), 0, 4096, victim.offset + 10), { code: 'EIO' });
      const s = await m.stats();
      assert.ok(s.ops.eio >= 1);
      const cached = await fsp.readFile(path.join(m.cacheDir, 'chunks', victim.hash.slice(0, 2), victim.hash.slice(2))).catch(() => null);
      assert.equal(cached, null, 'the damaged object never reached the cache directory');
    } finally {
      await fh.close();
      await stop(m);
      await fsp.writeFile(f, saved);
    }
  });
});
