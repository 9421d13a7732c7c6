// Offline base images for building container images here (no registry base is reachable): a Debian
// bookworm minbase root filesystem made by debootstrap (with python3), cached outside the repository
// and reused by every run, and podman images made from it (optionally with this machine's Node 20).
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { run, runOk, haveCommand } from './proc.js';
import type { TestPodman } from './podman.js';

export const CACHE_DIR = process.env.THINFS_TEST_CACHE ?? '/var/tmp/thinfs-cache';
const ROOTFS = path.join(CACHE_DIR, 'bookworm-py.rootfs');

/** The cached rootfs (made once: ~2 min with Debian's mirror); a string saying what is missing otherwise. */
export async function bookwormRootfs(): Promise<{ dir: string } | { missing: string }> {
  if (await fsp.access(path.join(ROOTFS, 'usr/bin/python3')).then(() => true, () => false)) return { dir: ROOTFS };
  if (!(await haveCommand('debootstrap'))) return { missing: 'debootstrap (apt-get install debootstrap)' };
  await fsp.mkdir(CACHE_DIR, { recursive: true });
  const tmp = `${ROOTFS}.${process.pid}.tmp`;
  await fsp.rm(tmp, { recursive: true, force: true });
  const r = await run('debootstrap', ['--variant=minbase', '--include=python3', 'bookworm', tmp, 'http://deb.debian.org/debian'], { timeoutMs: 900_000 });
  if (r.code !== 0) { await fsp.rm(tmp, { recursive: true, force: true }); return { missing: `a working debootstrap (${r.stderr.trim().split('\n').pop()})` }; }
  await fsp.rename(tmp, ROOTFS).catch(async (e: NodeJS.ErrnoException) => {
    // another run finished first: keep theirs
    if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
    await fsp.rm(tmp, { recursive: true, force: true });
  });
  return { dir: ROOTFS };
}

/** A tar of the cached rootfs (made once, next to it). */
export async function bookwormTar(): Promise<{ file: string } | { missing: string }> {
  const fs = await bookwormRootfs();
  if ('missing' in fs) return fs;
  const file = `${ROOTFS}.tar`;
  if (!(await fsp.access(file).then(() => true, () => false))) {
    await runOk('tar', ['-C', fs.dir, '--numeric-owner', '--xattrs', '-cf', `${file}.tmp`, '.'], { timeoutMs: 600_000 });
    await fsp.rename(`${file}.tmp`, file);
  }
  return { file };
}

/** localhost/thinfs-bookworm-base (the rootfs imported) in the given podman, made if missing. */
export async function importBookworm(p: TestPodman, name = 'localhost/thinfs-bookworm-base:latest'): Promise<string | { missing: string }> {
  if ((await p.podman(['image', 'exists', name])).code === 0) return name;
  const t = await bookwormTar();
  if ('missing' in t) return t;
  await p.podmanOk(['import', '--quiet', t.file, name], 600_000);
  return name;
}

/**
 * localhost/thinfs-node-base: the bookworm base plus this machine's node 20, npm and node headers, and
 * this machine's CA bundle (its egress to the npm registry may be through a TLS-inspecting proxy that
 * only the host's trust store knows), so `npm ci` inside a build reaches what the host reaches.
 */
export async function nodeBase(p: TestPodman, work: string, name = 'localhost/thinfs-node-base:2'): Promise<string | { missing: string }> {
  if ((await p.podman(['image', 'exists', name])).code === 0) return name;
  const base = await importBookworm(p);
  if (typeof base !== 'string') return base;
  const ctx = path.join(work, 'node-base');
  await fsp.mkdir(path.join(ctx, 'usr/bin'), { recursive: true });
  await fsp.mkdir(path.join(ctx, 'usr/lib/node_modules'), { recursive: true });
  await fsp.mkdir(path.join(ctx, 'usr/include'), { recursive: true });
  await fsp.copyFile(await fsp.realpath(process.execPath), path.join(ctx, 'usr/bin/node'));
  await runOk('cp', ['-a', '/usr/lib/node_modules/npm', path.join(ctx, 'usr/lib/node_modules/')]);
  await runOk('cp', ['-a', '/usr/include/node', path.join(ctx, 'usr/include/')]);
  await fsp.symlink('../lib/node_modules/npm/bin/npm-cli.js', path.join(ctx, 'usr/bin/npm'));
  await fsp.symlink('../lib/node_modules/npm/bin/npx-cli.js', path.join(ctx, 'usr/bin/npx'));
  await fsp.mkdir(path.join(ctx, 'usr/local/share'), { recursive: true });
  await fsp.copyFile('/etc/ssl/certs/ca-certificates.crt', path.join(ctx, 'usr/local/share/host-ca-bundle.crt'));
  await fsp.writeFile(path.join(ctx, 'Containerfile'), `FROM ${base}\nCOPY usr /usr\nENV NODE_EXTRA_CA_CERTS=/usr/local/share/host-ca-bundle.crt\nRUN node -v && npm -v\n`);
  await p.podmanOk(['build', '--quiet', '--network', 'host', '-t', name, ctx], 600_000);
  return name;
}
