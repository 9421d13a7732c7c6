// Packaging (issue 13): the repository's Dockerfile built by `podman build` from an offline base
// (debootstrap bookworm + this machine's node, cached in /var/tmp/thinfs-cache with its own podman
// storage so rebuilds reuse layers); the publisher image answering /healthz; the mount daemon image
// serving a store with /dev/fuse and SYS_ADMIN; the systemd unit passing `systemd-analyze verify`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { REPO_ROOT, THINFS_MAIN, run, runOk, thinfsOk, tmpDir, cleanupTmpDirs, haveCommand, waitFor } from './helpers/proc.js';
import { testPodman, type TestPodman } from './helpers/podman.js';
import { CACHE_DIR, nodeBase } from './helpers/offline-base.js';
import { freePort } from './fixtures/images.js';

const IMAGE = 'localhost/thinfs:suite';
let work = '';
let skip: string | false = false;
let buildError: string | null = null;
let p: TestPodman | null = null;
const started: string[] = [];

before(async () => {
  work = await tmpDir('thinfs-packaging-');
  if (!(await haveCommand('podman'))) { skip = 'podman not installed (scripts/setup.sh)'; return; }
  p = await testPodman(path.join(CACHE_DIR, 'podman-build'));
  // Skip only when podman build itself cannot run on this machine.
  const probe = path.join(work, 'probe');
  await fsp.mkdir(probe);
  await fsp.writeFile(path.join(probe, 'Containerfile'), 'FROM scratch\nCOPY Containerfile /x\n');
  const pb = await p.podman(['build', '--quiet', '-t', 'localhost/thinfs-probe:latest', probe]);
  if (pb.code !== 0) { skip = `podman build cannot run here: ${pb.stderr.trim().split('\n').pop()}`; return; }
  const base = await nodeBase(p, work);
  if (typeof base !== 'string') { skip = `no offline base image: missing ${base.missing}`; return; }
  const b = await p.podman(['build', '--network', 'host', '--build-arg', `BUILD_BASE=${base}`, '--build-arg', `RUN_BASE=${base}`, '-t', IMAGE, '-f', path.join(REPO_ROOT, 'Dockerfile'), REPO_ROOT], 1_800_000);
  if (b.code !== 0) buildError = `podman build failed:\n${b.stderr.slice(-4000)}`;
});

/** The image tests need the build; the unit test does not. */
function needImage(t: { skip(m: string): void }): boolean {
  if (skip) { t.skip(skip); return false; }
  assert.equal(buildError, null, buildError ?? '');
  return true;
}

after(async () => {
  for (const c of started) await p?.podman(['rm', '-f', '-t', '2', c]);
  await cleanupTmpDirs();
});

test('the Dockerfile builds with podman build; the image runs the CLI', async (t) => {
  if (!needImage(t)) return;
  const v = await p!.podmanOk(['run', '--rm', '--network=none', IMAGE, '--version']);
  assert.equal(v.trim(), '0.1.0');
  const help = await p!.podmanOk(['run', '--rm', '--network=none', '--entrypoint', 'docker2thin', IMAGE, '--help']);
  assert.match(help, /docker2thin/);
});

test('the publisher image answers /healthz', async (t) => {
  if (!needImage(t)) return;
  const store = path.join(work, 'pub-store');
  await fsp.mkdir(store);
  const port = await freePort();
  const id = (await p!.podmanOk(['run', '-d', '--network', 'host', '-e', 'AWS_ACCESS_KEY_ID=suite', '-e', 'AWS_SECRET_ACCESS_KEY=suite', '-v', `${store}:/store`, IMAGE, 'publisher', '--store', '/store', '--init',
    '--s3-endpoint', 'http://127.0.0.1:9', '--bucket', 'layers', '--token', 'secret', '--reconcile-interval', '0', '--port', String(port)])).trim();
  started.push(id);
  const res = await waitFor(async () => {
    const state = (await p!.podmanOk(['inspect', '--format', '{{.State.Status}}', id])).trim();
    if (state === 'exited') throw new Error(`publisher exited:\n${(await p!.podman(['logs', id])).stderr}`);
    try { const r = await fetch(`http://127.0.0.1:${port}/healthz`); await r.arrayBuffer(); return r.status; } catch { return null; }
  }, 60_000, 200, 'publisher /healthz');
  assert.equal(res, 200);
});

test('the mount daemon image serves the store with /dev/fuse and SYS_ADMIN', async (t) => {
  if (!needImage(t)) return;
  const store = path.join(work, 'mnt-store');
  await thinfsOk(['init', store]);
  const src = path.join(work, 'layer');
  await fsp.mkdir(path.join(src, 'etc'), { recursive: true });
  await fsp.writeFile(path.join(src, 'etc/greeting'), 'served from the container\n');
  await runOk('tar', ['-C', src, '-cf', path.join(work, 'layer.tar'), 'etc']);
  const ing = JSON.parse(await thinfsOk(['ingest', path.join(work, 'layer.tar'), '--store', store, '--json'])) as { diffId: string };
  const id = (await p!.podmanOk(['run', '-d', '--network=none', '--device', '/dev/fuse', '--cap-add', 'SYS_ADMIN', '-v', `${store}:/store:ro`,
    IMAGE, 'mount', '/store', '/mnt/thinfs', '--cache-dir', '/var/cache/thinfs', '--ready-file', '/run/thinfs.ready'])).trim();
  started.push(id);
  await waitFor(async () => (await p!.podman(['exec', id, 'cat', '/run/thinfs.ready'])).code === 0, 60_000, 200, 'mount in the container');
  const got = await p!.podmanOk(['exec', id, 'cat', `/mnt/thinfs/layers/${ing.diffId.replace(/^sha256:/, '')}/etc/greeting`]);
  assert.equal(got, 'served from the container\n');
  // SIGTERM (podman stop) unmounts cleanly: exit 0
  await p!.podmanOk(['stop', '-t', '20', id]);
  assert.equal((await p!.podmanOk(['inspect', '--format', '{{.State.ExitCode}}', id])).trim(), '0');
});

test('the systemd unit passes systemd-analyze verify and has the ready file, restart policy and cache dir', async (t) => {
  if (!(await haveCommand('systemd-analyze'))) { t.skip('systemd-analyze not installed'); return; }
  const unit = await fsp.readFile(path.join(REPO_ROOT, 'deploy/thinfs-mount.service'), 'utf8');
  assert.match(unit, /^Restart=on-failure$/m);
  assert.match(unit, /^CacheDirectory=thinfs$/m);
  assert.match(unit, /--cache-dir \/var\/cache\/thinfs/);
  assert.match(unit, /--ready-file \/run\/thinfs\/mount\.ready/);
  assert.match(unit, /^ExecStartPost=.*\/run\/thinfs\/mount\.ready/m);
  // verify checks that ExecStart's program exists: point it at this checkout's CLI (executable).
  await fsp.chmod(THINFS_MAIN, 0o755);
  const dir = path.join(work, 'unit');
  await fsp.mkdir(dir);
  const f = path.join(dir, 'thinfs-mount.service');
  await fsp.writeFile(f, unit.replaceAll('/usr/local/bin/thinfs', THINFS_MAIN));
  const r = await run('systemd-analyze', ['verify', f]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr.trim(), '', 'no warnings');
  // the options the unit passes are ones `thinfs mount` accepts
  const help = await thinfsOk(['mount', '--help']);
  const exec = /^ExecStart=(.*)$/m.exec(unit)![1]!;
  for (const opt of exec.match(/--[a-z-]+/g)!) assert.ok(help.includes(opt), `thinfs mount has ${opt}`);
});

test('the unit\'s ExecStartPost waits for the ready file, and gives up at once when the daemon has exited', async () => {
  // systemd waits for a start-post command even after the main process died: a daemon refusing a bad setting
  // (THINFS_STORE wrong) left the unit "activating" until TimeoutStartSec (120 s) before it failed and restarted.
  // Checked under a real systemd 252 (a container booting systemd): the unit fails and restarts within ~2 s now.
  const unit = await fsp.readFile(path.join(REPO_ROOT, 'deploy/thinfs-mount.service'), 'utf8');
  const m = /^ExecStartPost=\/bin\/sh -c '([^']*)'$/m.exec(unit);
  assert.ok(m, 'ExecStartPost=/bin/sh -c \'...\'');
  const dir = path.join(work, 'startpost');
  await fsp.mkdir(dir);
  const ready = path.join(dir, 'mount.ready');
  // systemd turns $$ into $ and sets MAINPID for the command.
  const script = m[1]!.replaceAll('$$', '$').replaceAll('/run/thinfs/mount.ready', ready);
  const dead = await new Promise<number>((r) => { const c = spawn('true'); c.on('exit', () => r(c.pid!)); });
  const t0 = Date.now();
  const gaveUp = await run('/bin/sh', ['-c', script], { env: { MAINPID: String(dead) }, timeoutMs: 20_000 });
  assert.equal(gaveUp.timedOut, false, 'does not wait for a ready file a dead daemon will never write');
  assert.notEqual(gaveUp.code, 0);
  assert.ok(Date.now() - t0 < 5000);
  const live = spawn('sleep', ['30']);
  try {
    setTimeout(() => { void fsp.writeFile(ready, '{}'); }, 1000);
    const ok = await run('/bin/sh', ['-c', script], { env: { MAINPID: String(live.pid) }, timeoutMs: 20_000 });
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(Date.now() - t0 >= 1000, 'waited for the ready file');
  } finally { live.kill(); }
});

test('setup puts thinfs and docker2thin on PATH where the unit runs them, working after a rebuild', async () => {
  // The README's commands say `thinfs ...` and the unit runs /usr/local/bin/thinfs: scripts/setup.sh installs both.
  const unit = await fsp.readFile(path.join(REPO_ROOT, 'deploy/thinfs-mount.service'), 'utf8');
  const program = /^ExecStart=(\S+)/m.exec(unit)![1]!;
  assert.equal(program, '/usr/local/bin/thinfs');
  assert.match(await fsp.readFile(path.join(REPO_ROOT, 'scripts/setup.sh'), 'utf8'), /^bash scripts\/install-bin\.sh$/m);
  const bin = path.join(work, 'bin');
  await runOk('bash', [path.join(REPO_ROOT, 'scripts/install-bin.sh'), bin]);
  // tsc writes dist/ without execute bits (the build recreates it): the wrappers must not depend on them.
  const mode = (await fsp.stat(THINFS_MAIN)).mode & 0o777;
  await fsp.chmod(THINFS_MAIN, 0o644);
  try {
    assert.equal((await runOk(path.join(bin, 'thinfs'), ['--version'])).trim(), '0.1.0');
    assert.match(await runOk(path.join(bin, 'docker2thin'), ['--help']), /^Usage: docker2thin/);
    const r = await run(path.join(bin, 'thinfs'), ['gc']);
    assert.equal(r.code, 2, 'exit codes pass through the wrapper');
  } finally { await fsp.chmod(THINFS_MAIN, mode); }
});
