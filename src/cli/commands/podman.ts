// CLI: `thinfs podman-store` and `podman-conf`: the podman image store over a mount, storage.conf.
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { writeFile, rm } from 'node:fs/promises';
import { Store } from '../../store/store.js';
import { generatePodmanStore } from '../../podman/image-store.js';
import { watchPodmanStore } from '../../podman/watch.js';
import { storageConf, writeStorageConf } from '../../podman/storage-conf.js';
import { createLogger } from '../../util/log.js';
import { ThinfsError, EXIT } from '../../util/errors.js';
import { escapeControls, quoteText } from '../quote.js';
import { addStoreReadOptions } from '../http-options.js';

const DEFAULT_PODMAN_STORE = '/var/lib/thinfs/podman-store';

function parseInterval(s: string, what = '--interval'): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n <= 0) throw new ThinfsError(`${what}: expected seconds > 0, got "${s}"`, EXIT.USAGE);
  return Math.round(n * 1000);
}

export function registerPodmanCommands(program: Command): void {
  const cmd = program.command('podman-store');
  // --public-key (with --trust-dir) as the mount's: over a signed store, only what its manifest names becomes a
  // podman image (a descriptor no one signed must not get a name podman runs); HTTP options for an HTTP store.
  addStoreReadOptions(cmd);
  cmd
    .description('generate a read-only podman image store (additionalimagestores) whose layers are the thinfs mount\'s layers/')
    .argument('<store>', 'store directory, or http(s) URL(s) separated by commas')
    .argument('<mountpoint>', 'where the store is (or will be) mounted with `thinfs mount`')
    .argument('[dir]', 'the image store to write', DEFAULT_PODMAN_STORE)
    .option('--watch', 'keep running: new images (and layers published later) are added within one --interval')
    .option('--interval <seconds>', 'poll interval of --watch', '2')
    .option('--refresh <seconds>', 'with --watch and --public-key: poll the signed manifest this often', '60')
    .option('--ready-file <file>', 'with --watch: written once the first pass is done (removed at exit)')
    .option('--json', 'print the result of the (first) pass as JSON')
    .addHelpText('after', `
Then: thinfs podman-conf <dir> -o /etc/containers/storage.conf, and podman run REF uses the thin
images with no registry and no layer download.`)
    .action(async (storeLoc: string, mountpoint: string, dir: string, o: { watch?: boolean; interval: string; refresh: string; readyFile?: string; json?: boolean }) => {
      const log = createLogger('thinfs-podman-store');
      const store = await Store.open(/^https?:\/\//.test(storeLoc) ? storeLoc : resolve(storeLoc));
      const opts = { store, mountpoint: resolve(mountpoint), dir: resolve(dir), log };
      if (!o.watch) {
        const r = await generatePodmanStore(opts);
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else for (const i of r.images) process.stdout.write(`${i.id.slice(0, 12)} ${i.names.map(quoteText).join(' ')}\n`);
        for (const s of r.skipped) process.stderr.write(`thinfs: skipped ${quoteText(s.name)}: ${escapeControls(s.reason)}\n`);
        return;
      }
      const interval = parseInterval(o.interval);
      const ac = new AbortController();
      for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(sig, () => ac.abort());
      let first = true;
      // A ready file that cannot be written ends the command with that error (a supervisor waiting for it would wait
      // forever: the watch loop only logs a failed pass, and the first pass is never repeated).
      let readyError: unknown = null;
      try {
        await watchPodmanStore({
          ...opts, intervalMs: interval, refreshMs: parseInterval(o.refresh, '--refresh'), signal: ac.signal,
          onPass: async (r) => {
            if (!first) return;
            first = false;
            if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
            if (o.readyFile) {
              await writeFile(o.readyFile, JSON.stringify({ pid: process.pid, dir: opts.dir }) + '\n').catch((e: unknown) => { readyError = e; ac.abort(); });
            }
          },
        });
      } finally {
        if (o.readyFile) await rm(o.readyFile, { force: true });
      }
      if (readyError) throw readyError;
    });

  program.command('podman-conf')
    .description('print (or write) the storage.conf a node needs so podman runs thin images from the generated image store')
    .argument('[dir]', 'the image store `thinfs podman-store` writes', DEFAULT_PODMAN_STORE)
    .option('--rootless', 'for a non-root user\'s ~/.config/containers/storage.conf (podman\'s per-user graphroot/runroot)')
    .option('--graphroot <dir>', 'podman\'s own (writable) image store')
    .option('--runroot <dir>', 'podman\'s run-time state directory')
    .option('-o, --output <file>', 'write it there: merged into an existing file (only additionalimagestores is set), or a new file')
    .action(async (dir: string, o: { rootless?: boolean; graphroot?: string; runroot?: string; output?: string }) => {
      const conf = { imageStore: resolve(dir), rootless: !!o.rootless, graphroot: o.graphroot && resolve(o.graphroot), runroot: o.runroot && resolve(o.runroot) };
      if (!o.output) { process.stdout.write(storageConf(conf)); return; }
      const how = await writeStorageConf(resolve(o.output), conf);
      process.stderr.write(`thinfs: ${how} ${resolve(o.output)}\n`);
    });
}
