// The mounts a test file starts over one store: each at work/<name> with its cache at work/<cache> (default
// cache-<name>), and every one stopped and its mountpoint unmounted at close, even when the test failed.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { forceUnmount, mountStore, type MountOpts, type Mounted } from '../fuse-mount-helper.js';

export interface TrackedMounts {
  /** Mount the store at work/<name>, its cache at work/<cache> (default cache-<name>). */
  mount(name: string, o?: { cache?: string } & Omit<MountOpts, 'cacheDir'>): Promise<Mounted>;
  /** A mount started otherwise (another mountpoint, a wrapper): stopped and unmounted at close like the others. */
  adopt(m: Mounted): Mounted;
  /** A mountpoint a command is expected not to mount: unmounted at close should a regression mount it. */
  track(mp: string): void;
  /** Stop a mount, which must exit 0 (its stderr's end in the message if not). */
  stop(m: Mounted): Promise<void>;
  /** Stop what is still mounted and unmount every mountpoint used (temp dirs are the caller's). */
  close(): Promise<void>;
}

export function trackedMounts(work: string, store: string): TrackedMounts {
  const live: Mounted[] = [];
  const used = new Set<string>();
  const adopt = (m: Mounted): Mounted => {
    live.push(m);
    used.add(m.mp);
    return m;
  };
  return {
    async mount(name, { cache, ...o } = {}) {
      return adopt(await mountStore(store, path.join(work, name), { ...o, cacheDir: path.join(work, cache ?? `cache-${name}`) }));
    },
    adopt,
    track(mp) { used.add(mp); },
    async stop(m) {
      const code = await m.stop();
      live.splice(live.indexOf(m), 1);
      assert.equal(code, 0, `daemon exits 0 on SIGTERM\n${m.stderr().slice(-2000)}`);
    },
    async close() {
      // Cleanup after a failed test: a daemon that will not stop must not hide that failure behind its own.
      for (const m of live.splice(0)) await m.stop().catch(() => {});
      for (const mp of used) await forceUnmount(mp);
    },
  };
}
