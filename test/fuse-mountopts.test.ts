// Issue 10 item 1, the mount's options: nosuid,nodev by default (a setuid-root binary in a layer must not give a local
// user euid 0, a device node in a layer must not open its device), --allow-suid/--allow-dev for root only, and the
// same options on the unprivileged fusermount3 path.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { run, runOk, THINFS_MAIN } from './helpers/proc.js';
import { oneLayerMounts, type OneLayerMounts } from './helpers/one-layer-mount.js';
import { mountStore, type Mounted } from './fuse-mount-helper.js';

const NOBODY = 65534;
let fx: OneLayerMounts;
let work: string;
let store: string;
let hex: string;

before(async () => {
  // Other users must reach the mountpoints and the store under it.
  fx = await oneLayerMounts('thinfs-fuse-mountopts-', async (src) => {
    await fsp.mkdir(path.join(src, 'bin'), { recursive: true });
    await fsp.mkdir(path.join(src, 'dev'));
    await fsp.copyFile('/usr/bin/id', path.join(src, 'bin/id-suid'));
    await fsp.chown(path.join(src, 'bin/id-suid'), 0, 0);
    await fsp.chmod(path.join(src, 'bin/id-suid'), 0o4755);
    await runOk('mknod', ['-m', '0666', path.join(src, 'dev/null'), 'c', '1', '3']);
  });
  ({ work, store, hex } = fx);
});

after(() => fx?.close());

const mount = (name: string, extra: string[] = [], wrap?: string[]) => fx.mount(name, { extra, wrap });
const stop = (m: Mounted) => fx.stop(m);

/** The per-mount options (field 6 of /proc/self/mountinfo) of the mount at mp. */
async function mountFlags(mp: string, pid: number | 'self' = 'self'): Promise<string[]> {
  const text = await fsp.readFile(`/proc/${pid}/mountinfo`, 'utf8');
  const line = text.split('\n').find((l) => l.split(' ')[4] === path.resolve(mp));
  assert.ok(line, `${mp} is mounted`);
  const f = line.split(' ');
  return [...f[5]!.split(','), 'fstype=' + f[f.indexOf('-') + 1]];
}

/** Runs the layer's setuid-root copy of id(1) as nobody; returns the effective uid it reports. */
async function euidAsNobody(m: Mounted): Promise<string> {
  const bin = path.join(m.mp, 'layers', hex, 'bin/id-suid');
  const st = await fsp.stat(bin);
  assert.equal(st.mode & 0o7777, 0o4755, 'the layer serves the setuid bit');
  assert.equal(st.uid, 0);
  return (await runOk('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', bin, '-u'])).trim();
}

describe('mount options', () => {
  it('by default a setuid-root binary in a layer runs with the caller\'s uid, and device nodes do not open', async () => {
    const m = await mount('mnt-default');
    assert.equal(await euidAsNobody(m), String(NOBODY));
    const dev = path.join(m.mp, 'layers', hex, 'dev/null');
    assert.ok((await fsp.stat(dev)).isCharacterDevice());
    await assert.rejects(fsp.readFile(dev), { code: 'EACCES' }, 'nodev: even root cannot open a device node of the mount');
    const flags = await mountFlags(m.mp);
    // README's list: ro,nosuid,nodev,noatime.
    for (const f of ['ro', 'nosuid', 'nodev', 'noatime']) assert.ok(flags.includes(f), `${f} in mount flags: ${flags.join(',')}`);
    await stop(m);
  });

  it('--allow-suid --allow-dev (root) honour them', async () => {
    const m = await mount('mnt-allow', ['--allow-suid', '--allow-dev']);
    const flags = await mountFlags(m.mp);
    assert.ok(!flags.includes('nosuid') && !flags.includes('nodev'), `mount flags: ${flags.join(',')}`);
    assert.equal(await euidAsNobody(m), '0');
    assert.equal((await fsp.readFile(path.join(m.mp, 'layers', hex, 'dev/null'))).length, 0, 'reads the real /dev/null');
    await stop(m);
  });

  it('an unprivileged mount (fusermount3) is nosuid,nodev too; --allow-suid is refused for it', async () => {
    // This machine's /dev/fuse is 0600 (fusermount3 opens it with the user's rights): a private mount namespace
    // gets a 0666 one, as most distributions have, and the daemon runs there as nobody.
    const home = path.join(work, 'home-nobody');
    await fsp.mkdir(home);
    await fsp.chown(home, NOBODY, NOBODY);
    const asNobody = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--'];
    const script = `mknod -m 0666 ${work}/fuse c 10 229 && mount --bind ${work}/fuse /dev/fuse && exec "$@"`;
    const wrap = ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'sh', ...asNobody];
    const m = fx.adopt(await mountStore(store, path.join(home, 'mnt'), { cacheDir: path.join(home, 'cache'), extra: ['--no-allow-other'], wrap }));
    const flags = await mountFlags(m.mp, m.child.pid!);
    assert.ok(flags.includes('fstype=fuse.thinfs'), `mounted through fusermount3 with our subtype: ${flags.join(',')}`);
    for (const f of ['ro', 'nosuid', 'nodev', 'noatime']) assert.ok(flags.includes(f), `${f} in mount flags (as root's): ${flags.join(',')}`);
    await stop(m);

    const r = await run(asNobody[0]!, [...asNobody.slice(1), process.execPath, THINFS_MAIN, 'mount', store, path.join(home, 'mnt2'), '--allow-suid',
      '--cache-dir', path.join(home, 'cache')]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--allow-suid needs root/);
  });
});
