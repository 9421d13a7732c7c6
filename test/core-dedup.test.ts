// Acceptance 3 of issue 2: two layers sharing most files -> the second ingest writes objects only for what differs,
// asserted by counting the files under data/ and by the ingest's own newObjects; compression does not change identity.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import {
  cleanupTmpDirs, countObjects, runOk, sha256, sha256File, thinfsBuf, thinfsJson, thinfsOk, tmpDir,
} from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import { makeTreeTar } from './fixtures/tars.js';
import { pseudoRandom } from './helpers/layers.js';

interface IngestJson {
  diffId: string; blobDigest: string; published: boolean; newObjects: number; newBytes: number;
  entries: number; files: number; bytes: number; catalog: string;
}

const MIB = 1024 * 1024;
const BIG = 24 * MIB + 777; // several max-size chunks' worth
let work: string;
let store: string;
let treeA: string;
let treeB: string;
let tarA: string;
let tarB: string;
let resA: IngestJson;
let resB: IngestJson;

async function ingest(file: string): Promise<IngestJson> {
  return thinfsJson<IngestJson>(['ingest', file, '--store', store, '--json', '--no-progress']);
}

// What layer B changes relative to layer A (every changed/added file is > the inline limit, so each needs an object).
const CHANGED = ['app/conf/a.dat', 'app/conf/b.dat', 'app/lib/c.dat'];
const ADDED = ['app/new/one.bin', 'app/new/two.bin'];
const DELETED = 'app/lib/d.dat';

before(async () => {
  work = await tmpDir('thinfs-dedup-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  treeA = path.join(work, 'A');
  await fsp.mkdir(path.join(treeA, 'app/conf'), { recursive: true });
  await fsp.mkdir(path.join(treeA, 'app/lib'), { recursive: true });
  // A real tree of small files too (many inlined or whole-file objects), when the machine has one.
  if (existsSync('/usr/share/perl5')) await runOk('cp', ['-a', '/usr/share/perl5', path.join(treeA, 'perl5')]);
  for (const [i, f] of [...CHANGED, DELETED].entries()) await fsp.writeFile(path.join(treeA, f), pseudoRandom(100_000 + i, `A-${f}`));
  await fsp.writeFile(path.join(treeA, 'app/big-overwrite.bin'), pseudoRandom(BIG, 'big1'));
  await fsp.writeFile(path.join(treeA, 'app/big-insert.bin'), pseudoRandom(BIG, 'big2'));
  await fsp.writeFile(path.join(treeA, 'app/big-same.bin'), pseudoRandom(10 * MIB, 'big3'));
  tarA = await makeTreeTar(treeA, path.join(work, 'A.tar'));

  // B = A with a few files changed/added/deleted, one big file overwritten in the middle, one with bytes inserted.
  treeB = path.join(work, 'B');
  await runOk('cp', ['-a', treeA, treeB]);
  for (const f of CHANGED) {
    const p = path.join(treeB, f);
    const buf = await fsp.readFile(p);
    buf.write('changed in layer B', 5000);
    await fsp.writeFile(p, buf);
  }
  await fsp.mkdir(path.join(treeB, 'app/new'), { recursive: true });
  for (const f of ADDED) await fsp.writeFile(path.join(treeB, f), pseudoRandom(200_000, `B-${f}`));
  await fsp.rm(path.join(treeB, DELETED));
  const fh = await fsp.open(path.join(treeB, 'app/big-overwrite.bin'), 'r+');
  await fh.write(Buffer.alloc(64, 0x5a), 0, 64, 12 * MIB + 12345);
  await fh.close();
  const big2 = await fsp.readFile(path.join(treeB, 'app/big-insert.bin'));
  const at = 9 * MIB + 4321;
  await fsp.writeFile(path.join(treeB, 'app/big-insert.bin'),
    Buffer.concat([big2.subarray(0, at), pseudoRandom(1000, 'inserted'), big2.subarray(at)]));
  tarB = await makeTreeTar(treeB, path.join(work, 'B.tar'));
});

after(async () => {
  await cleanupTmpDirs();
});

describe('dedup across layers', () => {
  it('layer A: newObjects equals the number of files added under data/', async () => {
    const before = await countObjects(store);
    resA = await ingest(tarA);
    const after = await countObjects(store);
    assert.equal(resA.published, true);
    assert.equal(after - before, resA.newObjects, 'newObjects matches data/');
    // 24+24+10 MiB of incompressible data need at least ceil(size / 4 MiB max chunk) chunks each.
    assert.ok(resA.newObjects >= 7 + 7 + 3 + CHANGED.length + 1 + 1, `A wrote ${resA.newObjects} objects`);
  });

  it('layer B: objects only for what differs', async () => {
    const before = await countObjects(store);
    resB = await ingest(tarB);
    const after = await countObjects(store);
    assert.equal(resB.published, true);
    assert.notEqual(resB.diffId, resA.diffId);
    assert.equal(after - before, resB.newObjects, 'newObjects matches data/');
    // Lower bound: each changed or added file needs its own object, each modified big file at least one new chunk,
    // plus B's catalog. Upper bound: content-defined chunking resynchronises after an edit, so a big file costs at
    // most 3 new chunks (the edited one and its neighbours when a cut point moves).
    const min = CHANGED.length + ADDED.length + 2 + 1;
    const max = CHANGED.length + ADDED.length + 3 + 3 + 1;
    assert.ok(resB.newObjects >= min && resB.newObjects <= max,
      `layer B wrote ${resB.newObjects} objects; expected between ${min} and ${max}`);
    // The unchanged 10 MiB file and the unchanged parts of the big files cost nothing: new bytes are a small share.
    assert.ok(resB.newBytes < 0.3 * resB.bytes, `newBytes ${resB.newBytes} vs layer bytes ${resB.bytes}`);
  });

  it('layer B exports back to exactly its tar (dedup did not mix A and B up)', async () => {
    const exported = path.join(work, 'B.exported.tar');
    await thinfsOk(['export', resB.diffId, '-o', exported, '--store', store]);
    const cmp = await compareTars(tarB, exported, await fsp.mkdtemp(path.join(work, 'cmpB-')));
    assert.deepEqual(cmp, { listing: [], names: [], tree: [], xattrs: [] });
    for (const f of ['app/big-overwrite.bin', 'app/big-insert.bin']) {
      for (const [res, tree] of [[resA, treeA], [resB, treeB]] as const) {
        const r = await thinfsBuf(['cat', '--store', store, res.diffId, f]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(sha256(r.stdout), await sha256File(path.join(tree, f)), `${f} in ${tree === treeA ? 'A' : 'B'}`);
      }
    }
  });

  it('a third layer holding only already-stored content writes just its catalog', async () => {
    const treeC = path.join(work, 'C');
    await fsp.mkdir(path.join(treeC, 'copy'), { recursive: true });
    await runOk('cp', [path.join(treeA, 'app/big-same.bin'), path.join(treeC, 'copy/renamed.bin')]);
    await runOk('cp', [path.join(treeB, 'app/new/one.bin'), path.join(treeC, 'copy/one-again.bin')]);
    await runOk('cp', [path.join(treeB, 'app/new/one.bin'), path.join(treeC, 'copy/one-twice.bin')]);
    const tarC = await makeTreeTar(treeC, path.join(work, 'C.tar'));
    const before = await countObjects(store);
    const resC = await ingest(tarC);
    assert.equal(resC.newObjects, 1, 'only the catalog is new');
    assert.equal(await countObjects(store), before + 1);
  });

  it('re-ingesting B writes nothing', async () => {
    const before = await countObjects(store);
    const again = await ingest(tarB);
    assert.equal(again.diffId, resB.diffId);
    assert.equal(again.newObjects, 0);
    assert.equal(again.published, false);
    assert.equal(await countObjects(store), before);
  });
});

describe('compression does not change a layer identity', () => {
  const compressed: Record<string, string> = {};
  for (const codec of ['gzip', 'zstd'] as const) {
    it(`${codec} of layer A: same diffId, 0 new objects`, async () => {
      const out = path.join(work, `A.tar.${codec === 'gzip' ? 'gz' : 'zst'}`);
      if (codec === 'gzip') await runOk('sh', ['-c', 'gzip -n -c "$1" > "$2"', 'sh', tarA, out]);
      else await runOk('zstd', ['-q', '-f', tarA, '-o', out]);
      compressed[codec] = out;
      const before = await countObjects(store);
      const r = await ingest(out);
      assert.equal(r.diffId, resA.diffId, 'diffId is the uncompressed tar digest');
      assert.equal(r.newObjects, 0);
      assert.equal(r.published, false);
      assert.equal(await countObjects(store), before);
    });

    it(`${codec} into a fresh store: blobDigest is the compressed file digest, diffId the tar digest`, async () => {
      const fresh = path.join(work, `fresh-${codec}`);
      const r = await thinfsJson<IngestJson>(['ingest', compressed[codec]!, '--store', fresh, '--init', '--json', '--no-progress']);
      assert.equal(r.diffId, resA.diffId);
      assert.equal(r.blobDigest, 'sha256:' + (await sha256File(compressed[codec]!)));
      assert.equal(r.published, true);
      assert.equal(r.newObjects, await countObjects(fresh));
      await fsp.rm(fresh, { recursive: true, force: true });
    });

    // `ingest --json` reports the digest of the blob it was given, also when the layer was already published from
    // another blob (docker2thin-style callers map registry blob digests to layers from this output).
    it(`${codec} of an already-published layer: --json blobDigest still names the input blob`, async () => {
      const r = await ingest(compressed[codec]!);
      assert.equal(r.diffId, resA.diffId);
      assert.equal(r.blobDigest, 'sha256:' + (await sha256File(compressed[codec]!)));
    });
  }

  it('ingest from standard input gives the same layer', async () => {
    const before = await countObjects(store);
    const r = await thinfsJson<IngestJson>(['ingest', '-', '--store', store, '--json', '--no-progress'],
      { input: await fsp.readFile(tarA) });
    assert.equal(r.diffId, resA.diffId);
    assert.equal(r.newObjects, 0);
    assert.equal(await countObjects(store), before);
  });
});
