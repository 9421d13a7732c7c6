// Rootless (issue 13): a user created for the test mounts the store through the setuid fusermount3 and
// points their own podman at an image store generated over that mount. Documented outcome (see
// native-notes/podman.md): the non-root mount works; podman lists the thin image; running it stops at
// the kernel's user-namespace rule: the layers' files belong to host uid 0, which the user's namespace
// cannot map, so overlayfs copy-up fails (EOVERFLOW) and podman 4.3.1 cannot write /etc/passwd|group
// into the container (EACCES). If a later podman/kernel runs it, the test checks the output instead.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { REPO_ROOT, THINFS_MAIN, run, runOk, thinfsOk, tmpDir, cleanupTmpDirs, haveCommand, waitFor } from './helpers/proc.js';
import { copyHostTools } from './helpers/host-tools.js';
import { OciLayout, populateBase, populateReplace } from './fixtures/images.js';
import { makeLayer } from './helpers/layers.js';
import { isMounted, forceUnmount } from './fuse-mount-helper.js';

const USER = `thinfs-rl${process.pid % 10000}`;
let work = '';
let skip: string | false = false;
let fuseMode: number | null = null;
let fuseConf: string | null = null;
let userMade = false;
let mp = '';

/** Run a shell command as the test user, with that user's podman state under the test dir. */
function asUser(cmd: string, timeoutMs = 120_000) {
  const env = `export HOME=${work}/home XDG_RUNTIME_DIR=${work}/home/xdg CONTAINERS_STORAGE_CONF=${work}/home/storage.conf CONTAINERS_CONF=${work}/home/containers.conf;`;
  return run('su', [USER, '-s', '/bin/sh', '-c', `${env} cd ${work}/home && ${cmd}`], { timeoutMs });
}

before(async () => {
  for (const c of ['podman', 'runc', 'fusermount3', 'useradd', 'newuidmap', 'su']) if (!(await haveCommand(c))) { skip = `${c} not installed`; return; }
  work = await tmpDir('thinfs-rootless-');
  await fsp.chmod(work, 0o755);
  // A normal node: /dev/fuse open to users, user_allow_other for the containers' users (see machine notes).
  fuseMode = (await fsp.stat('/dev/fuse')).mode & 0o777;
  await fsp.chmod('/dev/fuse', 0o666);
  fuseConf = await fsp.readFile('/etc/fuse.conf', 'utf8').catch(() => '');
  if (!/^\s*user_allow_other/m.test(fuseConf)) await fsp.writeFile('/etc/fuse.conf', `${fuseConf}\nuser_allow_other\n`);
  await runOk('useradd', ['-M', '-d', path.join(work, 'home'), '-s', '/bin/sh', USER]);
  userMade = true;
  const home = path.join(work, 'home');
  await fsp.mkdir(path.join(home, 'xdg'), { recursive: true, mode: 0o700 });

  const base = await makeLayer(work, 'base', async (d) => {
    await populateBase(d);
    await copyHostTools(d, ['sh', 'cat', 'ls', 'id']);
    for (const x of ['tmp', 'proc', 'sys', 'dev']) await fsp.mkdir(path.join(d, x), { recursive: true });
    await fsp.chmod(path.join(d, 'tmp'), 0o1777);
    await fsp.symlink('../proc/self/mounts', path.join(d, 'etc/mtab'));
    await fsp.writeFile(path.join(d, 'etc/group'), 'root:x:0:\nuser:x:1000:\n');
  }, { compression: 'gzip' });
  const top = await makeLayer(work, 'replace', populateReplace, { compression: 'gzip' });
  const lay = await new OciLayout(path.join(work, 'layout')).init();
  await lay.tag(await lay.image([base, top], { os: 'linux', architecture: 'amd64' }, { configExtra: { Entrypoint: ['/usr/bin/sh', '-c'], Cmd: ['id -u; cat /usr/lib/pyjson/__init__.py; ls /var/lib/data'], User: '0:0' } }), 'v1');
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const conv = await run(process.execPath, [path.join(REPO_ROOT, 'dist/tools/docker2thin.js'), '--store', store, '--name', 'rootless:v1', `oci:${path.join(work, 'layout')}:v1`], { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 120_000 });
  assert.equal(conv.code, 0, conv.stderr);
  await runOk('chmod', ['-R', 'a+rX', store]);
  await runOk('chown', ['-R', USER, home]);
  await fsp.writeFile(path.join(home, 'containers.conf'), '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\nevents_logger = "file"\n');
  mp = path.join(home, 'mnt');
});

after(async () => {
  if (userMade) {
    await asUser('podman rm -af -t 0; podman system migrate', 60_000).catch(() => undefined);
    await asUser(`fusermount3 -u ${mp}`).catch(() => undefined);
    if (mp) await forceUnmount(mp);
    await run('pkill', ['-KILL', '-u', USER]);
    await run('userdel', [USER]);
  }
  if (fuseMode !== null) await fsp.chmod('/dev/fuse', fuseMode);
  if (fuseConf !== null) await fsp.writeFile('/etc/fuse.conf', fuseConf);
  await cleanupTmpDirs();
});

test('a non-root user mounts the store through fusermount3 and their podman lists the thin image', async (t) => {
  if (skip) { t.skip(skip); return; }
  const node = process.execPath;
  const started = await asUser(`mkdir -p mnt && (${node} ${THINFS_MAIN} mount ${work}/store mnt --cache-dir cache --ready-file ready >mount.log 2>&1 &)`);
  assert.equal(started.code, 0, started.stderr);
  await waitFor(() => fsp.access(path.join(work, 'home/ready')).then(() => true, () => false), 20_000, 100, 'user mount ready');
  assert.ok(await isMounted(mp));
  const mi = (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mp)!;
  const uid = (await runOk('id', ['-u', USER])).trim();
  assert.match(mi, new RegExp(`user_id=${uid}\\b`), 'mounted by the user (through fusermount3)');
  const listed = await asUser('ls mnt/layers | wc -l');
  assert.equal(listed.stdout.trim(), '2');
  // allow_other: root (and the users of containers) read it too
  assert.equal((await fsp.readdir(path.join(mp, 'layers'))).length, 2);

  const gen = await asUser(`${node} ${THINFS_MAIN} podman-store ${work}/store ${mp} ps && ${node} ${THINFS_MAIN} podman-conf --rootless ${work}/home/ps -o storage.conf`);
  assert.equal(gen.code, 0, gen.stderr);
  const images = await asUser("podman images --format '{{.Repository}}:{{.Tag}} {{.ReadOnly}}'");
  assert.equal(images.code, 0, images.stderr);
  assert.match(images.stdout, /rootless:v1 true/);
});

test('rootless podman run: works, or stops at the documented user-namespace limit', async (t) => {
  if (skip) { t.skip(skip); return; }
  // What the user's namespace sees of the layers: host uid 0 is not mapped there (overflow uid).
  const owner = await asUser(`podman unshare stat -c %u $(ls -d ${mp}/layers/*/etc/passwd)`);
  assert.equal(owner.code, 0, owner.stderr);
  const r = await asUser('podman run --rm --network=none localhost/rootless:v1 2>&1', 120_000);
  if (r.code === 0) {
    assert.match(r.stdout, /^0\n# replaced by layer 3\n/);
    assert.doesNotMatch(r.stdout, /a\.txt/, 'the opaque directory hides the lower entries');
    return;
  }
  assert.equal(owner.stdout.trim(), '65534', 'image files are unmapped (overflow uid) in the rootless user namespace');
  // which file podman/runc writes first varies (mtab, passwd, group, hosts, hostname, resolv.conf)
  assert.match(r.stdout, /merged\/etc\/[\w.-]+: (permission denied|value too large)/i, `unexpected failure:\n${r.stdout}`);
  t.diagnostic(`rootless run stops at the documented limit: ${r.stdout.trim().split('\n').pop()}`);
});
