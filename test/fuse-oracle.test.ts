// Issue 3, acceptance 1: the mounted layers/<diff id> equals GNU tar's own extraction (as root) in content, stat
// metadata, symlink targets, xattrs and hardlink inode equality; images/<name>/rootfs equals the kernel's own
// overlayfs over the mounted layer directories; the mount is read-only with proper errnos.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, run, runOk, sha256File, thinfsJson, thinfsOk, tmpDir, treeListing, xattrDump, type TreeEntry } from './helpers/proc.js';
import { diffTrees, extractTar } from './helpers/oracle.js';
import { canBuildEdgeCases, findPythonLib, makeEdgeCaseTar, makeTreeTar, type EdgeCaseFixture } from './fixtures/tars.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';
import { WritableStore } from '../src/store/store.js';
import { THIN_IMAGE_MEDIA_TYPE, type ThinImage } from '../src/format/descriptor.js';
import { encodeImageDirName } from '../src/mount/names.js';

interface IngestJson { diffId: string; catalog: string; blobDigest: string }

let work: string;
let store: string;
let mnt: Mounted;
let edge: EdgeCaseFixture;
const ids: Record<string, string> = {};

const hexOf = (diffId: string) => diffId.slice('sha256:'.length);
const layerDir = (label: string) => path.join(mnt.mp, 'layers', hexOf(ids[label]!));

async function ingest(label: string, tar: string): Promise<void> {
  const r = await thinfsJson<IngestJson>(['ingest', tar, '--store', store, '--json', '--no-progress']);
  ids[label] = r.diffId;
}

/** Names compare as bytes (each path is carried as latin1, one char per byte). */
function sorted(entries: TreeEntry[]): TreeEntry[] {
  return entries.slice().sort((a, b) => Buffer.compare(Buffer.from(a.path, 'latin1'), Buffer.from(b.path, 'latin1')));
}

async function compareWithTar(label: string, tar: string, convert: (e: TreeEntry[]) => TreeEntry[] = (e) => e): Promise<void> {
  const x = path.join(work, `x-${label}`);
  await extractTar(tar, x);
  const want = sorted(convert(await treeListing(x)));
  const got = sorted(await treeListing(layerDir(label)));
  assert.ok(got.length > 0, `${label}: mounted layer is empty`);
  assert.deepEqual(diffTrees(want, got), [], `${label}: mounted layer differs from GNU tar's extraction`);
  await fsp.rm(x, { recursive: true, force: true });
}

before(async () => {
  work = await tmpDir('thinfs-fuse-oracle-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const py = await findPythonLib();
  if (py) await ingest('python', await makeTreeTar(py, path.join(work, 'python.tar'), { exclude: ['__pycache__'] }));
  if (await canBuildEdgeCases()) {
    edge = await makeEdgeCaseTar(path.join(work, 'fixtures'));
    await ingest('edge-pax', edge.pax);
    await ingest('edge-gnu', edge.gnu);
    await ingest('whiteout', edge.whiteout);
    // A base layer for the whiteout layer to act on (its names are what the whiteouts and opaque dirs hide).
    const base = path.join(work, 'base');
    await runOk('bash', ['-euo', 'pipefail', '-c', `
      mkdir -p ${base} && cd ${base}
      mkdir -p etc/sub/deeper opaque/keep opaque/gone usr/lib usr/bin
      echo root:x:0:0 > etc/passwd; echo old-hosts > etc/hosts; echo sub-old > etc/sub/old; echo d > etc/sub/deeper/f
      echo old > opaque/old.txt; echo keep-old > opaque/keep/old; echo g > opaque/gone/x
      echo removed > removed-top; echo libold > usr/lib/libold.so; echo keep > usr/lib/keep.so
      printf '#!/bin/sh\\necho tool\\n' > usr/bin/tool; chmod 755 usr/bin/tool; ln -s tool usr/bin/tool-link
      setfattr -n user.base -v yes etc/hosts
    `]);
    await ingest('base', await makeTreeTar(base, path.join(work, 'base.tar')));
    const ws = await WritableStore.openDir(store);
    const desc: ThinImage = {
      schemaVersion: 1, mediaType: THIN_IMAGE_MEDIA_TYPE, name: 'test/overlay:v1', reference: 'local/test/overlay:v1',
      manifestDigest: 'sha256:' + '0'.repeat(64), platform: { os: 'linux', architecture: 'amd64' }, store,
      config: {}, configDigest: 'sha256:' + '1'.repeat(64), created: new Date(0).toISOString(),
      layers: (['base', 'whiteout'] as const).map((l) => ({
        digest: ids[l]!, diffId: ids[l]!, size: 0, mediaType: 'application/vnd.oci.image.layer.v1.tar', catalog: '', manifest: `layers/${hexOf(ids[l]!)}.json`,
      })),
    };
    await ws.putImage(desc);
  }
  const mp = path.join(work, 'mnt');
  mnt = await mountStore(store, mp, { cacheDir: path.join(work, 'cache') });
});

after(async () => {
  if (mnt) {
    const code = await mnt.stop();
    assert.equal(code, 0, `mount daemon exits 0 on SIGTERM\n${mnt.stderr().slice(-2000)}`);
    await forceUnmount(mnt.mp);
  }
  await cleanupTmpDirs();
});

describe('layers/<diff id> equals GNU tar extraction', () => {
  it('python stdlib tree of this machine', async (t) => {
    if (!ids.python) return t.skip('no /usr/lib/python3.N on this machine');
    await compareWithTar('python', path.join(work, 'python.tar'));
  });

  it('edge-case tar (PAX): content, mode, owners, size, mtime, nlink, rdev, targets', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    await compareWithTar('edge-pax', edge.pax);
  });

  it('edge-case tar (GNU format)', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    await compareWithTar('edge-gnu', edge.gnu);
  });

  it('edge-case tar: xattrs equal (getfattr), ENODATA for absent ones, size probes', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    const x = path.join(work, 'x-edge-xattrs');
    await extractTar(edge.pax, x);
    assert.equal(await xattrDump(layerDir('edge-pax')), await xattrDump(x));
    assert.match(await xattrDump(layerDir('edge-pax')), /user\.big=0x[0-9a-f]{6000}/, 'a 3000-byte xattr value comes through whole');
    const missing = await run('getfattr', ['-n', 'user.absent', path.join(layerDir('edge-pax'), edge.paths.xattrFile)]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /No such attribute/);
    await fsp.rm(x, { recursive: true, force: true });
  });

  it('hardlinks share one inode number and count 3 links; other files do not share it', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    const sts = await Promise.all(edge.paths.hardlinks.map((p) => fsp.lstat(path.join(layerDir('edge-pax'), p), { bigint: true })));
    assert.equal(new Set(sts.map((s) => s.ino)).size, 1, 'one inode for the group');
    for (const s of sts) assert.equal(s.nlink, 3n);
    const other = await fsp.lstat(path.join(layerDir('edge-pax'), 'links/target.txt'), { bigint: true });
    assert.notEqual(other.ino, sts[0]!.ino);
    const gnu = await fsp.lstat(path.join(layerDir('edge-gnu'), edge.paths.hardlinks[0]!), { bigint: true });
    assert.notEqual(gnu.ino, sts[0]!.ino, 'the same path in another layer is another inode');
    const again = await fsp.lstat(path.join(layerDir('edge-pax'), edge.paths.hardlinks[1]!), { bigint: true });
    assert.equal(again.ino, sts[0]!.ino, 'stable across lookups');
  });

  it('whiteout layer: overlayfs form (char 0/0 NAME, opaque xattr) instead of .wh.* files', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    const opaque = new Set<string>();
    await compareWithTar('whiteout', edge.whiteout, (entries) => {
      const out: TreeEntry[] = [];
      for (const e of entries) {
        const base = path.posix.basename(e.path);
        const dir = path.posix.dirname(e.path);
        if (base === '.wh..wh..opq') { opaque.add(dir); continue; }
        if (base.startsWith('.wh.')) {
          out.push({ ...e, path: dir === '.' ? base.slice(4) : `${dir}/${base.slice(4)}`, type: 'chardev', mode: (e.mode & 0o7777) | 0o020000, size: 0, sha256: undefined, rdev: 0 });
        } else out.push(e);
      }
      return out;
    });
    assert.deepEqual([...opaque].sort(), ['etc/sub', 'opaque']);
    for (const d of opaque) {
      const v = await runOk('getfattr', ['-n', 'trusted.overlay.opaque', '--only-values', path.join(layerDir('whiteout'), d)]);
      assert.equal(v, 'y', `${d} is opaque`);
    }
    const wh = await fsp.lstat(path.join(layerDir('whiteout'), 'etc/passwd'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'etc/passwd is a 0/0 whiteout');
  });
});

describe('images/<name>/rootfs', () => {
  it('equals the kernel overlayfs of the mounted layer directories (whiteouts, opaque dirs, shadowing)', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    const merged = path.join(work, 'overlay-merged');
    await fsp.mkdir(merged);
    await runOk('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${layerDir('whiteout')}:${layerDir('base')}`, merged]);
    try {
      const rootfs = path.join(mnt.mp, 'images', encodeImageDirName('test/overlay:v1'), 'rootfs');
      const want = sorted(await treeListing(merged));
      const got = sorted(await treeListing(rootfs));
      // Spot checks of overlay semantics, so an empty/identical mistake on both sides cannot pass.
      const names = new Set(got.map((e) => e.path));
      for (const gone of ['etc/passwd', 'removed-top', 'usr/lib/libold.so', 'opaque/old.txt', 'opaque/gone', 'opaque/keep/old', 'etc/sub/old', 'etc/sub/deeper']) {
        assert.ok(!names.has(gone), `${gone} is hidden`);
      }
      for (const kept of ['etc/hosts', 'usr/lib/keep.so', 'usr/lib/libnew.so', 'usr/bin/tool', 'usr/bin/tool-link', 'opaque/new.txt', 'opaque/keep/file']) {
        assert.ok(names.has(kept), `${kept} is visible`);
      }
      assert.equal(await fsp.readFile(path.join(rootfs, 'etc/hosts'), 'utf8'), 'changed\n', 'upper layer shadows lower');
      assert.deepEqual(diffTrees(want, got), [], 'images/ rootfs differs from kernel overlayfs over layers/');
      assert.equal(await xattrDump(rootfs), await xattrDump(merged), 'xattrs as overlayfs shows them (trusted.overlay.* hidden)');
    } finally {
      await run('umount', ['-l', merged]);
    }
  });

  it('image directory names are the percent-encoded image names', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root, GNU tar, attr and mknod');
    const names = await fsp.readdir(path.join(mnt.mp, 'images'));
    assert.deepEqual(names, ['test%2Foverlay%3Av1']);
  });
});

describe('namespace, errors and read-only behaviour', () => {
  it('lists layers by diff id hex, accepts the sha256: alias, ENOENT for unknown ids', async () => {
    const listed = await fsp.readdir(path.join(mnt.mp, 'layers'));
    for (const id of Object.values(ids)) assert.ok(listed.includes(hexOf(id)), `${id} listed`);
    const any = Object.values(ids)[0]!;
    const viaAlias = await fsp.stat(path.join(mnt.mp, 'layers', any));
    const viaHex = await fsp.stat(path.join(mnt.mp, 'layers', hexOf(any)));
    assert.equal(viaAlias.ino, viaHex.ino);
    await assert.rejects(fsp.stat(path.join(mnt.mp, 'layers', 'f'.repeat(64))), { code: 'ENOENT' });
    await assert.rejects(fsp.stat(path.join(mnt.mp, 'layers', 'not-a-digest')), { code: 'ENOENT' });
  });

  it('a layer published after mounting is found by lookup (no listing needed)', async () => {
    const dir = path.join(work, 'late');
    await fsp.mkdir(dir);
    await fsp.writeFile(path.join(dir, 'late.txt'), 'published after the mount\n');
    const r = await thinfsJson<IngestJson>(['ingest', await makeTreeTar(dir, path.join(work, 'late.tar')), '--store', store, '--json', '--no-progress']);
    assert.equal(await fsp.readFile(path.join(mnt.mp, 'layers', hexOf(r.diffId), 'late.txt'), 'utf8'), 'published after the mount\n');
  });

  it('every write fails with EROFS', async () => {
    const d = Object.values(ids)[0]!;
    const root = path.join(mnt.mp, 'layers', hexOf(d));
    const [first] = await fsp.readdir(root);
    await assert.rejects(fsp.writeFile(path.join(root, 'new-file'), 'x'), { code: 'EROFS' });
    await assert.rejects(fsp.mkdir(path.join(root, 'new-dir')), { code: 'EROFS' });
    await assert.rejects(fsp.rm(path.join(root, first!), { recursive: true }), { code: 'EROFS' });
    await assert.rejects(fsp.rename(path.join(root, first!), path.join(root, 'renamed')), { code: 'EROFS' });
    await assert.rejects(fsp.chmod(root, 0o700), { code: 'EROFS' });
    const setx = await run('setfattr', ['-n', 'user.x', '-v', '1', root]);
    assert.match(setx.stderr, /Read-only file system/);
  });

  it('statfs answers (read-only flag, name max) and the stats link and /metrics expose counters', async () => {
    const out = await runOk('stat', ['-f', '-c', '%l %T', mnt.mp]);
    assert.match(out, /^255 /);
    const target = await fsp.readlink(path.join(mnt.mp, '.thinfs', 'stats'));
    assert.ok(path.isAbsolute(target));
    await new Promise((r) => setTimeout(r, 600));
    const fileStats = JSON.parse(await fsp.readFile(path.join(mnt.mp, '.thinfs', 'stats'), 'utf8')) as { cache: { fetches: number } };
    assert.ok(fileStats.cache.fetches > 0);
    const metrics = await mnt.metrics();
    assert.match(metrics, /^thinfs_store_fetches_total \d+/m);
    assert.match(metrics, /^thinfs_cache_bytes \d+/m);
  });

  it('a file read twice gives the same bytes as the source (memory/disk cache path)', async (t) => {
    if (!edge) return t.skip('edge-case fixtures need root');
    const p = path.join(layerDir('edge-pax'), edge.paths.big);
    const a = await sha256File(p);
    const b = await sha256File(path.join(edge.tree, edge.paths.big));
    assert.equal(a, b);
  });
});
