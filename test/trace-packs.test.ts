// `thinfs trace attach` stores the traced chunks at zstd 19, and the packs that carry them (src/store/pack.ts: small
// files travel together) get the same smaller frames, under the same names: a node starting the image without
// replaying the trace fetches them through packs, as small. gc keeps the packs, fsck finds them sound, a cold mount
// reads the right bytes through them, and an attach run again changes nothing.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, sha256, storeSnapshot, thinfs, thinfsJson, thinfsOk, tmpDir } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';
import { putTestImage } from './helpers/descriptor.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { encodeImageDirName } from '../src/mount/names.js';
import { encodeTrace } from '../src/format/trace.js';
import { parsePack } from '../src/store/pack.js';
import { objectPath, packPath } from '../src/store/layout.js';

const IMAGE = 'small:v1';
let work: string;
let store: string;
let layerHex: string;
let mounts: TrackedMounts;
/** Small files (one chunk each: pack members). The traced ones are source text, compressible. */
const files: Array<{ rel: string; data: Buffer; traced: boolean }> = [];

/** Source-like text a level-1 frame leaves much room in. */
const text = (seed: number, n: number) => Buffer.from(Array.from({ length: n }, (_, i) => `def f${seed}_${i}(x):\n    return x * ${(i * 7919 + seed) % 997} + ${(i * 104729) % 10007}\n`).join(''));

/** Every pack of the store: name -> its members' frames by hash. */
async function packs(): Promise<Map<string, Map<string, Buffer>>> {
  const out = new Map<string, Map<string, Buffer>>();
  for (const rel of (await storeSnapshot(store)).packs) {
    const name = rel.split('/').join('');
    out.set(name, new Map(parsePack(name, await fsp.readFile(path.join(store, packPath(name)))).map((m) => [m.hash, m.frame])));
  }
  return out;
}

/** A fresh node reading every small file through the image (no trace replayed: packs bring them): bytes it fetched. */
async function coldRead(name: string): Promise<{ fetchedBytes: number; packFetches: number }> {
  const m = await mounts.mount(name);
  const root = path.join(m.mp, 'images', encodeImageDirName(IMAGE), 'rootfs');
  for (const f of files) assert.equal(sha256(await fsp.readFile(path.join(root, f.rel))), sha256(f.data), f.rel);
  const s = await m.stats();
  await mounts.stop(m);
  return { fetchedBytes: s.cache.fetchedBytes, packFetches: s.cache.packFetches };
}

describe('trace attach recompresses the packs carrying traced chunks', { timeout: 300_000 }, () => {
  before(async () => {
    work = await tmpDir('thinfs-trace-packs-');
    store = path.join(work, 'store');
    mounts = trackedMounts(work, store);
    await thinfsOk(['init', store]);
    const l = await makeLayer(work, 'small', async (dir) => {
      await fsp.mkdir(path.join(dir, 'lib'), { recursive: true });
      for (let i = 0; i < 12; i++) {
        const f = { rel: `lib/m${String(i).padStart(2, '0')}.py`, data: i % 3 === 2 ? pseudoRandom(20_000, `r${i}`) : text(i, 350), traced: i % 2 === 0 };
        await fsp.writeFile(path.join(dir, f.rel), f.data);
        files.push(f);
      }
    });
    layerHex = (await thinfsJson<{ diffId: string }>(['ingest', l.file, '--store', store, '--json', '--no-progress'])).diffId.slice(7);
    await putTestImage(store, IMAGE, [layerHex]);
  });
  after(async () => {
    await mounts?.close();
    await cleanupTmpDirs();
  });

  it('the packs get the smaller frames under their names; gc, fsck and a cold mount are content with them', async () => {
    const before = await packs();
    assert.ok(before.size > 0, 'ingest packed the small files');
    const carrying = (hash: string) => [...before].filter(([, m]) => m.has(hash)).map(([n]) => n);
    const traced = files.filter((f) => f.traced).map((f) => ({ ...f, hash: sha256(f.data) }));
    for (const f of traced) assert.equal(carrying(f.hash).length, 1, `${f.rel} travels in one pack`);
    const cold0 = await coldRead('cold-before');
    assert.ok(cold0.packFetches > 0, 'the cold node fetched packs');

    const traceFile = path.join(work, 'small.trace');
    await fsp.writeFile(traceFile, encodeTrace(traced.map((f) => ({ layer: layerHex, hash: f.hash, size: f.data.length }))));
    const att = await thinfsJson<{ recompressed: { changed: number; packs: number; packsBefore: number; packsAfter: number } }>(['trace', 'attach', '-s', store, IMAGE, traceFile, '--json']);
    assert.ok(att.recompressed.changed >= 4, `the traced text chunks were rewritten (${att.recompressed.changed})`);
    const afterPacks = await packs();
    assert.deepEqual([...afterPacks.keys()].sort(), [...before.keys()].sort(), 'the same packs, by name');
    assert.equal(att.recompressed.packs, new Set(traced.flatMap((f) => carrying(f.hash))).size, 'every pack carrying a traced chunk rewritten');
    assert.ok(att.recompressed.packsAfter < att.recompressed.packsBefore);
    for (const [name, members] of afterPacks) {
      for (const [hash, frame] of members) {
        const own = await fsp.readFile(path.join(store, objectPath(hash)));
        const t = traced.find((f) => f.hash === hash);
        const old = before.get(name)!.get(hash)!;
        // A traced member rewritten smaller (text) carries its object's new frame; the rest (untraced, or random
        // bytes zstd 19 cannot shrink) keep their frames.
        if (t && own.length < old.length) assert.ok(frame.equals(own), `${t.rel}: the pack carries the zstd 19 frame`);
        else assert.ok(frame.equals(old), `${files.find((f) => sha256(f.data) === hash)?.rel}: member untouched`);
        if (t && !t.data.equals(pseudoRandom(t.data.length, `r${Number(t.rel.slice(5, 7))}`))) assert.ok(frame.length < old.length, `${t.rel}: text shrinks`);
      }
    }

    // gc keeps them (the catalog names them), fsck finds every member sound.
    await thinfsOk(['gc', '-s', store, '--grace', '0']);
    assert.deepEqual([...(await packs()).keys()].sort(), [...before.keys()].sort(), 'gc kept the packs');
    const fsck = await thinfs(['fsck', '--store', store, '--json']);
    const rep = JSON.parse(fsck.stdout) as { corrupt: unknown[]; missing: Array<{ layers: string[] }>; brokenLayers: unknown[] };
    // (The test descriptor names a config object no store holds: missing, needed by no layer.)
    assert.deepEqual([rep.corrupt, rep.missing.filter((m) => m.layers.length), rep.brokenLayers], [[], [], []], fsck.stdout + fsck.stderr);

    // A node starting without the trace (detached) fetches the small files through the packs: the right bytes, fewer.
    await thinfsOk(['trace', 'detach', '-s', store, IMAGE]);
    const cold1 = await coldRead('cold-after');
    assert.equal(cold1.packFetches, cold0.packFetches);
    assert.equal(cold0.fetchedBytes - cold1.fetchedBytes, att.recompressed.packsBefore - att.recompressed.packsAfter,
      'fetched as many bytes fewer as the packs shrank');

    // Attached again: nothing left to shrink, nothing rewritten.
    const again = await thinfsJson<{ recompressed: { changed: number; packs: number } }>(['trace', 'attach', '-s', store, IMAGE, traceFile, '--json']);
    assert.deepEqual([again.recompressed.changed, again.recompressed.packs], [0, 0]);
  });
});
