// Owns the store's locks under locks/: per-layer locks (Wharf) and the store-wide sweep lock that orders gc
// against commits (shared by commits, exclusive for a sweep). All are built from operations that are atomic on
// NFS (mkdir, exclusive create, rename) with refreshed mtimes as leases, never flock/fcntl.
import lockfile from 'proper-lockfile';
import { AsyncLocalStorage } from 'node:async_hooks';
import { statSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LOCKS_DIR } from './layout.js';
import { InterruptedError, LockLostError } from '../util/errors.js';
import { sleep } from '../util/retry.js';
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

/**
 * Take an mkdir lock (proper-lockfile: `<target>.lock`, mtime refreshed every stale/3), waiting as long as it takes,
 * or until `signal` aborts (SIGINT/SIGTERM of a waiting converter): then InterruptedError, nothing taken.
 */
async function acquire(target: string, stale: number, onCompromised: (e: Error) => void, signal?: AbortSignal): Promise<() => Promise<void>> {
  await mkdir(join(target, '..'), { recursive: true });
  const opts = { realpath: false, stale, update: Math.max(1000, Math.floor(stale / 3)), onCompromised };
  if (!signal) return lockfile.lock(target, { ...opts, retries: { retries: 100_000, factor: 1.3, minTimeout: 50, maxTimeout: 1000 } });
  // The same waits, but each one ends at the signal (proper-lockfile's own retry timers cannot be cancelled).
  for (let attempt = 0; ; attempt++) {
    if (signal.aborted) throw new InterruptedError(`interrupted while waiting for lock ${target}`);
    try { return await lockfile.lock(target, { ...opts, retries: 0 }); } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e;
    }
    await sleep(Math.min(1000, 50 * 1.3 ** attempt), signal);
  }
}

/** A layer (or fetch, or manifest) lock as the code running under it sees it: `check()` throws once it is lost. */
export interface HeldLock { readonly key: string; check(): void }

/** The layer locks the running code holds (innermost last): a transaction captures them when it starts. */
const heldByContext = new AsyncLocalStorage<HeldLock[]>();

export function heldLocks(): HeldLock[] { return heldByContext.getStore() ?? []; }

/**
 * Watches a held lock: lost when proper-lockfile finds it taken over (its mtime not ours, the directory gone), or
 * when this process stalled (SIGSTOP, swap storm) and the lock directory is no longer the one it made (a waiter
 * removed and re-made it) or is old enough for a waiter to take it over before the overdue refresh runs; its
 * refresh timer would learn that only later. Sticky: once lost, the holder's operation must fail, never publish.
 */
function watchLock(key: string, lockDir: string, stale: number): { lock: HeldLock; compromised: (e: Error) => void; acquired: () => void; stop: () => void } {
  let lost: string | null = null;
  let ino: number | null = null;
  let tick = Date.now();
  let stalledFor = 0;
  let released = false;
  const ticker = setInterval(() => { stalledFor = Math.max(stalledFor, Date.now() - tick); tick = Date.now(); }, 250);
  ticker.unref();
  const lock: HeldLock = {
    key,
    check() {
      // Released by its holder: work that outlived the lock (a context captured inside it) is no longer its concern.
      if (released) return;
      stalledFor = Math.max(stalledFor, Date.now() - tick);
      // A stall shorter than a refresh interval cannot have let a waiter in; a longer one is checked on disk.
      if (!lost && ino !== null && stalledFor > stale / 3) {
        const st = statSync(lockDir, { throwIfNoEntry: false });
        if (!st || st.ino !== ino) lost = `this process stalled for ${stalledFor} ms and the lock was taken over`;
        else if (Date.now() - st.mtimeMs > stale / 2) lost = `this process stalled for ${stalledFor} ms: the lock is about to go stale (after ${stale} ms)`;
        else stalledFor = 0;
      }
      if (lost) throw new LockLostError(key, lost);
    },
  };
  return {
    lock,
    // Called from proper-lockfile's refresh timer: record, never throw (a throw there is an uncaught exception).
    compromised: (e: Error) => { lost ??= e.message; },
    acquired: () => { ino = statSync(lockDir, { throwIfNoEntry: false })?.ino ?? null; tick = Date.now(); stalledFor = 0; },
    stop: () => { released = true; clearInterval(ticker); },
  };
}

/** Take a lock with its watcher (see watchLock); the watcher is stopped when acquiring fails. */
async function acquireWatched(storeRoot: string, key: string, stale: number, signal?: AbortSignal): Promise<{ lock: HeldLock; release: () => Promise<void>; stop: () => void }> {
  const target = lockTarget(storeRoot, key);
  const w = watchLock(key, `${target}.lock`, stale);
  try {
    const release = await acquire(target, stale, w.compromised, signal);
    w.acquired();
    return { lock: w.lock, release, stop: w.stop };
  } catch (e) { w.stop(); throw e; }
}

/**
 * Per-layer lock on the shared store (the Wharf design): the holder fetches and writes the layer,
 * everyone else waits and then finds it published. A crashed holder's lock goes stale and is taken over.
 * A holder that loses its lock (stalled past the stale time, taken over) is told at its next check: the
 * transactions started under it check before every object and before publishing (txn.ts), so its operation
 * fails with LockLostError and publishes nothing; the process goes on.
 */
export async function withLayerLock<T>(storeRoot: string, key: string, fn: (lock: HeldLock) => Promise<T>, opts: { staleMs?: number; signal?: AbortSignal } = {}): Promise<T> {
  const w = await acquireWatched(storeRoot, key, opts.staleMs ?? lockStaleMs(), opts.signal);
  try {
    return await heldByContext.run([...heldLocks(), w.lock], () => fn(w.lock));
  } finally {
    w.stop();
    await w.release().catch(() => undefined);
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
  const w = await acquireWatched(storeRoot, SWEEP_LOCK, stale);
  const lock: SweepLock = w.lock;
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
    w.stop();
    await w.release().catch(() => undefined);
  }
}
