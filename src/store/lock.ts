// Owns the store's locks under locks/: per-layer locks (Wharf) and the store-wide sweep lock that orders gc
// against commits (shared by commits, exclusive for a sweep). All are built from operations that are atomic on
// NFS (mkdir, exclusive create, rename) with refreshed mtimes as leases, never flock/fcntl.
import lockfile from 'proper-lockfile';
import { mkdir, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LOCKS_DIR } from './layout.js';
import { ThinfsError } from '../util/errors.js';
import { currentOwner, isOwnerAlive } from './owner.js';

/** A holder that stops refreshing its lock for this long is presumed dead and its lock taken over. */
function lockStaleMs(): number {
  const env = Number(process.env.THINFS_LOCK_STALE_MS);
  // proper-lockfile refuses less than 2 s; tests shorten it to exercise takeover.
  return Number.isFinite(env) && env >= 2000 ? env : 30_000;
}

const SWEEP_LOCK = 'gc';
const COMMITS_DIR = 'commits';

function lockTarget(storeRoot: string, key: string): string {
  return join(storeRoot, LOCKS_DIR, key.replace(/[^A-Za-z0-9_.-]/g, '_'));
}

/**
 * Whether someone holds the lock right now (held and not stale). Only a scheduling hint (the answer may
 * change the next moment): a converter starts other layers first instead of waiting on a busy one.
 */
export async function layerLockHeld(storeRoot: string, key: string): Promise<boolean> {
  return lockfile.check(lockTarget(storeRoot, key), { realpath: false, stale: lockStaleMs() }).catch(() => false);
}

/** Take an mkdir lock (proper-lockfile: `<target>.lock`, mtime refreshed every stale/3), waiting as long as it takes. */
async function acquire(target: string, stale: number, onCompromised: (e: Error) => void): Promise<() => Promise<void>> {
  await mkdir(join(target, '..'), { recursive: true });
  return lockfile.lock(target, {
    realpath: false,
    stale,
    update: Math.max(1000, Math.floor(stale / 3)),
    retries: { retries: 100_000, factor: 1.3, minTimeout: 50, maxTimeout: 1000 },
    onCompromised,
  });
}

/**
 * Per-layer lock on the shared store (the Wharf design): the holder fetches and writes the layer,
 * everyone else waits and then finds it published. A crashed holder's lock goes stale and is taken over.
 */
export async function withLayerLock<T>(storeRoot: string, key: string, fn: () => Promise<T>, opts: { staleMs?: number } = {}): Promise<T> {
  const release = await acquire(lockTarget(storeRoot, key), opts.staleMs ?? lockStaleMs(), (err) => { throw err; });
  try {
    return await fn();
  } finally {
    await release().catch(() => undefined);
  }
}

/**
 * Is a sweep running? readdir first: opening the directory revalidates it under NFS close-to-open semantics,
 * where a stat of the lock could be answered by a cached negative lookup.
 */
async function sweepRunning(storeRoot: string, stale: number): Promise<boolean> {
  const names = await readdir(join(storeRoot, LOCKS_DIR)).catch(() => [] as string[]);
  if (!names.includes(`${SWEEP_LOCK}.lock`)) return false;
  const st = await stat(join(storeRoot, LOCKS_DIR, `${SWEEP_LOCK}.lock`)).catch(() => null);
  return !!st && Date.now() - st.mtimeMs < stale;
}

/**
 * The shared side of the sweep lock, held by a commit while it moves objects into data/ and writes its
 * manifest. Register first (locks/commits/<id>), then look for a sweep: if one holds the lock, withdraw and
 * wait. A sweep takes its lock first, then waits for registrations to drain. Whichever of the two steps comes
 * second sees the other's first step, so a commit and a sweep never overlap.
 */
export async function withCommitLock<T>(storeRoot: string, id: string, fn: () => Promise<T>): Promise<T> {
  const stale = lockStaleMs();
  const dir = join(storeRoot, LOCKS_DIR, COMMITS_DIR);
  await mkdir(dir, { recursive: true });
  const reg = join(dir, id);
  for (let wait = 50; ; wait = Math.min(1000, wait * 2)) {
    await writeFile(reg, JSON.stringify(currentOwner()));
    if (!(await sweepRunning(storeRoot, stale))) break;
    await rm(reg, { force: true });
    while (await sweepRunning(storeRoot, stale)) await new Promise((r) => setTimeout(r, wait));
  }
  const beat = setInterval(() => { const t = new Date(); utimes(reg, t, t).catch(() => undefined); }, Math.max(500, Math.floor(stale / 3)));
  beat.unref();
  try {
    return await fn();
  } finally {
    clearInterval(beat);
    await rm(reg, { force: true });
  }
}

/** Handle on a held sweep lock: `check()` throws once the lock can no longer be trusted (lost, or this process stalled). */
export interface SweepLock { check(): void }

/**
 * The exclusive side: one sweep at a time, and no commit in progress while it runs. Registrations of commits
 * whose owner died (this host) or stopped refreshing (stale) are removed rather than waited for.
 */
export async function withSweepLock<T>(storeRoot: string, fn: (lock: SweepLock) => Promise<T>, opts: { onWait?: (n: number) => void } = {}): Promise<T> {
  const stale = lockStaleMs();
  let lost: Error | null = null;
  const release = await acquire(lockTarget(storeRoot, SWEEP_LOCK), stale, (e) => { lost = e; });
  // A stalled process (SIGSTOP, swap storm) may have lost the lock without knowing: its timers fall behind.
  let tick = Date.now();
  const ticker = setInterval(() => { tick = Date.now(); }, 250);
  const lock: SweepLock = {
    check() {
      if (lost) throw new ThinfsError(`sweep lock lost: ${(lost as Error).message}`);
      if (Date.now() - tick > stale / 2) throw new ThinfsError('sweep lock: this process stalled; stopping the sweep');
    },
  };
  try {
    const dir = join(storeRoot, LOCKS_DIR, COMMITS_DIR);
    for (let wait = 50; ; wait = Math.min(1000, wait * 2)) {
      let waiting = 0;
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const p = join(dir, name);
        const st = await stat(p).catch(() => null);
        if (!st) continue;
        let alive: boolean | null = null;
        try { alive = isOwnerAlive(JSON.parse(await readFile(p, 'utf8'))); } catch { /* being written */ }
        if (alive === false || (alive === null && Date.now() - st.mtimeMs > stale)) await rm(p, { force: true });
        else waiting++;
      }
      if (!waiting) break;
      opts.onWait?.(waiting);
      await new Promise((r) => setTimeout(r, wait));
    }
    lock.check();
    return await fn(lock);
  } finally {
    clearInterval(ticker);
    await release().catch(() => undefined);
  }
}
