// The signed repository manifest across mirrors: a first mirror that serves a damaged manifest, or an older validly
// signed one (a rolled-back or stale mirror, a replay), is that mirror's failure, and the next mirror's current manifest
// is trusted, as for every other file. Before, the first answer was checked only after the backend had returned it, so
// one bad mirror kept nodes from starting (replayed, bad signature) and running mounts from seeing new revisions.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, runOk, thinfs, thinfsJson, thinfsOk, waitFor } from './helpers/proc.js';
import { startHostileServer, type HostileServer } from './helpers/hostile-server.js';
import { pseudoRandom } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';

const MANIFEST = 'thinfs-published';
const OLD = 'old-published';
const FLAGS = ['--http-timeout', '10', '--headers-timeout', '2', '--low-speed-time', '2', '--http-retries', '1', '--host-reset', '0.05'];

let dir = '';
let store = '';
let key = '';
let pub = '';
let hostile: HostileServer;
let healthy: HostileServer;
const mounts: Mounted[] = [];

async function layerWith(name: string): Promise<string> {
  const src = join(dir, `src-${name}`);
  await mkdir(src, { recursive: true });
  await writeFile(join(src, `${name}.bin`), pseudoRandom(50_000, name));
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, `${name}.tar`), '.']);
  return (await thinfsJson<{ diffId: string }>(['ingest', join(dir, `${name}.tar`), '--store', store, '--json', '--no-progress'],
    { env: { THINFS_SIGNING_KEY: key } })).diffId.slice(7);
}

let l1 = '';

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  await thinfsOk(['keygen', join(dir, 'k')]);
  key = join(dir, 'k', 'thinfs.key');
  pub = join(dir, 'k', 'thinfs.pub');
  l1 = await layerWith('l1');
  // An older revision, validly signed, kept aside: what a stale or rolled-back mirror serves.
  await copyFile(join(store, MANIFEST), join(store, OLD));
  await thinfsOk(['sign', '--store', store, '--key', key]);
  hostile = await startHostileServer(store);
  healthy = await startHostileServer(store);
  hostile.match = (rel) => rel === MANIFEST;
  hostile.swapWith = () => OLD;
});

after(async () => {
  for (const m of mounts) { if (process.env.DEBUG_MOUNT) console.error(m.stderr()); await m.stop().catch(() => null); await forceUnmount(m.mp); }
  await hostile?.close();
  await healthy?.close();
  await cleanupTmpDirs();
});

test('a damaged manifest on the first mirror: the next mirror\'s is trusted', async () => {
  hostile.mode = 'wrong';
  try {
    const r = await thinfs(['layers', '--store', `${hostile.url},${healthy.url}`, '--public-key', pub, ...FLAGS]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(l1));
    assert.ok(hostile.hostile.includes(MANIFEST), 'the damaged manifest was served first');
  } finally { hostile.mode = 'ok'; }
});

test('an older signed revision on the first mirror (replay, stale mirror): the next mirror\'s current one is trusted, at start and while mounted', async () => {
  const trustDir = join(dir, 'trust-cli');
  assert.equal((await thinfs(['layers', '--store', healthy.url, '--public-key', pub, '--trust-dir', trustDir])).code, 0);
  hostile.mode = 'swap';
  try {
    // Alone, the stale mirror is refused with the reason.
    const alone = await thinfs(['layers', '--store', hostile.url, '--public-key', pub, '--trust-dir', trustDir, ...FLAGS]);
    assert.equal(alone.code, 5);
    assert.match(alone.stderr, /untrusted \(replayed\)/);
    const r = await thinfs(['layers', '--store', `${hostile.url},${healthy.url}`, '--public-key', pub, '--trust-dir', trustDir, ...FLAGS]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(l1));

    // A mount that saw the current revision restarts behind the stale first mirror, and follows new revisions.
    const cacheDir = join(dir, 'cache');
    hostile.mode = 'ok';
    const first = await mountStore(healthy.url, join(dir, 'mnt1'), { cacheDir, extra: ['--public-key', pub] });
    mounts.push(first);
    await first.stop();
    hostile.mode = 'swap';
    const m = await mountStore(`${hostile.url},${healthy.url}`, join(dir, 'mnt2'), { cacheDir, extra: ['--public-key', pub, '--refresh', '1', ...FLAGS] });
    mounts.push(m);
    assert.ok((await readdir(join(m.mp, 'layers', l1))).includes('l1.bin'));
    const l2 = await layerWith('l2');
    await waitFor(async () => (await readdir(join(m.mp, 'layers', l2)).catch(() => null))?.includes('l2.bin') || null, 10_000, 200,
      'a layer published while mounted, behind a stale first mirror');
  } finally { hostile.mode = 'ok'; }
});
