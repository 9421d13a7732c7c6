// The ingest's write path (src/ingest/arena.ts, chunking.ts, src/store/writer-pool.ts, txn.ts): chunks copied into a
// reused shared arena and written by the writer threads in batches must give exactly the objects and catalog the
// one-object encoder gives for the same bytes, whatever the arena size (wraps, fallbacks); a small transaction
// flushes each new object before it is renamed into data/, and one made only of pins runs no syncfs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { cleanupTmpDirs, tmpDir, runOk, thinfsOk, sha256, listFiles, haveCommand } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { WritableStore } from '../src/store/store.js';
import { ingestTar } from '../src/ingest/ingest.js';
import { ChunkArena } from '../src/ingest/arena.js';
import { decodeObject, encodeObject } from '../src/store/codec.js';
import { objectPath } from '../src/store/layout.js';

after(cleanupTmpDirs);

test('chunk arena: live regions never overlap, space comes back when freed out of order, overflow falls back', () => {
  const cap = 4 << 20;
  const arena = new ChunkArena(cap);
  let seed = 12345;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  const live: Array<{ b: Buffer; mark: number }> = [];
  const intact = (x: { b: Buffer; mark: number }) => x.b.equals(Buffer.alloc(x.b.length, x.mark));
  let fromArena = 0, fallback = 0, wrapped = 0, lastStart = -1;
  for (let step = 0; step < 3000; step++) {
    if (live.length && (rnd(3) === 0 || live.length > 12)) {
      const [x] = live.splice(rnd(live.length), 1);
      assert.ok(intact(x!), 'a live chunk was overwritten before it was freed');
      arena.free(x!.b);
      continue;
    }
    const n = 1 + rnd(768 << 10);
    const b = arena.alloc(n);
    assert.equal(b.length, n);
    if (b.buffer instanceof SharedArrayBuffer) {
      fromArena++;
      if (b.byteOffset < lastStart) wrapped++;
      lastStart = b.byteOffset;
      assert.ok(b.byteOffset + n <= cap);
      for (const o of live) {
        if (!(o.b.buffer instanceof SharedArrayBuffer)) continue;
        assert.ok(b.byteOffset + n <= o.b.byteOffset || o.b.byteOffset + o.b.length <= b.byteOffset, 'two live chunks share memory');
      }
    } else fallback++;
    const mark = step & 0xff;
    b.fill(mark);
    live.push({ b, mark });
  }
  for (const x of live) assert.ok(intact(x));
  assert.ok(fromArena > 500 && wrapped > 50, `the ring is reused (${fromArena} from the arena, ${wrapped} wraps)`);
  assert.ok(fallback > 0, 'a full arena falls back to plain buffers');
});

/** Every file's chunks (path, offset, size, hash) from a stored catalog. */
function catalogChunks(file: string): Array<{ path: string; offset: number; size: number; hash: string }> {
  const db = new Database(file, { readonly: true });
  try {
    const names = new Map<number, { parent: number; name: Buffer }>();
    for (const r of db.prepare('SELECT parent, name, ino FROM dirents WHERE kind = 0').all() as Array<{ parent: number; name: Buffer; ino: number }>) names.set(r.ino, r);
    const pathOf = (ino: number): string => {
      const parts: string[] = [];
      for (let i = ino; i !== 1;) { const d = names.get(i)!; parts.unshift(d.name.toString()); i = d.parent; }
      return parts.join('/');
    };
    return (db.prepare('SELECT ino, offset, size, hash FROM chunks ORDER BY ino, idx').all() as Array<{ ino: number; offset: number; size: number; hash: Buffer }>)
      .map((r) => ({ path: pathOf(r.ino), offset: r.offset, size: r.size, hash: r.hash.toString('hex') }));
  } finally { db.close(); }
}

test('ingest: the same objects and catalog as the one-object encoder, with any chunk arena size', async () => {
  const work = await tmpDir();
  const text = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(200));
  const layer = await makeLayer(work, 'l', async (d) => {
    await fsp.mkdir(path.join(d, 'small'), { recursive: true });
    for (let i = 0; i < 150; i++) {
      const size = 1100 + ((i * 7919) % 300_000);
      const data = i % 3 ? pseudoRandom(size, `s${i}`) : Buffer.concat([text, pseudoRandom(64, `t${i}`)]).subarray(0, Math.min(size, text.length));
      await fsp.writeFile(path.join(d, 'small', `f${i}`), data);
    }
    // Many chunks each: incompressible (stored raw) and compressible; a duplicate (deduplicated within the transaction).
    await fsp.writeFile(path.join(d, 'big.bin'), pseudoRandom(14 << 20, 'big'));
    await fsp.writeFile(path.join(d, 'big-copy.bin'), pseudoRandom(14 << 20, 'big'));
    await fsp.writeFile(path.join(d, 'text.txt'), Buffer.concat(Array.from({ length: 800 }, (_, i) => Buffer.concat([text, Buffer.from(String(i))]))));
  }, { compression: 'gzip' });

  const ingest = async (name: string, arena?: number) => {
    const dir = path.join(work, name);
    const store = await WritableStore.init(dir);
    const r = await ingestTar(layer.file, store, { expectDiffId: layer.diffId, chunkArenaBytes: arena });
    return { dir, r };
  };
  const a = await ingest('default');
  // 6 MiB: chunks up to 4 MiB, so the ring wraps all the time and some chunks take the fallback.
  const b = await ingest('small-arena', 6 << 20);
  assert.equal(b.r.manifest.catalog, a.r.manifest.catalog, 'same catalog');
  const files = async (dir: string) => (await listFiles(path.join(dir, 'data'))).sort();
  const fa = await files(a.dir);
  assert.deepEqual(await files(b.dir), fa);
  for (const f of fa) assert.ok((await fsp.readFile(path.join(a.dir, 'data', f))).equals(await fsp.readFile(path.join(b.dir, 'data', f))), `object ${f} differs`);

  // Every chunk against the file GNU tar extracts, and its stored bytes against encodeObject of those bytes.
  const x = path.join(work, 'x');
  await fsp.mkdir(x);
  await runOk('tar', ['-xf', layer.file, '-C', x]);
  const catFile = path.join(work, 'catalog.db');
  await fsp.writeFile(catFile, decodeObject(a.r.manifest.catalog, await fsp.readFile(path.join(a.dir, objectPath(a.r.manifest.catalog)))));
  const chunks = catalogChunks(catFile);
  assert.ok(chunks.length > 150 + 20, `${chunks.length} chunks`);
  const contents = new Map<string, Buffer>();
  for (const c of chunks) {
    if (!contents.has(c.path)) contents.set(c.path, await fsp.readFile(path.join(x, c.path)));
    const bytes = contents.get(c.path)!.subarray(c.offset, c.offset + c.size);
    assert.equal(sha256(bytes), c.hash, `${c.path}@${c.offset}`);
    assert.ok((await fsp.readFile(path.join(a.dir, objectPath(c.hash)))).equals(encodeObject(bytes)), `stored ${c.hash} is not encodeObject of its bytes`);
  }
  assert.equal(fa.length, new Set(chunks.map((c) => c.hash)).size + 1, 'one object per distinct chunk, plus the catalog');
});

test('commit: a few new objects are each fsynced before their rename into data/; pins alone run no syncfs', { skip: !(await haveCommand('strace')) && 'strace not installed' }, async () => {
  const work = await tmpDir();
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const populate = async (d: string) => { for (let i = 0; i < 6; i++) await fsp.writeFile(path.join(d, `f${i}`), pseudoRandom(20_000 + i, `c${i}`)); };
  const one = await makeLayer(work, 'one', populate);
  // The same files with other times: a new layer (new catalog) whose chunks are all in the store already.
  const two = await makeLayer(work, 'two', populate, { keepTimes: true });
  const trace = async (name: string, file: string) => {
    const log = path.join(work, `${name}.strace`);
    await runOk('strace', ['-f', '-qq', '-y', '-o', log, '-e', 'trace=execve,fsync,rename,renameat,renameat2', process.execPath, path.join(process.cwd(), 'dist/src/cli/main.js'), 'ingest', file, '--store', store]);
    return (await fsp.readFile(log, 'utf8')).split('\n');
  };
  const check = (lines: string[]) => {
    const synced = new Map<string, number>();
    const renamed: Array<{ from: string; at: number }> = [];
    lines.forEach((l, i) => {
      const f = /fsync\(\d+<([^>]+)>/.exec(l);
      if (f && !synced.has(f[1]!)) synced.set(f[1]!, i);
      const r = /rename(?:at2?)?\((?:[^,]+, )?"([^"]+)", (?:[^,]+, )?"([^"]+)"/.exec(l);
      if (r && /\/data\/[0-9a-f]{2}\/[0-9a-f]{62}$/.test(r[2]!)) renamed.push({ from: r[1]!, at: i });
    });
    return { synced, renamed, syncfs: lines.some((l) => /execve\("[^"]*\/sync"/.test(l) && !/= -1 ENOENT/.test(l)) };
  };
  const t1 = check(await trace('one', one.file));
  // 6 files' chunks + the catalog, all new.
  assert.equal(t1.renamed.length, 7, t1.renamed.map((r) => r.from).join(' '));
  for (const r of t1.renamed) {
    const at = synced(t1.synced, r.from);
    assert.ok(at !== undefined && at < r.at, `${r.from} renamed into data/ without an fsync before`);
  }
  assert.equal(t1.syncfs, false, 'a 7-object transaction flushes its files, not the whole filesystem');
  const t2 = check(await trace('two', two.file));
  assert.ok(two.diffId !== one.diffId);
  // Only the catalog is new; the six chunks are pins (renamed back, already durable).
  const newOnes = t2.renamed.filter((r) => synced(t2.synced, r.from) !== undefined);
  assert.equal(newOnes.length, 1);
  assert.equal(t2.renamed.length, 7);
  assert.equal(t2.syncfs, false);
});

/** The line an fsync of `file` was traced at (strace prints the fd's path resolved, so compare real paths). */
function synced(map: Map<string, number>, file: string): number | undefined {
  for (const [p, at] of map) if (p === file || p.endsWith(file.replace(/^.*?\/txn\//, '/txn/'))) return at;
  return undefined;
}
