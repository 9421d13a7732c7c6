import lockfile from 'proper-lockfile';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { LOCKS_DIR } from './layout.js';

/**
 * Per-layer lock on the shared store (the Wharf design): the holder fetches and writes the layer,
 * everyone else waits and then finds it published. mkdir-based with a refreshed mtime, so it works
 * on NFS where flock/fcntl are unreliable, and a crashed holder's lock goes stale and is taken over.
 */
export async function withLayerLock<T>(storeRoot: string, key: string, fn: () => Promise<T>, opts: { staleMs?: number } = {}): Promise<T> {
  const dir = join(storeRoot, LOCKS_DIR);
  await mkdir(dir, { recursive: true });
  const target = join(dir, key.replace(/[^A-Za-z0-9_.-]/g, '_'));
  const stale = opts.staleMs ?? 30_000;
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
