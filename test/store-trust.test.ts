// Issue 12, acceptance 2 and 3: the signed repository manifest over a stock nginx. A one-byte change, another
// key's signature, a replayed older revision, an expired manifest, a descriptor the manifest does not name (or
// names with another hash), an unsigned store: each refused with its reason. A mount with --public-key serves
// only what the manifest names; layers and images published while mounted appear within the refresh time,
// and a file held open across the refresh keeps reading correct bytes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, lstat, mkdir, open, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, runOk, thinfs, thinfsJson, thinfsOk, sha256, waitFor, REPO_ROOT } from './helpers/proc.js';
import { startNginx, type WebServer } from './helpers/web.js';
import { putTestImage, testDescriptor } from './helpers/descriptor.js';
import { pseudoRandom } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { encodeImageDirName } from '../src/mount/names.js';
import { imagePath } from '../src/store/layout.js';

let dir = '';
let store = '';
let web: WebServer;
const keys = { k1: '', k1pub: '', k2: '', k2pub: '' };
const mounts: Mounted[] = [];
const MANIFEST = 'thinfs-published';

async function layerWith(name: string, files: Record<string, Buffer>, env: Record<string, string>): Promise<string> {
  const src = join(dir, `src-${name}`);
  await mkdir(src, { recursive: true });
  for (const [f, b] of Object.entries(files)) await writeFile(join(src, f), b);
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, `${name}.tar`), '.']);
  return (await thinfsJson<{ diffId: string }>(['ingest', join(dir, `${name}.tar`), '--store', store, '--json', '--no-progress'], { env })).diffId.slice(7);
}

const signed = () => ({ THINFS_SIGNING_KEY: keys.k1 });

/** `thinfs layers` through the signed manifest: exit code and stderr. */
async function readSigned(extra: string[] = []): Promise<{ code: number | null; out: string; err: string }> {
  const r = await thinfs(['layers', '--store', web.url, '--public-key', keys.k1pub, ...extra]);
  return { code: r.code, out: r.stdout, err: r.stderr };
}

let l1 = '';

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  for (const k of ['k1', 'k2'] as const) {
    await thinfsOk(['keygen', join(dir, k)]);
    keys[k] = join(dir, k, 'thinfs.key');
    keys[`${k}pub`] = join(dir, k, 'thinfs.pub');
  }
  l1 = await layerWith('l1', { 'one.bin': pseudoRandom(300_000, 'one'), 'small': Buffer.from('hello\n') }, signed());
  process.env.THINFS_SIGNING_KEY = keys.k1;
  await putTestImage(store, 'app:v1', [l1]);
  delete process.env.THINFS_SIGNING_KEY;
  web = await startNginx(store, join(dir, 'nginx'));
});

after(async () => {
  for (const m of mounts) { await m.stop().catch(() => null); await forceUnmount(m.mp); }
  await web?.stop();
  await cleanupTmpDirs();
});

test('keygen writes a private key only its owner reads; every writer republishes a signed manifest naming everything', async () => {
  const { stat } = await import('node:fs/promises');
  assert.equal((await stat(keys.k1)).mode & 0o777, 0o600);
  const text = (await readFile(join(store, MANIFEST), 'utf8')).split('\n--\n');
  const m = JSON.parse(text[0]!) as { revision: number; layers: Record<string, { sha256: string }>; images: Record<string, { sha256: string }> };
  assert.match(text[1]!, /^ed25519 [0-9a-f]{16} \S+\n$/);
  assert.equal(m.revision, 2, 'one revision per publication (layer, then image)');
  assert.equal(m.layers[l1]!.sha256, sha256(await readFile(join(store, 'layers', `${l1}.json`))));
  assert.equal(m.images['app:v1']!.sha256, sha256(await readFile(join(store, imagePath('app:v1')))));
  const ok = await readSigned();
  assert.equal(ok.code, 0, ok.err);
  assert.equal(ok.out.trim(), `sha256:${l1}`);
});

test('a one-byte change, another key, an unsigned manifest: refused with the reason', async () => {
  const path = join(store, MANIFEST);
  const good = await readFile(path);
  try {
    const bad = Buffer.from(good);
    bad[bad.indexOf('"revision":') + 11] ^= 0x01; // one digit of the revision
    await writeFile(path, bad);
    let r = await readSigned();
    assert.equal(r.code, 5);
    assert.match(r.err, /untrusted \(bad-signature\)/);

    await thinfsOk(['sign', '--store', store, '--key', keys.k2]);
    r = await readSigned();
    assert.equal(r.code, 5);
    assert.match(r.err, /untrusted \(unknown-key\): .*signed by key [0-9a-f]{16}/);

    // During a rotation both keys are trusted.
    const both = await thinfs(['layers', '--store', web.url, '--public-key', `${keys.k1pub},${keys.k2pub}`]);
    assert.equal(both.code, 0, both.stderr);

    const [payload] = good.toString().split('\n--\n');
    await writeFile(path, `${payload}\n--\nunsigned\n`);
    r = await readSigned();
    assert.equal(r.code, 5);
    assert.match(r.err, /untrusted \(unsigned\)/);
  } finally {
    await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
  }
});

test('an expired manifest and a replayed older revision are refused (the revision seen persists across runs)', async () => {
  const trustDir = join(dir, 'trust-state');
  const path = join(store, MANIFEST);
  await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
  const older = await readFile(path);
  await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
  const newer = await readFile(path);
  let r = await readSigned(['--trust-dir', trustDir]);
  assert.equal(r.code, 0, r.err);
  try {
    await writeFile(path, older);
    r = await readSigned(['--trust-dir', trustDir]);
    assert.equal(r.code, 5);
    assert.match(r.err, /untrusted \(replayed\): .*revision \d+, lower than revision \d+ already seen/);
    // Without the state of a previous run the older revision is still validly signed.
    assert.equal((await readSigned()).code, 0);

    await thinfsOk(['sign', '--store', store, '--key', keys.k1, '--validity', String(1 / 86400)]); // one second
    await new Promise((res) => setTimeout(res, 1500));
    r = await readSigned();
    assert.equal(r.code, 5);
    assert.match(r.err, /untrusted \(expired\): .*expired at/);
  } finally {
    await writeFile(path, newer);
    await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
  }
});

test('processes recording revisions in one trust dir at once never lower what another recorded', async () => {
  const trustDir = join(dir, 'trust-race');
  const mod = join(REPO_ROOT, 'dist', 'src', 'store', 'trust.js');
  for (let round = 0; round < 4; round++) {
    const n = 12;
    // Each writer records its own revision of one key, all released at once (a file they wait for); the highest must
    // survive every interleaving.
    const go = join(dir, `trust-race-go-${round}`);
    const writers = Array.from({ length: n }, (_, i) => runOk(process.execPath, ['--input-type=module', '-e',
      `const { existsSync } = await import('node:fs'); const { RevisionLog } = await import(${JSON.stringify(mod)});
       const log = new RevisionLog(${JSON.stringify(trustDir)}); await log.read();
       (await import('node:fs')).writeFileSync(${JSON.stringify(go)} + '.ready.' + ${i}, '');
       while (!existsSync(${JSON.stringify(go)})) await new Promise((r) => setTimeout(r, 2));
       await log.record('k', ${round * n + i + 1});`]));
    await waitFor(async () => (await readdir(dir)).filter((f) => f.startsWith(`trust-race-go-${round}.ready.`)).length === n || null, 60_000, 20, 'writers ready');
    await writeFile(go, '');
    await Promise.all(writers);
    const all = JSON.parse(await readFile(join(trustDir, 'revisions.json'), 'utf8')) as Record<string, number>;
    assert.equal(all.k, (round + 1) * n, `round ${round}: the highest revision recorded`);
  }
});

test('a descriptor the manifest does not name, or names with another hash, is refused; the mount serves nothing else', async () => {
  // Placed in the store without publishing (no new signed revision names it).
  const rogue = testDescriptor('rogue:1', store, [l1]);
  await writeFile(join(store, imagePath('rogue:1')), JSON.stringify(rogue));
  const listed = await thinfsOk(['images', '--store', web.url, '--public-key', keys.k1pub]);
  assert.deepEqual(listed.split('\n').filter(Boolean), ['app:v1']);
  const unsignedView = await thinfsOk(['images', '--store', web.url]);
  assert.match(unsignedView, /rogue:1/, 'the file is there for anyone not checking');
  let r = await thinfs(['images', '--store', web.url, '--public-key', keys.k1pub, 'rogue:1']);
  assert.equal(r.code, 5);
  assert.match(r.stderr, /untrusted \(not-named\): image rogue:1 is not named by the signed repository manifest/);

  // A named descriptor replaced in place (same name, other bytes).
  const named = join(store, imagePath('app:v1'));
  const orig = await readFile(named);
  await writeFile(named, JSON.stringify({ ...JSON.parse(orig.toString()), reference: 'evil/app:v1' }));
  try {
    r = await thinfs(['images', '--store', web.url, '--public-key', keys.k1pub, 'app:v1']);
    assert.equal(r.code, 5);
    assert.match(r.stderr, /untrusted \(hash-mismatch\): image descriptor app:v1 hashes to/);
  } finally { await writeFile(named, orig); }

  const m = await mountStore(web.url, join(dir, 'mnt-strict'), { cacheDir: join(dir, 'cache-strict'), extra: ['--public-key', keys.k1pub] });
  mounts.push(m);
  assert.deepEqual(await readdir(join(m.mp, 'images')), [encodeImageDirName('app:v1')]);
  await assert.rejects(readdir(join(m.mp, 'images', encodeImageDirName('rogue:1'), 'rootfs')));
  // The refusal is logged by the daemon; its stderr reaches us a moment after the reply did.
  await waitFor(() => /not-named/.test(m.stderr()) || null, 5_000, 50, 'the mount logging the not-named refusal');
  assert.deepEqual((await readdir(join(m.mp, 'images', encodeImageDirName('app:v1'), 'rootfs'))).sort(), ['one.bin', 'small']);
  await m.stop();

  // A mount refuses to start on a manifest it cannot trust, saying why.
  const path = join(store, MANIFEST);
  const good = await readFile(path);
  await thinfsOk(['sign', '--store', store, '--key', keys.k2]);
  try {
    await assert.rejects(mountStore(web.url, join(dir, 'mnt-refused'), { cacheDir: join(dir, 'cache-refused'), extra: ['--public-key', keys.k1pub] }), /untrusted \(unknown-key\)/);
  } finally {
    await writeFile(path, good);
    await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
  }
});

test('published while mounted: new layers and images appear within the refresh time; an open file keeps its bytes', async () => {
  const m = await mountStore(web.url, join(dir, 'mnt-live'), { cacheDir: join(dir, 'cache-live'), extra: ['--public-key', keys.k1pub, '--refresh', '1'] });
  mounts.push(m);
  const app = join(m.mp, 'images', encodeImageDirName('app:v1'), 'rootfs');
  const want = pseudoRandom(300_000, 'one');
  const fh = await open(join(app, 'one.bin'), 'r');
  try {
    const head = Buffer.alloc(1000);
    await fh.read(head, 0, 1000, 0);
    assert.ok(head.equals(want.subarray(0, 1000)));

    // Publish a new layer, a new image, and move app:v1 to the new layer.
    const l2 = await layerWith('l2', { 'two.bin': pseudoRandom(200_000, 'two') }, signed());
    process.env.THINFS_SIGNING_KEY = keys.k1;
    try {
      await putTestImage(store, 'app:v2', [l1, l2]);
      await putTestImage(store, 'app:v1', [l2]);
    } finally { delete process.env.THINFS_SIGNING_KEY; }

    const t0 = Date.now();
    await waitFor(async () => (await readdir(join(m.mp, 'layers'))).includes(l2) || null, 10_000, 100, 'new layer listed');
    await waitFor(async () => (await readdir(join(m.mp, 'images'))).includes(encodeImageDirName('app:v2')) || null, 10_000, 100, 'new image listed');
    const seenMs = Date.now() - t0;
    assert.ok(seenMs < 5000, `appeared after ${seenMs} ms with --refresh 1`);
    assert.deepEqual((await readdir(join(m.mp, 'images', encodeImageDirName('app:v2'), 'rootfs'))).sort(), ['one.bin', 'small', 'two.bin']);
    assert.equal(sha256(await readFile(join(m.mp, 'layers', l2, 'two.bin'))), sha256(pseudoRandom(200_000, 'two')));
    // A fresh lookup of app:v1 shows its new content (after the kernel's entry cache expires), by lookups alone too:
    // the transport answers names in the old revision's rootfs from its listing (handed at the open above), never
    // in the new one's (its nodes have ids of their own)...
    await waitFor(async () => (await lstat(join(app, 'two.bin')).then(() => true, () => null)), 10_000, 200, 'app:v1 moved (lookup)');
    await assert.rejects(lstat(join(app, 'one.bin')), { code: 'ENOENT' }, 'app:v1 no longer holds one.bin');
    await waitFor(async () => (await readdir(join(m.mp, 'images', encodeImageDirName('app:v1'), 'rootfs'))).includes('two.bin') || null, 10_000, 200, 'app:v1 moved');

    // ...while the file opened before the refresh still reads the bytes it opened, to the end.
    const all = Buffer.alloc(want.length);
    let off = 0;
    while (off < all.length) {
      const { bytesRead } = await fh.read(all, off, all.length - off, off);
      if (!bytesRead) break;
      off += bytesRead;
    }
    assert.equal(off, want.length);
    assert.equal(sha256(all), sha256(want));
  } finally { await fh.close(); }
  assert.match(m.stderr(), /new repository manifest revision/);
  // Polls between publications are conditional GETs that nginx answers 304 Not Modified.
  await new Promise((r) => setTimeout(r, 2500));
  assert.ok((await web.accessLog()).some((l) => l.startsWith('GET /thinfs-published 304')), 'conditional GETs of the manifest');
});

test('a trusted manifest that expires while mounted: still served, warned about once, in /stats and /metrics; a newer one clears it', async () => {
  await thinfsOk(['sign', '--store', store, '--key', keys.k1, '--validity', String(6 / 86400)]); // six seconds
  const m = await mountStore(web.url, join(dir, 'mnt-expiry'), { cacheDir: join(dir, 'cache-expiry'), extra: ['--public-key', keys.k1pub, '--refresh', '1'] });
  mounts.push(m);
  try {
    const s0 = await m.stats();
    assert.equal(s0.trust?.expired, false);
    await waitFor(async () => /the trusted repository manifest has expired/.test(m.stderr()) || null, 20_000, 200, 'expiry warned');
    // Still served: running containers keep their files.
    assert.equal(await readFile(join(m.mp, 'layers', l1, 'small'), 'utf8'), 'hello\n');
    const s1 = await m.stats();
    assert.equal(s1.trust!.expired, true);
    assert.equal(s1.trust!.revision, s0.trust!.revision);
    const metrics = await m.metrics();
    const exp = /^thinfs_repo_manifest_expiry_timestamp_seconds (\S+)$/m.exec(metrics);
    assert.ok(exp, 'expiry gauge exported');
    assert.equal(Number(exp[1]) * 1000, Date.parse(s1.trust!.expires));
    assert.match(metrics, new RegExp(`^thinfs_repo_manifest_revision ${s1.trust!.revision}$`, 'm'));
    // Polls go on (every second here); the warning is not repeated at each.
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(m.stderr().split('\n').filter((l) => l.includes('has expired')).length, 1);
    await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
    await waitFor(async () => (await m.stats()).trust!.expired === false || null, 10_000, 200, 'a newer revision trusted');
    assert.match(m.stderr(), /repository manifest valid again/);
  } finally {
    await m.stop();
    await thinfsOk(['sign', '--store', store, '--key', keys.k1]);
  }
});

test('concurrent writers serialize manifest updates: every layer named, one revision each, still signed', async () => {
  const before = JSON.parse((await readFile(join(store, MANIFEST), 'utf8')).split('\n--\n')[0]!) as { revision: number };
  const ids = await Promise.all([0, 1, 2, 3].map((i) => layerWith(`c${i}`, { [`c${i}.bin`]: pseudoRandom(50_000 + i, `c${i}`) }, signed())));
  const [payload] = (await readFile(join(store, MANIFEST), 'utf8')).split('\n--\n');
  const m = JSON.parse(payload!) as { revision: number; layers: Record<string, unknown> };
  for (const id of ids) assert.ok(m.layers[id], `layer ${id} named`);
  assert.equal(m.revision, before.revision + 4);
  const r = await readSigned();
  assert.equal(r.code, 0, r.err);
  for (const id of ids) assert.match(r.out, new RegExp(id));
});

test('the mount\'s podman image store follows the signed manifest too: an image signed while mounted appears in it', async () => {
  const podman = join(dir, 'podman-live');
  const m = await mountStore(web.url, join(dir, 'mnt-podman'), { cacheDir: join(dir, 'cache-podman'), extra: ['--public-key', keys.k1pub, '--refresh', '1', '--podman-store', podman] });
  mounts.push(m);
  const images = async () => (JSON.parse(await readFile(join(podman, 'overlay-images', 'images.json'), 'utf8').catch(() => '[]')) as Array<{ names?: string[] }>)
    .flatMap((i) => i.names ?? []);
  assert.ok((await images()).some((n) => n.endsWith('app:v1')), `the first pass has app:v1 (${await images()})`);
  assert.ok(!(await images()).some((n) => n.endsWith('app:podman')));
  process.env.THINFS_SIGNING_KEY = keys.k1;
  try { await putTestImage(store, 'app:podman', [l1]); } finally { delete process.env.THINFS_SIGNING_KEY; }
  // Refreshed every second, polled every two: well within ten seconds, without a remount.
  await waitFor(async () => (await images()).some((n) => n.endsWith('app:podman')) || null, 10_000, 100, `app:podman in the podman store (${m.stderr().slice(-2000)})`);
});

test('the layer trigger\'s index of images follows the signed manifest\'s revision, not the clock: touching a layer no image names re-reads no descriptor; without the manifest it does', async () => {
  // A layer published (and signed) that no image names: an unknown layer to the index.
  const lone = await layerWith('lone', { 'lone.bin': pseudoRandom(30_000, 'lone') }, signed());
  const prefetch = async (m: Mounted) => ((await m.stats()) as unknown as { prefetch: { layerIndexBuilds: number; layerIndexPublished: number } }).prefetch;
  const builds = async (m: Mounted) => (await prefetch(m)).layerIndexBuilds;
  const touchTwice = async (m: Mounted) => {
    await waitFor(async () => (await builds(m)) >= 1 || undefined, 20_000, 50, 'images indexed by top layer at mount start');
    await new Promise((r) => setTimeout(r, 1300)); // past the index's 1 s grace for unknown layers
    await readdir(join(m.mp, 'layers', lone));
    await readdir(join(m.mp, 'layers', l1));
    await new Promise((r) => setTimeout(r, 1000));
  };
  const signedMount = await mountStore(web.url, join(dir, 'mnt-index-signed'), { cacheDir: join(dir, 'cache-index-signed'), extra: ['--public-key', keys.k1pub] });
  mounts.push(signedMount);
  await touchTwice(signedMount);
  assert.equal(await builds(signedMount), 1, 'same revision: the index is not rebuilt (descriptors not fetched again)');
  assert.equal((await prefetch(signedMount)).layerIndexPublished, 1, 'built from the image index the signed manifest names');
  // The same store without --public-key: nothing says when an image was published, so the unknown layer re-indexes.
  const plain = await mountStore(web.url, join(dir, 'mnt-index-plain'), { cacheDir: join(dir, 'cache-index-plain') });
  mounts.push(plain);
  await touchTwice(plain);
  assert.ok((await builds(plain)) >= 2, 'unsigned: a layer no image names, touched after the grace, re-indexes');
  assert.equal((await prefetch(plain)).layerIndexPublished, await builds(plain), 'each from the published image index (the manifest as served)');
});
