// Mount helper for the FUSE tests: the mount is always served by a CHILD process (`thinfs mount`),
// and everything here touches the mountpoint asynchronously (a synchronous call would deadlock only
// if the mount lived in this process, but async keeps the rule simple).
import { spawn, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { run, THINFS_MAIN, waitFor } from './helpers/proc.js';

export interface MountStats {
  cache: {
    memHits: number; diskHits: number; fetches: number; fetchedBytes: number; fetchedDecodedBytes: number; catalogFetches: number;
    joined: number; evictions: number; corruptDropped: number; errors: number; failedFast: number; usedBytes: number; usedObjects: number; quota: number;
    filesAssembled: number; assembling: number; catalogEvictions: number;
    filesVerifiedAtOpen: number; filesTrustedAtOpen: number; filesReverified: number;
    packFetches: number; packMembers: number; packBadMembers: number; packFallbacks: number;
    listingsBuilt: number; listingsReused: number; listingsRejected: number;
  };
  ops: {
    reads: number; readBytes: number; eio: number; lookups: number; readdirs: number; liveNodes: number;
    opensPassthrough: number; opensServed: number; opensNative: number; opensByTransport: number; nativeReads: number; nativeReadBytes: number; listingsAhead: number; xattrsByTransport: number; lookupsByTransport: number;
    listingsKept: number; listingsKeptBytes: number; listingsEvicted: number;
    requests: Record<string, { n: number; queueSec: number; totalSec: number; maxSec: number }>;
  };
  layersLoaded: number;
  trust: { revision: number; expires: string; expired: boolean } | null;
}

export interface Mounted {
  mp: string;
  cacheDir: string;
  child: ChildProcess;
  stderr(): string;
  stats(): Promise<MountStats>;
  metrics(): Promise<string>;
  /** SIGTERM, wait for exit; resolves to the exit code and checks the mountpoint is gone. */
  stop(): Promise<number | null>;
}

export interface MountOpts {
  cacheDir: string;
  quota?: string;
  memCache?: string;
  extra?: string[];
  /** A command line that execs the daemon's own (appended) for it: another user, a mount namespace. */
  wrap?: string[];
}

export async function isMounted(mp: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const want = path.resolve(mp).replace(/[\\ \t\n]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
  return text.split('\n').some((l) => l.split(' ')[4] === want);
}

export async function mountStore(store: string, mp: string, o: MountOpts): Promise<Mounted> {
  const ready = path.join(path.dirname(o.cacheDir), `ready-${path.basename(mp)}-${Date.now()}.json`);
  const args = [THINFS_MAIN, 'mount', store, mp, '--cache-dir', o.cacheDir, '--ready-file', ready, '--metrics-port', '0',
    '--cache-quota', o.quota ?? '10G', '--mem-cache', o.memCache ?? '64M', ...(o.extra ?? [])];
  const argv = [...(o.wrap ?? []), process.execPath, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
  child.stdout!.on('data', () => {});
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  let dead = false;
  void exited.then(() => { dead = true; });
  const info = await waitFor(async () => {
    if (dead) throw new Error(`thinfs mount exited early:\n${err}`);
    try { return JSON.parse(await fsp.readFile(ready, 'utf8')) as { metricsPort: number }; } catch { return null; }
  }, 20_000, 50, 'mount ready file');
  const base = `http://127.0.0.1:${info!.metricsPort}`;
  return {
    mp, cacheDir: o.cacheDir, child,
    stderr: () => err,
    stats: async () => (await (await fetch(`${base}/stats`)).json()) as MountStats,
    metrics: async () => (await fetch(`${base}/metrics`)).text(),
    stop: async () => {
      if (!dead) child.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 15_000))]);
      if (await isMounted(mp)) await run('fusermount', ['-uz', mp]);
      if (!dead) child.kill('SIGKILL');
      return code;
    },
  };
}

/** Last-resort cleanup for a test that failed half-way. */
export async function forceUnmount(mp: string): Promise<void> {
  if (await isMounted(mp)) await run('fusermount', ['-uz', mp]);
}
