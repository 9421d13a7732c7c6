// Issue 3, acceptance 2: a root filesystem made from this machine's own files (python3, the libraries ldd names,
// the standard library) runs a command from thinfs layers through overlayfs (FUSE lowerdirs, tmpfs upper) + chroot;
// writes and deletions land only in the upper dir. The flattened images/<name>/rootfs runs it read-only too.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, haveCommand, run, runOk, thinfsJson, thinfsOk, tmpDir } from './helpers/proc.js';
import { findPythonLib, makeTreeTar } from './fixtures/tars.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';
import { WritableStore } from '../src/store/store.js';
import { THIN_IMAGE_MEDIA_TYPE } from '../src/format/descriptor.js';
import { encodeImageDirName } from '../src/mount/names.js';

let work: string;
let store: string;
let mnt: Mounted | null = null;
let skipWhy: string | null = null;
const hex: Record<'base' | 'stdlib', string> = { base: '', stdlib: '' };
let pyVer = '';
const tmpfsMounts: string[] = [];

async function ingest(tar: string): Promise<string> {
  const r = await thinfsJson<{ diffId: string }>(['ingest', tar, '--store', store, '--json', '--no-progress']);
  return r.diffId.slice(7);
}

before(async () => {
  work = await tmpDir('thinfs-fuse-real-');
  const py = await findPythonLib();
  const bin = await fsp.realpath('/usr/bin/python3').catch(() => null);
  if (!py || !bin || process.getuid?.() !== 0 || !(await haveCommand('chroot'))) { skipWhy = 'needs root, chroot and python3 on this machine'; return; }
  pyVer = path.basename(py);
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);

  // Layer 1 (base): the interpreter and exactly the shared libraries ldd says it needs, at the paths ldd prints.
  const base = path.join(work, 'base');
  await fsp.mkdir(path.join(base, 'usr/bin'), { recursive: true });
  await fsp.copyFile(bin, path.join(base, 'usr/bin', path.basename(bin)));
  await fsp.chmod(path.join(base, 'usr/bin', path.basename(bin)), 0o755);
  if (path.basename(bin) !== 'python3') await fsp.symlink(path.basename(bin), path.join(base, 'usr/bin/python3'));
  const ldd = await runOk('ldd', [bin]);
  for (const m of ldd.matchAll(/(\/\S+) \(0x/g)) {
    const lib = m[1]!;
    const dest = path.join(base, lib);
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.copyFile(await fsp.realpath(lib), dest);
  }
  await fsp.mkdir(path.join(base, 'tmp'), { mode: 0o1777 });
  await fsp.chmod(path.join(base, 'tmp'), 0o1777);
  hex.base = await ingest(await makeTreeTar(base, path.join(work, 'base.tar')));

  // Layer 2 (stdlib): the standard library, as /usr/lib/python3.N (tests and GUI bits left out to keep it small).
  const libRoot = path.join(work, 'stdlib');
  await fsp.mkdir(path.join(libRoot, 'usr/lib'), { recursive: true });
  await runOk('cp', ['-a', py, path.join(libRoot, 'usr/lib/')]);
  for (const x of ['test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'site-packages', 'dist-packages']) {
    await fsp.rm(path.join(libRoot, 'usr/lib', pyVer, x), { recursive: true, force: true });
  }
  hex.stdlib = await ingest(await makeTreeTar(libRoot, path.join(work, 'stdlib.tar')));
  await fsp.rm(base, { recursive: true });
  await fsp.rm(libRoot, { recursive: true });

  const ws = await WritableStore.openDir(store);
  await ws.putImage({
    schemaVersion: 1, mediaType: THIN_IMAGE_MEDIA_TYPE, name: 'local/python:real', reference: 'local/python:real',
    manifestDigest: 'sha256:' + '0'.repeat(64), platform: { os: 'linux', architecture: 'amd64' }, store, config: {},
    configDigest: 'sha256:' + '1'.repeat(64), created: new Date(0).toISOString(),
    layers: [hex.base, hex.stdlib].map((h) => ({ digest: `sha256:${h}`, diffId: `sha256:${h}`, size: 0, mediaType: 'application/vnd.oci.image.layer.v1.tar', catalog: '', manifest: `layers/${h}.json` })),
  });
  mnt = await mountStore(store, path.join(work, 'mnt'), { cacheDir: path.join(work, 'cache') });
});

after(async () => {
  for (const t of tmpfsMounts.reverse()) await run('umount', ['-l', t]);
  if (mnt) {
    const code = await mnt.stop();
    assert.equal(code, 0, mnt.stderr().slice(-2000));
    await forceUnmount(mnt.mp);
  }
  await cleanupTmpDirs();
});

const SCRIPT = `
import json, os, sys, email.message, textwrap
m = email.message.EmailMessage(); m['Subject'] = 'thinfs'
open('/tmp/written.json', 'w').write(json.dumps({'subject': m['Subject'], 'pid': os.getpid() > 0}))
os.remove('/usr/lib/${'PYVER'}/this.py')
print('ran', sys.version_info[0], textwrap.dedent('  ok'))
`;

describe('real use: run python3 from thinfs layers', () => {
  it('overlayfs (FUSE lowerdirs + tmpfs upper) + chroot runs it; writes and deletions land only in the upper dir', async (t) => {
    if (skipWhy) return t.skip(skipWhy);
    const tmpfs = path.join(work, 'tmpfs');
    await fsp.mkdir(tmpfs);
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', tmpfs]);
    tmpfsMounts.push(tmpfs);
    const upper = path.join(tmpfs, 'upper'), wd = path.join(tmpfs, 'work'), merged = path.join(work, 'merged');
    await Promise.all([upper, wd, merged].map((d) => fsp.mkdir(d)));
    const lower = [hex.stdlib, hex.base].map((h) => path.join(mnt!.mp, 'layers', h)).join(':');
    await runOk('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${wd}`, merged]);
    tmpfsMounts.push(merged);

    const r = await run('chroot', [merged, '/usr/bin/python3', '-c', SCRIPT.replace('PYVER', pyVer)], { env: { PYTHONDONTWRITEBYTECODE: '1' } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ran 3 ok$/m);

    // The write is in the tmpfs upper dir, visible in the merged view, absent from every thinfs layer.
    assert.deepEqual(JSON.parse(await fsp.readFile(path.join(upper, 'tmp/written.json'), 'utf8')), { subject: 'thinfs', pid: true });
    for (const h of [hex.base, hex.stdlib]) {
      await assert.rejects(fsp.stat(path.join(mnt!.mp, 'layers', h, 'tmp/written.json')), { code: 'ENOENT' });
    }
    // The deletion is an overlayfs whiteout in the upper dir; the FUSE layer still has the file.
    const wh = await fsp.lstat(path.join(upper, 'usr/lib', pyVer, 'this.py'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'whiteout in upper');
    await fsp.stat(path.join(mnt!.mp, 'layers', hex.stdlib, 'usr/lib', pyVer, 'this.py'));
    await assert.rejects(fsp.stat(path.join(merged, 'usr/lib', pyVer, 'this.py')), { code: 'ENOENT' });
    const s = await mnt!.stats();
    assert.ok(s.cache.fetchedDecodedBytes < 30e6, `python start fetched ${s.cache.fetchedDecodedBytes} decoded bytes, a fraction of the stdlib`);
    t.diagnostic(`python run fetched ${s.cache.fetches} objects, ${s.cache.fetchedBytes} bytes from the store`);
  });

  it('images/<name>/rootfs (flattened, read-only) runs it with chroot; writes there fail with EROFS', async (t) => {
    if (skipWhy) return t.skip(skipWhy);
    const rootfs = path.join(mnt!.mp, 'images', encodeImageDirName('local/python:real'), 'rootfs');
    const r = await run('chroot', [rootfs, '/usr/bin/python3', '-c', 'import json, email.message; print(json.dumps(sorted(["b", "a"])))'], { env: { PYTHONDONTWRITEBYTECODE: '1' } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), '["a", "b"]');
    const w = await run('chroot', [rootfs, '/usr/bin/python3', '-c', 'open("/tmp/x", "w")']);
    assert.notEqual(w.code, 0);
    assert.match(w.stderr, /Read-only file system/);
  });
});
