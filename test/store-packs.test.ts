// Packs (src/store/pack.ts, src/ingest/packing.ts, src/cache/pack-fetch.ts): a directory's small files travel in one
// request. Against a real nginx (requests counted in its access log) and real mounts: bytes exact against the source
// tree GNU tar archived, one pack request fills the siblings, a corrupt member is EIO for its file only (never wrong
// bytes), gc keeps live packs and sweeps dead ones, fsck finds (and repairs) a corrupt or missing pack, catalogs
// written before packs still read, and the same layer gives the same catalog and packs on every ingest.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, REPO_ROOT, run, runOk, sha256, thinfs, thinfsJson, thinfsOk, tmpDir } from './helpers/proc.js';
import { makeLayer, pseudoRandom, type LayerTar } from './helpers/layers.js';
import { startNginx, type WebServer } from './helpers/web.js';
import { compareTars } from './helpers/oracle.js';
import { OciLayout, pushLayout, startRegistry, type RegistryServer } from './fixtures/images.js';
import { mountStore, type Mounted } from './fuse-mount-helper.js';
import { Store } from '../src/store/store.js';
import { CatalogReader, type ChunkRef } from '../src/catalog/reader.js';
import { objectPath, packPath } from '../src/store/layout.js';
import { parsePack } from '../src/store/pack.js';

interface IngestJson { diffId: string; catalog: string }

let work: string;
let src: string;          // the tree GNU tar archived: the oracle
let tarFile: string;
let layerTar: LayerTar;
let registry: RegistryServer | null = null;
let otherTar: string;
const servers: WebServer[] = [];
const mounts: Mounted[] = [];

/** Text-like content (compressible, as source and .pyc files are), distinct per file. */
function textish(size: number, seed: string): Buffer {
  return Buffer.from(pseudoRandom(Math.ceil(size / 2), seed).toString('hex').slice(0, size));
}

async function newStore(name: string, tar = tarFile, env: Record<string, string> = {}): Promise<{ dir: string; hex: string; catalog: string }> {
  const dir = path.join(work, name);
  await thinfsOk(['init', dir]);
  const r = await thinfsJson<IngestJson>(['ingest', tar, '--store', dir, '--json', '--no-progress'], { env });
  return { dir, hex: r.diffId.slice(7), catalog: r.catalog };
}

/** Each file's chunk map, read from the layer catalog with the core API (the test's own view of the store). */
async function chunkMaps(store: string, hex: string, rels: string[]): Promise<{ hasPacks: boolean; maps: Map<string, ChunkRef[]>; packs: string[] }> {
  const s = await Store.open(store);
  const m = (await s.getLayer(`sha256:${hex}`))!;
  const f = path.join(work, `catalog-${m.catalog}-${Math.random()}.sqlite`);
  await fsp.writeFile(f, await s.getObject(m.catalog));
  const cat = CatalogReader.open(f);
  try {
    return { hasPacks: cat.hasPacks, maps: new Map(rels.map((r) => [r, cat.chunks(cat.resolve(r)!.ino)])), packs: cat.allPacks().map((p) => p.name) };
  } finally { cat.close(); await fsp.rm(f); }
}

async function mount(store: string, name: string): Promise<Mounted> {
  const m = await mountStore(store, path.join(work, name), { cacheDir: path.join(work, `${name}-cache`) });
  mounts.push(m);
  return m;
}

async function stop(m: Mounted): Promise<void> {
  mounts.splice(mounts.indexOf(m), 1);
  await m.stop();
}

async function serve(store: string, name: string): Promise<WebServer> {
  const w = await startNginx(store, path.join(work, `${name}-nginx`));
  servers.push(w);
  return w;
}

const count = (log: string[], re: RegExp) => log.filter((l) => re.test(l)).length;
const SMALL = Array.from({ length: 30 }, (_, i) => `usr/lib/py/m${String(i).padStart(2, '0')}.py`);
const SUB = Array.from({ length: 8 }, (_, i) => `usr/lib/py/sub/s${i}.pyc`);

before(async () => {
  work = await tmpDir('thinfs-packs-');
  const l = await makeLayer(work, 'layer', async (dir) => {
    await fsp.mkdir(path.join(dir, 'usr/lib/py/sub'), { recursive: true });
    // 30 files of 3-32 KiB in one directory (~500 KiB: one or two packs), 8 in a subdirectory, tiny ones (inline),
    // a 200 KiB file (too big for a pack) and a 9 MiB one (several chunks).
    for (const [i, r] of SMALL.entries()) await fsp.writeFile(path.join(dir, r), textish(3000 + ((i * 7919) % 30000), r));
    for (const [i, r] of SUB.entries()) await fsp.writeFile(path.join(dir, r), textish(2000 + i * 1500, r));
    await fsp.writeFile(path.join(dir, 'usr/lib/py/tiny.txt'), 'tiny\n');
    await fsp.writeFile(path.join(dir, 'usr/lib/py/big.so'), pseudoRandom(200 << 10, 'big'));
    await fsp.writeFile(path.join(dir, 'usr/lib/huge.bin'), pseudoRandom(9 << 20, 'huge'));
  });
  src = path.join(work, 'layer.d');
  tarFile = l.file;
  layerTar = l;
  const o = await makeLayer(work, 'other', async (dir) => {
    await fsp.mkdir(path.join(dir, 'opt/other'), { recursive: true });
    for (let i = 0; i < 6; i++) await fsp.writeFile(path.join(dir, `opt/other/o${i}.txt`), textish(4000 + i * 100, `other${i}`));
  });
  otherTar = o.file;
});

after(async () => {
  for (const m of [...mounts]) await m.stop().catch(() => {});
  for (const s of servers) await s.stop().catch(() => {});
  await registry?.stop().catch(() => {});
  await cleanupTmpDirs();
});

describe('packs', () => {
  it('the same layer gives the same catalog and the same packs on every ingest', async () => {
    const a = await newStore('det-a');
    const b = await newStore('det-b');
    assert.equal(a.catalog, b.catalog);
    const list = async (d: string) => (await runOk('find', [path.join(d, 'packs'), '-type', 'f', '-printf', '%P\\n'])).split('\n').filter(Boolean).sort();
    const pa = await list(a.dir);
    assert.ok(pa.length >= 2, `packs written: ${pa.join(' ')}`);
    assert.deepEqual(await list(b.dir), pa);
    for (const p of pa) assert.ok((await fsp.readFile(path.join(a.dir, 'packs', p))).equals(await fsp.readFile(path.join(b.dir, 'packs', p))), `pack ${p} has the same bytes`);
  });

  it('files served from packs are exact, and one request fills the pack\'s siblings', async () => {
    const s = await newStore('serve');
    const { maps } = await chunkMaps(s.dir, s.hex, [...SMALL, ...SUB, 'usr/lib/py/big.so']);
    const packOf = (r: string) => maps.get(r)![0]!.pack?.name;
    assert.ok(SMALL.every(packOf) && SUB.every(packOf), 'every small file travels in a pack');
    assert.equal(packOf('usr/lib/py/big.so'), undefined, 'a file over the member limit does not');
    assert.ok(SUB.every((r) => !SMALL.some((q) => packOf(q) === packOf(r))), 'a subdirectory has packs of its own');
    const packs = new Set([...SMALL, ...SUB].map(packOf));

    const web = await serve(s.dir, 'serve');
    const m = await mount(web.url, 'serve-mnt');
    const root = path.join(m.mp, 'layers', s.hex);
    const log0 = (await web.accessLog()).length;
    const first = await fsp.readFile(path.join(root, SMALL[0]!));
    assert.ok(first.equals(await fsp.readFile(path.join(src, SMALL[0]!))));
    let log = (await web.accessLog()).slice(log0);
    assert.equal(count(log, /^GET \/packs\/.* 200 /), 1, `one pack request:\n${log.join('\n')}`);
    assert.equal(count(log, /^GET \/data\/.* 200 /), 1, 'and the catalog: no object of its own');
    // Every sibling (and every file of the tree) reads exact, against the tree GNU tar archived.
    for (const r of [...SMALL, ...SUB, 'usr/lib/py/tiny.txt', 'usr/lib/py/big.so', 'usr/lib/huge.bin']) {
      const [got, want] = await Promise.all([fsp.readFile(path.join(root, r)), fsp.readFile(path.join(src, r))]);
      assert.equal(sha256(got), sha256(want), r);
    }
    log = (await web.accessLog()).slice(log0);
    assert.equal(count(log, /^GET \/packs\//), packs.size, `one request per pack, whatever the number of files:\n${log.join('\n')}`);
    const dataGets = log.filter((l) => l.startsWith('GET /data/')).map((l) => l.split(' ')[1]!.slice(6).replace('/', ''));
    for (const r of [...SMALL, ...SUB]) assert.ok(!dataGets.includes(maps.get(r)![0]!.hash), `${r} came from its pack, not its own object`);
    const st = await m.stats();
    assert.equal(st.cache.packFetches, packs.size);
    assert.equal(st.cache.packMembers, SMALL.length + SUB.length);
    assert.equal(st.cache.packFallbacks, 0);
    assert.match(await m.metrics(), new RegExp(`^thinfs_store_pack_fetches_total ${packs.size}$`, 'm'));
    await stop(m);

    // Export over HTTP reads small files through their packs too, and gives back the tar GNU tar wrote.
    const e0 = (await web.accessLog()).length;
    const out = path.join(work, 'export.tar');
    await thinfsOk(['export', '--store', web.url, s.hex, '-o', out]);
    const cmp = await compareTars(tarFile, out, await fsp.mkdtemp(path.join(work, 'cmp-')));
    assert.deepEqual(cmp, { listing: [], names: [], tree: [], xattrs: [] }, 'export gives back what GNU tar archived');
    const elog = (await web.accessLog()).slice(e0);
    assert.equal(count(elog, /^GET \/packs\/.* 200 /), packs.size, `export: one request per pack:\n${elog.join('\n')}`);
    const eData = elog.filter((l) => l.startsWith('GET /data/')).map((l) => l.split(' ')[1]!.slice(6).replace('/', ''));
    for (const r of [...SMALL, ...SUB]) assert.ok(!eData.includes(maps.get(r)![0]!.hash), `export: ${r} came from its pack`);
  });

  it('a corrupt pack member is EIO for that file only (never wrong bytes); with its own object sound, that file still reads', async () => {
    const s = await newStore('corrupt');
    const { maps } = await chunkMaps(s.dir, s.hex, SMALL);
    const victim = SMALL[3]!;
    const ref = maps.get(victim)![0]!;
    const file = path.join(s.dir, packPath(ref.pack!.name));
    const raw = await fsp.readFile(file);
    const members = parsePack(ref.pack!.name, raw);
    const k = members.findIndex((x) => x.hash === ref.hash);
    const at = members[k]!.frame.byteOffset - raw.byteOffset + 20; // inside the member's payload, past its header
    raw[at] ^= 0xff;
    await fsp.chmod(file, 0o644);
    await fsp.writeFile(file, raw);
    // Its own object damaged too: nothing sound is left for that file.
    const obj = path.join(s.dir, objectPath(ref.hash));
    const saved = await fsp.readFile(obj);
    const bad = Buffer.from(saved); bad[bad.length - 3] ^= 0xff;
    await fsp.chmod(obj, 0o644);
    await fsp.writeFile(obj, bad);

    const web = await serve(s.dir, 'corrupt');
    let m = await mount(web.url, 'corrupt-mnt');
    let root = path.join(m.mp, 'layers', s.hex);
    await assert.rejects(fsp.readFile(path.join(root, victim)), (e: NodeJS.ErrnoException) => e.code === 'EIO');
    for (const r of SMALL.filter((x) => x !== victim && maps.get(x)![0]!.pack!.name === ref.pack!.name)) {
      assert.ok((await fsp.readFile(path.join(root, r))).equals(await fsp.readFile(path.join(src, r))), `sibling ${r} reads exact`);
    }
    assert.ok((await m.stats()).cache.packBadMembers >= 1);
    await stop(m);

    // Its own object sound again: a fresh node reads the file exact (one more request), the pack still damaged.
    await fsp.writeFile(obj, saved);
    m = await mount(web.url, 'corrupt-mnt2');
    root = path.join(m.mp, 'layers', s.hex);
    assert.ok((await fsp.readFile(path.join(root, victim))).equals(await fsp.readFile(path.join(src, victim))));
    await stop(m);
  });

  it('gc keeps the packs of published layers and sweeps those no catalog names', async () => {
    const s = await newStore('gc');
    const o = await thinfsJson<IngestJson>(['ingest', otherTar, '--store', s.dir, '--json', '--no-progress']);
    const live = (await chunkMaps(s.dir, s.hex, [])).packs;
    const dead = (await chunkMaps(s.dir, o.diffId.slice(7), [])).packs;
    assert.ok(live.length && dead.length);
    // The other layer is unpublished: its catalog, objects and packs are garbage now.
    await fsp.rm(path.join(s.dir, 'layers', `${o.diffId.slice(7)}.json`));
    const exists = (n: string) => fsp.access(path.join(s.dir, packPath(n))).then(() => true, () => false);
    const r = await thinfsJson<{ removed: number }>(['gc', '--store', s.dir, '--grace', '0', '--json']);
    assert.ok(r.removed > 0);
    for (const n of live) assert.ok(await exists(n), `live pack ${n} kept`);
    for (const n of dead) assert.equal(await exists(n), false, `dead pack ${n} swept`);
    const f = await thinfsJson<{ ok: boolean }>(['fsck', '--store', s.dir, '--json']);
    assert.equal(f.ok, true);
  });

  it('fsck finds a corrupt pack (quarantined) and a missing one, and --repair --from brings them back', async () => {
    const s = await newStore('fsck');
    const pristine = await newStore('fsck-pristine');
    const packs = (await chunkMaps(s.dir, s.hex, [])).packs;
    const [p1, p2] = packs as [string, string];
    const f1 = path.join(s.dir, packPath(p1));
    const raw = await fsp.readFile(f1);
    raw[raw.length - 5] ^= 0xff; // the last member's frame
    await fsp.chmod(f1, 0o644);
    await fsp.writeFile(f1, raw);
    await fsp.rm(path.join(s.dir, packPath(p2)));

    const r = await thinfs(['fsck', '--store', s.dir, '--json']);
    assert.equal(r.code, 5, r.stderr);
    const rep = JSON.parse(r.stdout) as { corrupt: Array<{ hash: string; pack?: boolean; quarantined: string | null; layers: string[] }>; missing: Array<{ hash: string; pack?: unknown }> };
    const c = rep.corrupt.find((x) => x.hash === p1);
    assert.ok(c?.pack && c.quarantined, `corrupt pack reported and quarantined: ${r.stdout}`);
    assert.deepEqual(c.layers, [`sha256:${s.hex}`]);
    assert.ok(rep.missing.some((x) => x.hash === p1 && x.pack) && rep.missing.some((x) => x.hash === p2 && x.pack), 'both packs reported missing');
    const human = await thinfs(['fsck', '--store', s.dir, '--dry-run']);
    assert.match(human.stdout, new RegExp(`missing pack ${p2}`));

    const fixed = await thinfs(['fsck', '--store', s.dir, '--repair', '--from', pristine.dir, '--json']);
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    for (const p of [p1, p2]) assert.ok((await fsp.readFile(path.join(s.dir, packPath(p)))).equals(await fsp.readFile(path.join(pristine.dir, packPath(p)))));
  });

  it('fsck --repair from a registry writes a missing and a corrupt pack back (the re-ingest gives the same packs)', async () => {
    const lay = await new OciLayout(path.join(work, 'layout')).init();
    await lay.tag(await lay.image([layerTar], { os: 'linux', architecture: 'amd64' }), 'v1');
    registry = await startRegistry(path.join(work, 'registry'));
    await pushLayout(path.join(work, 'layout'), 'v1', registry, 'test/packs');
    const store = path.join(work, 'regstore');
    await thinfsOk(['init', store]);
    const c = await run(process.execPath, [path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js'), '--insecure', '--store', store, '--json', `${registry.host}/test/packs:v1`],
      { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 180_000 });
    assert.equal(c.code, 0, c.stderr);
    const hex = layerTar.diffId.slice(7);
    const [p1, p2] = (await chunkMaps(store, hex, [])).packs as [string, string];
    const orig = await Promise.all([p1, p2].map((p) => fsp.readFile(path.join(store, packPath(p)))));
    await fsp.rm(path.join(store, packPath(p1)));
    const bad = Buffer.from(orig[1]!); bad[bad.length - 7] ^= 0xff;
    await fsp.chmod(path.join(store, packPath(p2)), 0o644);
    await fsp.writeFile(path.join(store, packPath(p2)), bad);
    const r = await thinfs(['fsck', '--store', store, '--repair', '--from', `${registry.host}/test/packs`, '--insecure', '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const rep = JSON.parse(r.stdout) as { before: { missing: Array<{ hash: string }> } };
    assert.deepEqual(rep.before.missing.map((m) => m.hash).sort(), [p1, p2].sort());
    for (const [i, p] of [p1, p2].entries()) assert.ok((await fsp.readFile(path.join(store, packPath(p)))).equals(orig[i]!), `pack ${p} written back`);
  });

  it('a catalog written before packs reads as before: exact bytes, one request per file', async () => {
    const s = await newStore('old', tarFile, { THINFS_PACKS: '0' });
    const { hasPacks, maps } = await chunkMaps(s.dir, s.hex, SMALL);
    assert.equal(hasPacks, false);
    assert.ok([...maps.values()].every((c) => !c[0]!.pack));
    await assert.rejects(fsp.access(path.join(s.dir, 'packs')));
    const web = await serve(s.dir, 'old');
    const m = await mount(web.url, 'old-mnt');
    const root = path.join(m.mp, 'layers', s.hex);
    const log0 = (await web.accessLog()).length;
    for (const r of SMALL) assert.ok((await fsp.readFile(path.join(root, r))).equals(await fsp.readFile(path.join(src, r))), r);
    const log = (await web.accessLog()).slice(log0);
    assert.equal(count(log, /^GET \/packs\//), 0);
    assert.equal(count(log, /^GET \/data\/.* 200 /), SMALL.length + 1, 'the catalog, then one object per file');
    await stop(m);
    // And a layer with packs next to it in the same store: both read.
    const r = await thinfsJson<IngestJson>(['ingest', otherTar, '--store', s.dir, '--json', '--no-progress']);
    const m2 = await mount(web.url, 'old-mnt2');
    assert.ok((await fsp.readFile(path.join(m2.mp, 'layers', r.diffId.slice(7), 'opt/other/o1.txt'))).equals(await fsp.readFile(path.join(work, 'other.d', 'opt/other/o1.txt'))));
    assert.ok((await fsp.readFile(path.join(m2.mp, 'layers', s.hex, SMALL[1]!))).equals(await fsp.readFile(path.join(src, SMALL[1]!))));
    await stop(m2);
  });
});
