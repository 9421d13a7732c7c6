// Objects fetched without a size the catalog or manifest gives (an image's config and registry manifest, read for the
// podman image store, by the mount with --podman-store and by `thinfs podman-store`): a hostile mirror answers with a
// small object whose header claims, and whose zstd frame expands to, gigabytes. The reader must refuse it from its
// header, before decoding: a 45 KB answer used to make the process allocate and fill 1.5 GB before the hash refused it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, runOk, thinfsJson, thinfsOk } from './helpers/proc.js';
import { startHostileServer, type HostileServer } from './helpers/hostile-server.js';
import { putTestImage, testDescriptor } from './helpers/descriptor.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';

let dir = '';
let store = '';
let pub = '';
let hostile: HostileServer;
const mounts: Mounted[] = [];

/** A framed zstd object of `len` zero bytes made of RLE blocks: ~4 bytes per 128 KiB decoded. */
function bomb(len: number): Buffer {
  const BLOCK = 128 << 10, n = Math.ceil(len / BLOCK);
  const out = Buffer.alloc(16 + 6 + n * 4);
  out.write('TFO1', 0);
  out[4] = 1; // zstd
  out.writeBigUInt64LE(BigInt(len), 8);
  out.writeUInt32LE(0xfd2fb528, 16);
  out[20] = 0x00; // no content size, not single-segment
  out[21] = 0x38; // window 128 KiB
  for (let i = 0; i < n; i++) {
    const size = i === n - 1 ? len - BLOCK * (n - 1) : BLOCK;
    out.writeUIntLE(size * 8 + 2 + (i === n - 1 ? 1 : 0), 22 + i * 4, 3); // RLE block, last flag on the last
    out[25 + i * 4] = 0;
  }
  return out;
}

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  // Signed, so the mount lists the store's images from its manifest (the test server has no directory listings).
  await thinfsOk(['keygen', join(dir, 'k')]);
  pub = join(dir, 'k', 'thinfs.pub');
  const env = { THINFS_SIGNING_KEY: join(dir, 'k', 'thinfs.key') };
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'f'), 'hello\n');
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, 'a.tar'), '.']);
  const layer = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'a.tar'), '--store', store, '--json'], { env })).diffId.slice(7);
  process.env.THINFS_SIGNING_KEY = env.THINFS_SIGNING_KEY;
  try { await putTestImage(store, 'app:1', [layer]); } finally { delete process.env.THINFS_SIGNING_KEY; }
  await writeFile(join(store, 'bomb.obj'), bomb(1_500_000_000));
  const config = testDescriptor('app:1', store, [layer]).configDigest.slice(7);
  hostile = await startHostileServer(store, 'swap');
  hostile.match = (rel) => rel === `data/${config.slice(0, 2)}/${config.slice(2)}`;
  hostile.swapWith = () => 'bomb.obj';
});

after(async () => {
  for (const m of mounts) { await m.stop().catch(() => null); await forceUnmount(m.mp); }
  await hostile?.close();
  await cleanupTmpDirs();
});

test('an image config answered with a decompression bomb is refused from its header: the mount\'s memory stays small, the podman image is still generated', async () => {
  const m = await mountStore(hostile.url, join(dir, 'mnt'), { cacheDir: join(dir, 'cache'), extra: ['--public-key', pub, '--podman-store', join(dir, 'podman')] });
  mounts.push(m);
  assert.ok(hostile.hostile.length > 0, `the config was asked for and answered with the bomb: ${hostile.requests.join(' ')}`);
  const images = await readFile(join(dir, 'podman', 'overlay-images', 'images.json'), 'utf8');
  assert.match(images, /app:1/);
  const kb = Number(/VmHWM:\s+(\d+)/.exec(await readFile(`/proc/${m.child.pid}/status`, 'utf8'))![1]);
  assert.ok(kb < 600_000, `daemon peak memory ${kb} kB`);
});
