// A store holding one layer ingested from a tree the test writes, in a work dir other users can traverse (only the
// modes under it may protect anything), and the mounts a test starts over it: each stopped and unmounted at close,
// even when the test failed. Shared by the tests of the mount's options and of the node cache's safety.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, thinfsJson, thinfsOk, tmpDir } from './proc.js';
import { makeTreeTar } from '../fixtures/tars.js';
import { trackedMounts, type TrackedMounts } from './tracked-mounts.js';

/** The store, its layer, and the mounts a test starts over it (close also removes the temp dirs). */
export interface OneLayerMounts extends TrackedMounts {
  work: string;
  store: string;
  /** The layer's diff id, hex. */
  hex: string;
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
  const mounts = trackedMounts(work, store);
  return {
    ...mounts, work, store, hex: r.diffId.slice(7),
    async close() {
      await mounts.close();
      await cleanupTmpDirs();
    },
  };
}
