// Issue 11, node-local cache without a mount: the index/quota manager (one LRU over chunks, whole-file copies and
// catalogs; pins), and the cache's parts driven against a real store: catalogs counted and pinned, released catalogs
// evicted, a cached catalog verified streaming, concurrent requests for one chunk merged into one fetch.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { CacheIndex } from '../src/cache/quota.js';
import { NodeCache } from '../src/cache/node-cache.js';
import { Store } from '../src/store/store.js';
import { CatalogReader } from '../src/catalog/reader.js';
import { createLogger } from '../src/util/log.js';
import { cleanupTmpDirs, sha256, thinfsJson, thinfsOk, tmpDir } from './helpers/proc.js';
import { makeTreeTar } from './fixtures/tars.js';
import { pseudoRandom } from './helpers/layers.js';

after(cleanupTmpDirs);

function index(quota: number) {
  const evicted: string[] = [];
  const ix = new CacheIndex(quota, (k) => { evicted.push(k); });
  return { ix, evicted };
}

describe('cache index: LRU and quota accounting', () => {
  it('counts every entry kind; evicts least recently used first; a touch makes an entry recent', () => {
    const { ix, evicted } = index(100);
    assert.ok(ix.add('a', 30));
    assert.ok(ix.add('f:b', 30));
    assert.ok(ix.add('c:c', 30));
    assert.equal(ix.usedBytes, 90);
    assert.equal(ix.count, 3);
    assert.ok(ix.touch('a'));
    assert.ok(ix.add('d', 30)); // 120 > 100: the oldest (f:b; a was touched) goes
    assert.deepEqual(evicted, ['f:b']);
    assert.equal(ix.usedBytes, 90);
    assert.ok(ix.add('e', 50)); // 140: c:c then a
    assert.deepEqual(evicted, ['f:b', 'c:c', 'a']);
    assert.equal(ix.usedBytes, 80);
    assert.deepEqual(['d', 'e'].map((k) => ix.has(k)), [true, true]);
  });

  it('refuses an entry bigger than the quota; adding an indexed entry again only touches it', () => {
    const { ix, evicted } = index(100);
    assert.equal(ix.add('big', 101), false);
    assert.equal(ix.usedBytes, 0);
    ix.add('a', 60);
    ix.add('b', 30);
    assert.ok(ix.add('a', 60));
    assert.equal(ix.usedBytes, 90, 'not counted twice');
    ix.add('c', 20); // b is now the oldest
    assert.deepEqual(evicted, ['b']);
  });

  it('delete forgets without calling onEvict; touch of an unknown key is false', () => {
    const { ix, evicted } = index(100);
    ix.add('a', 40);
    assert.ok(ix.delete('a'));
    assert.equal(ix.delete('a'), false);
    assert.equal(ix.usedBytes, 0);
    assert.equal(ix.touch('a'), false);
    assert.deepEqual(evicted, []);
  });
});

describe('cache index: pins', () => {
  it('a pinned entry counts against the quota but is never evicted, even as the oldest', () => {
    const { ix, evicted } = index(100);
    ix.add('c:cat', 40);
    ix.pin('c:cat');
    assert.equal(ix.pinnedBytes, 40);
    ix.add('x', 40);
    ix.add('y', 40); // 120: x goes, not the older but pinned catalog
    assert.deepEqual(evicted, ['x']);
    assert.equal(ix.usedBytes, 80);
    assert.ok(ix.has('c:cat'));
  });

  it('unpinned, it is an ordinary LRU entry again and goes at once if the cache is over quota', () => {
    const { ix, evicted } = index(100);
    ix.pin('c:cat'); // pinned before it is indexed: a catalog being fetched
    ix.add('c:cat', 80);
    assert.equal(ix.pinnedBytes, 80);
    ix.add('x', 60); // 140: only x is evictable, and it is the entry just added: kept (pins may overfill)
    assert.deepEqual(evicted, []);
    assert.equal(ix.usedBytes, 140);
    ix.unpin('c:cat');
    assert.deepEqual(evicted, ['c:cat'], 'evicted as soon as it was released');
    assert.equal(ix.usedBytes, 60);
    assert.equal(ix.pinnedBytes, 0);
  });

  it('pins nest: the entry stays until the last unpin', () => {
    const { ix, evicted } = index(50);
    ix.add('c:cat', 30);
    ix.pin('c:cat');
    ix.pin('c:cat');
    ix.unpin('c:cat');
    ix.add('x', 30);
    assert.deepEqual(evicted, [], 'x is the newest: kept while the catalog is still pinned');
    assert.equal(ix.usedBytes, 60);
    ix.unpin('c:cat');
    assert.deepEqual(evicted, ['c:cat']);
  });

  it('a pinned entry bigger than the quota is still indexed (a layer needs its catalog whatever its size)', () => {
    const { ix } = index(10);
    ix.pin('c:huge');
    assert.ok(ix.add('c:huge', 50));
    assert.equal(ix.usedBytes, 50);
    assert.ok(ix.delete('c:huge'));
    assert.equal(ix.pinnedBytes, 0);
  });
});

describe('cache parts against a real store (no mount)', () => {
  let work: string;
  let store: Store;
  const layers: Array<{ catalog: string; catalogSize: number }> = [];
  const big = pseudoRandom(2 * 1024 * 1024 + 3, 'cache-quota-big');
  const log = createLogger('test', 'silent');

  before(async () => {
    work = await tmpDir('thinfs-cache-quota-');
    const dir = path.join(work, 'store');
    await thinfsOk(['init', dir]);
    for (const name of ['one', 'two']) {
      const src = path.join(work, `src-${name}`);
      await fsp.mkdir(src);
      await fsp.writeFile(path.join(src, `${name}.txt`), `${name}\n`);
      await fsp.writeFile(path.join(src, 'big.bin'), big);
      const r = await thinfsJson<{ diffId: string }>(['ingest', await makeTreeTar(src, path.join(work, `${name}.tar`)), '--store', dir, '--json', '--no-progress']);
      store = await Store.open(dir);
      const m = (await store.getLayer(r.diffId))!;
      layers.push({ catalog: m.catalog, catalogSize: m.catalogSize });
    }
  });

  const open = (dir: string, quota: number) => NodeCache.open({ dir: path.join(work, dir), quota, memBytes: 0, store, log });

  it('catalogs count against the quota and are pinned while used; released, they are evicted like chunks', async () => {
    const [one, two] = layers as [typeof layers[0], typeof layers[0]];
    let c = await open('cache-cat', 1 << 30);
    await c.catalogFile(one.catalog, one.catalogSize);
    await c.catalogFile(two.catalog, two.catalogSize);
    assert.equal(c.usedBytes, one.catalogSize + two.catalogSize, 'catalogs are counted');
    assert.equal(c.usedObjects, 2);
    assert.equal(c.counters.catalogFetches, 2);
    await c.flush();

    // Restart with a quota one byte short of both catalogs and big.bin's chunks: layer two only is loaded (pinned).
    const quota = one.catalogSize + two.catalogSize + big.length - 1;
    c = await open('cache-cat', quota);
    assert.equal(c.usedBytes, one.catalogSize + two.catalogSize, 'the cached catalogs are indexed at start');
    const file = await c.catalogFile(two.catalog, two.catalogSize);
    assert.equal(c.counters.catalogFetches, 0, 'a verified cached catalog is used as is');
    const reader = CatalogReader.open(file);
    const bigIno = reader.resolve('big.bin')!.ino;
    const chunks = reader.chunks(bigIno);
    for (const ch of chunks) assert.equal(sha256(await c.get(ch.hash, ch.size)), ch.hash);
    await c.flush();
    assert.ok(c.usedBytes <= quota, `within quota: ${c.usedBytes} <= ${quota}`);
    assert.ok(c.counters.catalogEvictions >= 1);
    await assert.rejects(fsp.stat(path.join(work, 'cache-cat', 'catalogs', `${one.catalog}.sqlite`)), { code: 'ENOENT' },
      'the unused catalog was evicted from the disk');
    await fsp.stat(file); // the pinned one stayed, though it is older than the chunks
    reader.close();

    // Released, the catalog goes when room is needed.
    c.releaseCatalog(two.catalog);
    await c.catalogFile(one.catalog, one.catalogSize);
    assert.equal(c.counters.catalogFetches, 1, 'an evicted catalog is fetched again when a layer needs it');
    assert.ok(c.usedBytes <= quota);
    await c.flush();
  });

  it('a damaged cached catalog is detected (streamed hash) and fetched again', async () => {
    const [one] = layers as [typeof layers[0]];
    let c = await open('cache-cat-bad', 1 << 30);
    const file = await c.catalogFile(one.catalog, one.catalogSize);
    await c.flush();
    const bytes = await fsp.readFile(file);
    bytes[bytes.length >> 1] ^= 0x40;
    await fsp.writeFile(file, bytes);
    c = await open('cache-cat-bad', 1 << 30);
    await c.catalogFile(one.catalog, one.catalogSize);
    assert.equal(c.counters.corruptDropped, 1);
    assert.equal(c.counters.catalogFetches, 1);
    assert.equal(sha256(await fsp.readFile(file)), one.catalog);
    await c.flush();
  });

  it('concurrent requests for one chunk share one store fetch (single-flight)', async () => {
    const [one] = layers as [typeof layers[0]];
    const c = await open('cache-sf', 1 << 30);
    const reader = CatalogReader.open(await c.catalogFile(one.catalog, one.catalogSize));
    const ch = reader.chunks(reader.resolve('big.bin')!.ino)[0]!;
    reader.close();
    const before = c.counters.fetches;
    const got = await Promise.all(Array.from({ length: 8 }, () => c.get(ch.hash, ch.size)));
    assert.ok(got.every((b) => sha256(b) === ch.hash));
    assert.equal(c.counters.fetches - before, 1, 'one fetch for eight concurrent requests');
    assert.equal(c.counters.joined, 7);
    await c.flush();
  });
});
