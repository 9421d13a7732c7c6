// CLI contract: --help everywhere, octal escapes reach non-UTF-8 names, a closed pipe is not an error.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile, stat as fsStat } from 'node:fs/promises';
import { REPO_ROOT, THINFS_MAIN as THINFS, run, runOk, thinfs, thinfsOk, thinfsJson, tmpDir, cleanupTmpDirs } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';

const D2T = join(REPO_ROOT, 'dist/tools/docker2thin.js');

after(cleanupTmpDirs);

test('every command answers --help with its usage and exit 0', async () => {
  const top = await thinfsOk(['--help']);
  const cmds = [...top.matchAll(/^ {2}([a-z][a-z-]+)(?:\|[a-z-]+)?(?: |$)/gm)].map((m) => m[1]!).filter((c) => c !== 'help');
  for (const want of ['init', 'ingest', 'layers', 'ls', 'stat', 'cat', 'export', 'gc', 'mount', 'unmount', 'convert', 'pull-thin', 'publisher']) {
    assert.ok(cmds.includes(want), `thinfs --help lists ${want}`);
  }
  for (const c of cmds) {
    const r = await thinfs([c, '--help']);
    assert.equal(r.code, 0, `thinfs ${c} --help`);
    assert.match(r.stdout, new RegExp(`^Usage: thinfs ${c}[| ]`), `usage of ${c}`);
  }
  const d = await run(process.execPath, [join(REPO_ROOT, 'dist/tools/docker2thin.js'), '--help']);
  assert.equal(d.code, 0);
  assert.match(d.stdout, /^Usage: docker2thin /);
  const bad = await thinfs(['no-such-command']);
  assert.equal(bad.code, 2, 'unknown command is a usage error');
  // No command at all is one too (the help goes to stderr); asking for help is not.
  for (const args of [[], ['trace']]) {
    const r = await thinfs(args);
    assert.equal(r.code, 2, `thinfs ${args.join(' ')}: exit 2`);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^Usage: thinfs /);
  }
  for (const args of [['help'], ['help', 'mount'], ['trace', 'help'], ['trace', 'attach', '--help']]) {
    const r = await thinfs(args);
    assert.equal(r.code, 0, `thinfs ${args.join(' ')}: exit 0`);
    assert.match(r.stdout, /^Usage: thinfs /);
  }
});

test('non-UTF-8 names are reachable with the octal escapes tar prints', async () => {
  const dir = await tmpDir();
  const src = join(dir, 'src');
  await mkdir(src);
  const name = Buffer.concat([Buffer.from('caf'), Buffer.from([0xe9]), Buffer.from('.txt')]);
  await writeFile(Buffer.concat([Buffer.from(src + '/'), name]), 'latin-1 name\n');
  await runOk('tar', ['-C', src, '-cf', join(dir, 'l.tar'), '.']);
  const listed = await runOk('tar', ['-tf', join(dir, 'l.tar')]);
  assert.match(listed, /caf\\351\.txt/, 'GNU tar prints the byte as \\351');
  const { diffId } = await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'l.tar'), '--store', join(dir, 's'), '--init', '--json']);
  const cat = await thinfsOk(['cat', '--store', join(dir, 's'), diffId, 'caf\\351.txt']);
  assert.equal(cat, 'latin-1 name\n');
  const st = JSON.parse(await thinfsOk(['stat', '--store', join(dir, 's'), diffId, './caf\\351.txt']));
  assert.equal(st.size, 13);
});

test('a reader closing the pipe early ends the command quietly', async () => {
  // 4 MiB through a 64 KiB pipe to a reader that stops after 100 bytes: the writes after it went fail with EPIPE for
  // certain (a short output such as --help fits in the pipe and never sees one).
  const dir = await tmpDir();
  const l = await makeLayer(dir, 'big', async (d) => { await writeFile(join(d, 'big.bin'), pseudoRandom(4 << 20, 'epipe')); });
  const store = join(dir, 's');
  await thinfsOk(['ingest', l.file, '--store', store, '--init', '--no-progress']);
  const r = await run('bash', ['-c', `node ${join(REPO_ROOT, 'dist/src/cli/main.js')} cat --store ${store} ${l.diffId} big.bin | head -c 100 | wc -c; echo "rc=\${PIPESTATUS[0]}"`]);
  assert.match(r.stdout, /^100\n/, 'the reader got its 100 bytes');
  assert.doesNotMatch(r.stderr, /EPIPE|at /, 'no error, no stack trace');
  assert.match(r.stdout, /rc=0/);
});

test('podman-conf refuses a path a TOML string cannot hold raw (quote, backslash, control characters), printing nothing', async () => {
  for (const p of ['/srv/a"b', '/srv/a\\b', '/srv/a\nb', '/srv/\x1b[31mred', '/srv/a\x7fb']) {
    const r = await thinfs(['podman-conf', p]);
    assert.equal(r.code, 3, `${JSON.stringify(p)}: ${r.stderr}`);
    assert.equal(r.stdout, '', 'no storage.conf printed');
    assert.match(r.stderr, /path not usable in storage\.conf/);
    assert.doesNotMatch(r.stderr, /[\x00-\x08\x0b-\x1f\x7f]/, 'the error shows no raw control character');
  }
  assert.match(await thinfsOk(['podman-conf', '/srv/with space\tand tab']), /additionalimagestores = \["\/srv\/with space\tand tab"\]/);
});

test('mount --podman-store: a bad flag value or a mount that cannot start exits (2) at once, nothing written', async () => {
  // The systemd unit passes --podman-store: a typo in /etc/default/thinfs-mount (THINFS_CACHE_QUOTA=20X) hung the
  // daemon after its error (the podman store's watch loop kept it alive), so the unit never failed.
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  await writeFile(join(dir, 'afile'), '');
  const cases: Array<[string[], RegExp]> = [
    [[join(dir, 'mnt'), '--cache-quota', '20X'], /--cache-quota/],
    [[join(dir, 'mnt'), '--listing-cache', '5G'], /--listing-cache/],
    [[join(dir, 'mnt'), '--refresh', '0'], /--refresh/],
    [[join(dir, 'afile')], /not a directory/],
  ];
  for (const [[mnt, ...flags], msg] of cases) {
    const ps = join(dir, `podman-store-${flags.join('')}`);
    const r = await thinfs(['mount', store, mnt!, '--cache-dir', join(dir, 'cache'), '--podman-store', ps, ...flags], { timeoutMs: 30_000 });
    assert.equal(r.timedOut, false, `thinfs mount ${flags.join(' ')} exits (did not: ${r.stderr})`);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, msg);
    if (flags.length) await assert.rejects(fsStat(ps), `a bad flag writes no podman store (${flags.join(' ')})`);
  }
});

test('log level: --log-level (before or after the subcommand) and THINFS_LOG_LEVEL, checked up front (exit 2)', async () => {
  const dir = await tmpDir();
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'f'), pseudoRandom(200_000, 'loglevel'));
  await runOk('tar', ['-C', src, '-cf', join(dir, 'l.tar'), '.']);
  const store = join(dir, 's');
  // A level pino does not know was a pino stack (docker2thin) or exit 1 for every command, --help included.
  for (const [cmd, args] of [[THINFS, ['--help']], [THINFS, ['ingest', join(dir, 'l.tar'), '--store', store, '--init']], [D2T, ['--help']]] as const) {
    const r = await run(process.execPath, [cmd, ...args], { env: { THINFS_LOG_LEVEL: 'verbose' } });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^(thinfs|docker2thin): error: THINFS_LOG_LEVEL "verbose" is not a log level \(one of fatal, error, warn, info, debug, trace, silent\)\n$/);
  }
  const bad = await thinfs(['ingest', join(dir, 'l.tar'), '--store', store, '--init', '--log-level', 'loud']);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--log-level "loud" is not a log level/);
  await assert.rejects(fsStat(store), 'refused before anything is done');
  const d2t = await run(process.execPath, [D2T, '--log-level', 'loud', 'oci:/nonexistent']);
  assert.equal(d2t.code, 2, d2t.stderr);
  // One-shot commands log warnings only by default; the flag, after the subcommand or before it, lowers the level.
  const quiet = await thinfs(['ingest', join(dir, 'l.tar'), '--store', store, '--init', '--json']);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.equal(quiet.stderr, '');
  for (const args of [['ingest', join(dir, 'l.tar'), '--store', store, '--log-level', 'debug'], ['--log-level', 'DEBUG', 'ingest', join(dir, 'l.tar'), '--store', store]]) {
    const r = await thinfs(args);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; name: string; pid: number });
    assert.ok(lines.some((l) => l.level === 20 && l.msg === 'tar read'), `a debug line (${r.stderr})`);
    assert.ok(lines.every((l) => l.name === 'ingest' && typeof l.pid === 'number'));
  }
  assert.match((await thinfsOk(['mount', '--help'])).replace(/\s+/g, ' '), /--log-level <level> level of the JSON log lines on stderr/);
});

test('mount --ready-file: a ready file left by a killed daemon is removed at start, before the store answers', async () => {
  // A store server that accepts connections and never answers: the mount stays starting.
  const { createServer } = await import('node:net');
  const sockets: import('node:net').Socket[] = [];
  const srv = createServer((s) => { sockets.push(s); });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as import('node:net').AddressInfo).port;
  const dir = await tmpDir();
  const ready = join(dir, 'mount.ready');
  await writeFile(ready, JSON.stringify({ pid: 1, mountpoint: join(dir, 'mnt') }) + '\n');
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, [THINFS, 'mount', `http://127.0.0.1:${port}`, join(dir, 'mnt'), '--cache-dir', join(dir, 'cache'), '--ready-file', ready], { stdio: 'ignore' });
  try {
    let gone = false;
    for (let i = 0; i < 100 && !gone; i++) {
      await new Promise((r) => setTimeout(r, 100));
      gone = await fsStat(ready).then(() => false, () => true);
    }
    assert.ok(gone, 'the stale ready file is removed while the mount is still starting');
    assert.equal(child.exitCode, null, 'still starting (the store has not answered)');
  } finally {
    child.kill('SIGKILL');
    for (const s of sockets) s.destroy();
    srv.close();
  }
});

test('ingest progress bar: drawn on a terminal only, whole numbers on an unsized terminal, a long path giving way', async () => {
  const dir = await tmpDir();
  const deep = join(dir, 'uploads-with-a-rather-long-directory-name', 'and-one-more-level-below-it');
  await mkdir(deep, { recursive: true });
  await writeFile(join(dir, 'f'), pseudoRandom(3_000_000, 'progress'));
  const tar = join(deep, 'a-layer-tarball-with-a-long-name.tar');
  await runOk('tar', ['-C', dir, '-cf', tar, 'f']);
  // Not a terminal: no bar, nothing on stderr.
  const plain = await thinfs(['ingest', tar, '--store', join(dir, 's0'), '--init']);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(plain.stderr, '');
  // script(1) gives the command a terminal; an unsized one reports 0 columns (the bar lost its last character), then
  // one 60 columns wide (the path pushed the numbers off the line).
  const q = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
  for (const [i, stty] of [['1', ''], ['2', 'stty cols 60; ']] as const) {
    const cmd = `${stty}${q(process.execPath)} ${q(THINFS)} ingest ${q(tar)} --store ${q(join(dir, `s${i}`))} --init`;
    const r = await run('script', ['-qec', cmd, '/dev/null']);
    assert.equal(r.code, 0, r.stdout);
    const draws = r.stdout.split('\r').map((l) => l.replace(/\x1b\[K$/, '')).filter((l) => l.includes('%') && l.includes('] '));
    assert.ok(draws.length >= 1, `a bar was drawn: ${JSON.stringify(r.stdout)}`);
    for (const d of draws) {
      assert.match(d, /\] \d+\.\d% \d+\.\d MiB\/2\.9 MiB$/, `the bar and whole numbers: ${JSON.stringify(d)}`);
      if (stty) assert.ok(d.length <= 59, `fits 60 columns: ${JSON.stringify(d)}`);
    }
  }
});

test('mount: a start that fails (metrics port in use, ready file not writable) exits with its error and leaves no mount', async () => {
  // Both hung after printing the error (the FUSE session, or the metrics server, kept the daemon alive), the ready-file
  // one with the kernel's mount in place: killed, it left a stale mountpoint (ENOTCONN).
  const { createServer } = await import('node:net');
  const { readFile } = await import('node:fs/promises');
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const port = (busy.address() as import('node:net').AddressInfo).port;
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  try {
    for (const [flags, code, msg] of [[['--metrics-port', String(port)], 1, /EADDRINUSE/], [['--ready-file', join(dir, 'no-such-dir', 'ready')], 4, /ENOENT/]] as const) {
      const mnt = join(dir, `mnt-${flags[0].slice(2)}`);
      const r = await thinfs(['mount', store, mnt, '--cache-dir', join(dir, 'cache'), ...flags], { timeoutMs: 30_000 });
      assert.equal(r.timedOut, false, `thinfs mount ${flags.join(' ')} exits (did not: ${r.stderr})`);
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stderr, msg);
      const mounts = await readFile('/proc/self/mounts', 'utf8');
      assert.ok(!mounts.includes(` ${mnt} `), `no mount left at ${mnt}`);
    }
  } finally {
    busy.close();
    const mounts = await readFile('/proc/self/mounts', 'utf8');
    for (const m of mounts.split('\n')) if (m.includes(` ${dir}/`)) await run('umount', ['-l', m.split(' ')[1]!]);
  }
});

test('podman-store --watch: a ready file that cannot be written ends the command with its error', async () => {
  // It was logged as a failed pass and the watch went on, never ready, forever.
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const r = await thinfs(['podman-store', store, join(dir, 'mnt'), join(dir, 'podman'), '--watch', '--ready-file', join(dir, 'no-such-dir', 'ready')], { timeoutMs: 30_000 });
  assert.equal(r.timedOut, false, `exits (did not: ${r.stderr})`);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /thinfs: error: ENOENT.*no-such-dir/);
});

test('mount: SIGHUP (the terminal of a mount started with & closing) unmounts cleanly and exits 0, like SIGTERM', async () => {
  const { readFile } = await import('node:fs/promises');
  const { spawn } = await import('node:child_process');
  const dir = await tmpDir();
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'hello'), 'hi\n');
  await runOk('tar', ['-C', src, '-cf', join(dir, 'l.tar'), '.']);
  const store = join(dir, 'store');
  const { diffId } = await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'l.tar'), '--store', store, '--init', '--json']);
  const mnt = join(dir, 'mnt');
  const ready = join(dir, 'ready');
  const child = spawn(process.execPath, [THINFS, 'mount', store, mnt, '--cache-dir', join(dir, 'cache'), '--ready-file', ready], { stdio: 'ignore' });
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on('exit', (code, sig) => r([code, sig])));
  try {
    for (let i = 0; i < 300; i++) { if (await fsStat(ready).then(() => true, () => false)) break; await new Promise((r) => setTimeout(r, 100)); }
    assert.equal(await readFile(join(mnt, 'layers', diffId.slice(7), 'hello'), 'utf8'), 'hi\n');
    child.kill('SIGHUP');
    assert.deepEqual(await exited, [0, null], 'exit 0, not killed by the signal');
    assert.ok(!(await readFile('/proc/self/mounts', 'utf8')).includes(` ${mnt} `), 'no mount left (was: stale, ENOTCONN)');
    await assert.rejects(fsStat(ready), 'ready file removed');
  } finally {
    child.kill('SIGKILL');
    if ((await readFile('/proc/self/mounts', 'utf8')).includes(` ${mnt} `)) await run('umount', ['-l', mnt]);
  }
});

test('publisher and podman-store --watch: SIGHUP stops them cleanly (exit 0), as SIGTERM', async () => {
  const { spawn } = await import('node:child_process');
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const daemons: Array<[string, string[], RegExp]> = [
    ['publisher', ['publisher', '--store', store, '--s3-endpoint', 'http://127.0.0.1:9', '--bucket', 'layers', '--token', 't', '--reconcile-interval', '0', '--port', '0'], /^publisher listening on /],
    ['podman-store', ['podman-store', store, join(dir, 'mnt'), join(dir, 'podman'), '--watch', '--json'], /^\{/],
  ];
  for (const [what, args, started] of daemons) {
    const child = spawn(process.execPath, [THINFS, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' } });
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on('exit', (code, sig) => r([code, sig])));
    let out = '';
    await new Promise<void>((r, j) => {
      const t = setTimeout(() => j(new Error(`${what} did not start: ${out}`)), 30_000);
      child.stdout!.on('data', (b: Buffer) => { out += b.toString(); if (started.test(out)) { clearTimeout(t); r(); } });
    });
    child.kill('SIGHUP');
    assert.deepEqual(await exited, [0, null], `${what}: exit 0 after SIGHUP`);
  }
});
