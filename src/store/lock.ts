import lockfile from 'proper-lockfile';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { LOCKS_DIR } from './layout.js';

/**
 * Per-layer lock on the shared store (the Wharf design): the holder fetches and writes the layer,
 * everyone else waits and then finds it published. mkdir-based with a refreshed mtime, so it works
 * on NFS where flock/fcntl are unreliable, and a crashed holder's lock goes stale and is taken over.
 */
const STALE_MS = 30_000;

function lockTarget(storeRoot: string, key: string): string {
  return join(storeRoot, LOCKS_DIR, key.replace(/[^A-Za-z0-9_.-]/g, '_'));
}

/**
 * Whether someone holds the lock right now (held and not stale). Only a scheduling hint (the answer may
 * change the next moment): a converter starts other layers first instead of waiting on a busy one.
 */
export async function layerLockHeld(storeRoot: string, key: string): Promise<boolean> {
  return lockfile.check(lockTarget(storeRoot, key), { realpath: false, stale: STALE_MS }).catch(() => false);
}

export async function withLayerLock<T>(storeRoot: string, key: string, fn: () => Promise<T>, opts: { staleMs?: number } = {}): Promise<T> {
  await mkdir(join(storeRoot, LOCKS_DIR), { recursive: true });
  const target = lockTarget(storeRoot, key);
  const stale = opts.staleMs ?? STALE_MS;
  const release = await lockfile.lock(target, {
    realpath: false,
    stale,
    update: Math.max(1000, Math.floor(stale / 3)),
    retries: { retries: 100_000, factor: 1.3, minTimeout: 50, maxTimeout: 1000 },
    onCompromised: (err) => { throw err; },
  });
  try {
    return await fn();
  } finally {
    await release().catch(() => undefined);
  }
}
