// End to end with a real runtime: an image built from this machine's files, pushed to a real registry,
// converted by docker2thin, mounted by thinfs, run by podman + runc from images/<name>/rootfs with an
// overlay (":O"): the process sees the image, its writes land in a node-local upper layer, never the mount.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { REPO_ROOT, run, runOk, thinfsOk, tmpDir, cleanupTmpDirs, haveCommand } from './helpers/proc.js';
import { findPythonLib } from './fixtures/tars.js';
import { OciLayout, startRegistry, pushLayout, type RegistryServer } from './fixtures/images.js';
import { makeLayer } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { encodeImageDirName } from '../src/mount/names.js';

let work = '';
let reg: RegistryServer | null = null;
let mnt: Mounted | null = null;
let skip: string | false = false;
let rootfs = '';
let desc: { config: { config: { Env: string[]; Entrypoint: string[]; Cmd: string[]; WorkingDir: string; User: string } } };

before(async () => {
  for (const c of ['podman', 'runc', 'docker-registry', 'skopeo']) if (!(await haveCommand(c))) { skip = `${c} not installed (scripts/setup.sh)`; return; }
  const py = await findPythonLib();
  const bin = await fsp.realpath('/usr/bin/python3').catch(() => null);
  if (!py || !bin) { skip = 'no python3 on this machine'; return; }
  work = await tmpDir('thinfs-podman-');
  // Layer 1: the interpreter and the shared libraries ldd names. Layer 2: the standard library.
  const base = await makeLayer(work, 'base', async (d) => {
    await fsp.mkdir(path.join(d, 'usr/bin'), { recursive: true });
    await fsp.copyFile(bin, path.join(d, 'usr/bin/python3'));
    await fsp.chmod(path.join(d, 'usr/bin/python3'), 0o755);
    for (const m of (await runOk('ldd', [bin])).matchAll(/(\/\S+) \(0x/g)) {
      const dest = path.join(d, m[1]!);
      await fsp.mkdir(path.dirname(dest), { recursive: true });
      await fsp.copyFile(await fsp.realpath(m[1]!), dest);
    }
    for (const x of ['tmp', 'proc', 'sys', 'dev', 'etc', 'data']) await fsp.mkdir(path.join(d, x), { recursive: true });
    await fsp.chmod(path.join(d, 'tmp'), 0o1777);
    await fsp.writeFile(path.join(d, 'data/greeting.txt'), 'hello from a thin image\n');
  }, { compression: 'gzip' });
  const stdlib = await makeLayer(work, 'stdlib', async (d) => {
    await fsp.mkdir(path.join(d, 'usr/lib'), { recursive: true });
    await runOk('cp', ['-a', py, path.join(d, 'usr/lib/')]);
    for (const x of ['test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'site-packages', 'dist-packages']) {
      await fsp.rm(path.join(d, 'usr/lib', path.basename(py), x), { recursive: true, force: true });
    }
  }, { compression: 'zstd' });
  const layout = path.join(work, 'layout');
  const lay = await new OciLayout(layout).init();
  const script = "import json,os; print(json.dumps({'greeting': open('/data/greeting.txt').read().strip(), 'env': os.environ.get('THINFS_TEST'), 'cwd': os.getcwd()})); open('/data/written.txt','w').write('w'); os.remove('/data/greeting.txt')";
  await lay.tag(await lay.image([base, stdlib], { os: 'linux', architecture: 'amd64' }, {
    configExtra: { Entrypoint: ['/usr/bin/python3', '-c'], Cmd: [script], WorkingDir: '/data', User: '0:0' },
  }), 'v1');
  reg = await startRegistry(path.join(work, 'registry'));
  await pushLayout(layout, 'v1', reg, 'e2e/python');

  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const conv = await run(process.execPath, [path.join(REPO_ROOT, 'dist/tools/docker2thin.js'), '--insecure', '--store', store, '--json', `${reg.host}/e2e/python:v1`],
    { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 180_000 });
  assert.equal(conv.code, 0, conv.stderr);
  desc = JSON.parse(conv.stdout).descriptor ?? JSON.parse(conv.stdout);
  mnt = await mountStore(store, path.join(work, 'mnt'), { cacheDir: path.join(work, 'cache') });
  rootfs = path.join(mnt.mp, 'images', encodeImageDirName('python:v1'), 'rootfs');
});

after(async () => {
  if (mnt) { await mnt.stop(); await forceUnmount(mnt.mp); }
  await reg?.stop();
  await cleanupTmpDirs();
});

test('podman + runc run the converted image from the mount; writes stay in the overlay', async (t) => {
  if (skip) { t.skip(skip); return; }
  const cfg = desc.config.config;
  assert.deepEqual(cfg.Entrypoint, ['/usr/bin/python3', '-c'], 'the descriptor carries the image config');
  // podman --rootfs takes no image config: pass what the thin descriptor recorded.
  const args = ['run', '--rm', '--network=none', '--runtime', 'runc', '--workdir', cfg.WorkingDir, '--user', cfg.User,
    ...cfg.Env.flatMap((e) => ['--env', e]), '--entrypoint', JSON.stringify(cfg.Entrypoint), '--rootfs', `${rootfs}:O`, ...cfg.Cmd];
  const r = await run('podman', args, { timeoutMs: 180_000 });
  assert.equal(r.code, 0, `podman failed:\n${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.deepEqual(out, { greeting: 'hello from a thin image', env: '1', cwd: '/data' });
  // The container removed one file and wrote another: the read-only mount shows neither change.
  assert.equal(await fsp.readFile(path.join(rootfs, 'data/greeting.txt'), 'utf8'), 'hello from a thin image\n');
  await assert.rejects(fsp.access(path.join(rootfs, 'data/written.txt')));
  const stats = await mnt!.stats();
  assert.equal((stats as unknown as { errors?: number }).errors ?? 0, 0);
});
