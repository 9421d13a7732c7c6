// A podman of its own for a test: storage.conf (graphroot, runroot, optional additional image stores)
// and containers.conf (runc, tmp dir) under the test's temp dir, passed by environment, so the host's
// podman state is never touched. Containers of a test are removed by `cleanup()`.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { run, runOk, type RunResult } from './proc.js';

export interface TestPodman {
  dir: string;
  storageConf: string;
  env: Record<string, string>;
  podman(args: string[], timeoutMs?: number): Promise<RunResult<string>>;
  podmanOk(args: string[], timeoutMs?: number): Promise<string>;
  cleanup(): Promise<void>;
}

/** containers.conf this machine needs (runc; no ulimits, see machine notes), with state in dir. */
export async function writeContainersConf(dir: string): Promise<string> {
  const f = path.join(dir, 'containers.conf');
  await fsp.mkdir(path.join(dir, 'tmp'), { recursive: true });
  await fsp.writeFile(f, [
    '[containers]', 'default_ulimits = []', '',
    '[engine]', 'runtime = "runc"', 'events_logger = "file"', `tmp_dir = "${path.join(dir, 'tmp')}"`, '',
  ].join('\n'));
  return f;
}

/**
 * A podman whose storage.conf is `storageConf` (written by the caller, e.g. with `thinfs podman-conf`),
 * or a plain one under dir (graphroot/runroot only) when not given.
 */
export async function testPodman(dir: string, opts: { storageConf?: string; extraEnv?: Record<string, string> } = {}): Promise<TestPodman> {
  await fsp.mkdir(dir, { recursive: true });
  let storageConf = opts.storageConf;
  if (!storageConf) {
    storageConf = path.join(dir, 'storage.conf');
    await fsp.writeFile(storageConf, `[storage]\ndriver = "overlay"\ngraphroot = "${path.join(dir, 'graph')}"\nrunroot = "${path.join(dir, 'run')}"\n`);
  }
  const env = { CONTAINERS_STORAGE_CONF: storageConf, CONTAINERS_CONF: await writeContainersConf(dir), ...(opts.extraEnv ?? {}) };
  const podman = (args: string[], timeoutMs = 180_000) => run('podman', args, { env, timeoutMs });
  return {
    dir, storageConf, env, podman,
    podmanOk: (args, timeoutMs = 180_000) => runOk('podman', args, { env, timeoutMs }),
    cleanup: async () => {
      await podman(['rm', '-af', '-t', '0']);
      // podman's own overlay mounts (container layers) must go before the dirs are removed
      await podman(['system', 'prune', '-af']);
      await run('bash', ['-c', `grep -o ' ${dir}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l`]);
    },
  };
}
