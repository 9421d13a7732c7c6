// A real NFS mount over loopback for tests (Debian's nfs-kernel-server): the kernel server exports a test
// directory to 127.0.0.1 only and the kernel client mounts it. Whatever this helper starts (nfsd control
// filesystem, rpcbind, mountd, nfsd threads) it stops again; services already running are left alone.
// When the kernel cannot (see native-notes/nfs.md), it answers with the exact error instead.
import { access, readFile } from 'node:fs/promises';
import { randomInt } from 'node:crypto';
import { run } from './proc.js';

export interface NfsMount {
  /** The client mount point: the same directory tree as the export, through NFS. */
  dir: string;
  stop(): Promise<void>;
}

async function sh(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  const r = await run(cmd, args, { timeoutMs: 60_000 }).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message, timedOut: false }));
  return { ok: r.code === 0, out: `${r.stdout}${r.stderr}`.trim() };
}

async function running(name: string): Promise<boolean> {
  return (await sh('pidof', [name])).ok;
}

/** Export `exportDir` to 127.0.0.1 and mount it on `mountDir`; or the reason it cannot be done here. */
export async function nfsLoopback(exportDir: string, mountDir: string): Promise<{ mount: NfsMount } | { skip: string }> {
  const undo: Array<() => Promise<unknown>> = [];
  const cleanup = async () => { for (const u of undo.splice(0).reverse()) await u().catch(() => undefined); };
  const fail = async (step: string, out: string) => { await cleanup(); return { skip: `NFS over loopback unavailable: \`${step}\`: ${out.split('\n')[0]} (native-notes/nfs.md)` }; };

  for (const tool of ['exportfs', 'rpc.nfsd', 'rpc.mountd', 'rpcbind']) {
    if (!(await sh('sh', ['-c', `command -v ${tool}`])).ok) return { skip: `${tool} not installed (nfs-kernel-server; scripts/setup.sh)` };
  }
  if (!(await access('/proc/fs/nfsd/threads').then(() => true, () => false))) {
    const r = await sh('mount', ['-t', 'nfsd', 'nfsd', '/proc/fs/nfsd']);
    if (!r.ok) return fail('mount -t nfsd nfsd /proc/fs/nfsd', r.out);
    undo.push(() => sh('umount', ['/proc/fs/nfsd']));
  }
  if (!(await running('rpcbind'))) {
    const r = await sh('rpcbind', ['-w']);
    if (!r.ok) return fail('rpcbind -w', r.out);
    undo.push(async () => { const p = await sh('pidof', ['rpcbind']); if (p.ok) await sh('kill', p.out.split(/\s+/)); });
  }
  // fsid: the export may live on overlayfs/tmpfs, which have no device number NFS can use.
  const target = `127.0.0.1:${exportDir}`;
  const ex = await sh('exportfs', ['-o', `rw,sync,no_root_squash,no_subtree_check,insecure,fsid=${randomInt(1000, 1_000_000)}`, target]);
  if (!ex.ok) return fail(`exportfs ${target}`, ex.out);
  undo.push(() => sh('exportfs', ['-u', target]));
  if (!(await running('rpc.mountd'))) {
    const r = await sh('rpc.mountd', []);
    if (!r.ok) return fail('rpc.mountd', r.out);
    undo.push(async () => { const p = await sh('pidof', ['rpc.mountd']); if (p.ok) await sh('kill', p.out.split(/\s+/)); });
  }
  const threads = Number((await readFile('/proc/fs/nfsd/threads', 'utf8').catch(() => '0')).trim()) || 0;
  if (threads === 0) {
    const r = await sh('rpc.nfsd', ['4']);
    if (!r.ok) return fail('rpc.nfsd 4', r.out);
    undo.push(() => sh('rpc.nfsd', ['0']));
  }
  const m = await sh('mount', ['-t', 'nfs4', '-o', 'vers=4.2,hard,timeo=600', target, mountDir]);
  if (!m.ok) return fail(`mount -t nfs4 ${target} ${mountDir}`, m.out);
  undo.push(async () => { if (!(await sh('umount', [mountDir])).ok) await sh('umount', ['-l', mountDir]); });
  return { mount: { dir: mountDir, stop: cleanup } };
}
