// A store holding one layer ingested from a tree the test writes, in a work dir other users can traverse (only the
// modes under it may protect anything), and the mounts a test starts over it: each stopped and unmounted at close,
// even when the test failed. Shared by the tests of the mount's options and of the node cache's safety.
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, thinfsJson, thinfsOk, tmpDir } from './proc.js';
import { makeTreeTar } from '../fixtures/tars.js';
import { forceUnmount, mountStore, type Mounted } from '../fuse-mount-helper.js';

export interface OneLayerMounts {
  work: string;
  store: string;
  /** The layer's diff id, hex. */
  hex: string;
  /** Mount the store at work/<name>, its cache at work/<cache> (default cache-<name>). */
  mount(name: string, o?: { cache?: string; extra?: string[]; wrap?: string[] }): Promise<Mounted>;
  /** A mount started otherwise (another mountpoint, a wrapper): stopped and unmounted at close like the others. */
  adopt(m: Mounted): Mounted;
  /** A mountpoint a command is expected not to mount: unmounted at close should a regression mount it. */
  track(mp: string): void;
  /** Stop a mount, which must exit 0. */
  stop(m: Mounted): Promise<void>;
  /** Stop what is still mounted, unmount every mountpoint used, remove the temp dirs. */
  close(): Promise<void>;
}

export async function oneLayerMounts(prefix: string, populate: (src: string) => Promise<void>): Promise<OneLayerMounts> {
  const work = await tmpDir(prefix);
  await fsp.chmod(work, 0o755);
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const src = path.join(work, 'src');
  await fsp.mkdir(src);
  await populate(src);
  const r = await thinfsJson<{ diffId: string }>(['ingest', await makeTreeTar(src, path.join(work, 'l.tar')), '--store', store, '--json', '--no-progress']);
  const live: Mounted[] = [];
  const used = new Set<string>();
  const fx: OneLayerMounts = {
    work, store, hex: r.diffId.slice(7),
    async mount(name, o = {}) {
      return fx.adopt(await mountStore(store, path.join(work, name), { cacheDir: path.join(work, o.cache ?? `cache-${name}`), extra: o.extra, wrap: o.wrap }));
    },
    adopt(m) {
      live.push(m);
      used.add(m.mp);
      return m;
    },
    track(mp) { used.add(mp); },
    async stop(m) {
      assert.equal(await m.stop(), 0);
      live.splice(live.indexOf(m), 1);
    },
    async close() {
      for (const m of live) await m.stop();
      for (const mp of used) await forceUnmount(mp);
      await cleanupTmpDirs();
    },
  };
  return fx;
}
