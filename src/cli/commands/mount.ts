// CLI: `thinfs mount` / `unmount`: flags to mount options, the podman store loop, exit codes.
import type { Command } from 'commander';
import { resolve, join } from 'node:path';
import { rm } from 'node:fs/promises';
import { createLogger } from '../../util/log.js';
import { parseSize } from '../../cache/size.js';
import { ThinfsError, EXIT } from '../../util/errors.js';
import { Store } from '../../store/store.js';
import { watchPodmanStore } from '../../podman/watch.js';
import { generatePodmanStore } from '../../podman/image-store.js';
import { defaultCacheDir, mountEntry, runMount, unmountPath } from '../../mount/daemon.js';
import { addHttpOptions, httpOptionsFrom, publicKeysFrom, type HttpCli } from '../http-options.js';

interface MountCli extends HttpCli {
  refresh: string;
  cacheDir?: string; cacheQuota: string; memCache: string; statsFile?: string; metricsPort?: string;
  readyFile?: string; podmanStore?: string; prefetch?: string; maxRead: string; readahead: string; localReadahead: string; passthrough: boolean; nativeReads: boolean; listingCache: string; allowOther: boolean;
  allowSuid?: boolean; allowDev?: boolean; debug?: boolean;
  record?: string; prefetchParallel: string; fileAhead: boolean; fillRate?: string;
}

function refreshMs(s: string): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n <= 0) throw new ThinfsError(`--refresh: expected a positive number of seconds, got "${s}"`, EXIT.USAGE);
  return Math.round(n * 1000);
}

function parseCount(s: string, what: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) throw new ThinfsError(`${what}: expected a whole number, got "${s}"`, EXIT.USAGE);
  return n;
}

/** --listing-cache: bytes, below 4 GiB (the transport takes a 32-bit budget). */
function listingCache(s: string): number {
  const n = parseSize(s, '--listing-cache');
  if (n >= 2 ** 32) throw new ThinfsError(`--listing-cache: at most 4095M, got "${s}"`, EXIT.USAGE);
  return n;
}

export function registerMountCommands(program: Command): void {
  addHttpOptions(program.command('mount'))
    .option('--public-key <files>', 'serve only what the store\'s repository manifest, signed by one of these Ed25519 public keys (PEM, comma-separated), names by hash')
    .option('--refresh <sec>', 'with --public-key: poll the signed manifest this often; new layers and images appear without remount', '60')
    .description('mount a store read-only with FUSE: layers/<diff id hex>/ and images/<name>/rootfs/, fetched lazily and verified')
    .argument('<store>', 'store directory, or http(s) URL(s) separated by commas')
    .argument('<mountpoint>', 'directory to mount on (created if missing; a stale FUSE mount there is detached)')
    .option('--cache-dir <dir>', `node-local cache directory, shareable by several mounts (default ${defaultCacheDir()})`)
    .option('--cache-quota <size>', 'byte budget for the node-local cache (chunks, whole-file copies, catalogs), K/M/G suffixes (LRU eviction)', '10G')
    .option('--mem-cache <size>', 'decoded chunks kept in memory (requests straddling chunks, local readahead); the kernel page cache holds file data', '32M')
    .option('--stats-file <file>', 'JSON counters rewritten while mounted; also linked as <mountpoint>/.thinfs/stats (default <cache-dir>/stats/<pid>.json)')
    .option('--metrics-port <port>', 'serve Prometheus /metrics and JSON /stats on 127.0.0.1:<port> (0 = any free port)')
    .option('--ready-file <file>', 'write {"pid",...} JSON here once the mount is serving (removed at exit)')
    .option('--podman-store <dir>', 'also keep a podman image store over this mount in <dir> (as `thinfs podman-store --watch`); see `thinfs podman-conf`')
    .option('--prefetch <file>', 'paths (one per line, relative to the mountpoint) whose chunks are fetched right after mounting')
    .option('--record <file>', 'record the chunks read, in first-read order, and the parts of each read, as a prefetch trace written to <file> at unmount (and on SIGUSR2); attach it with `thinfs trace attach`. Recording reads page by page: no passthrough, no kernel readahead, every read through thinfs')
    .option('--prefetch-parallel <n>', 'speculative store fetches in flight at once (trace replay, rest of files read from their start; also at most 8 MiB of chunks)', '32')
    .option('--no-file-ahead', 'do not fetch the rest of a file read from its start ahead of the reader')
    .option('--fill-rate <size>', 'after an image\'s first touch (and its trace), fetch the rest of its chunks in the background at most this many decoded bytes per second, K/M/G suffixes (paused while reads wait; stops at 80% of the cache quota; default off)')
    .option('--max-read <size>', 'largest read request asked of the kernel', '1M')
    .option('--readahead <size>', 'kernel readahead for this mount (0 = leave the kernel default)', '1M')
    .option('--local-readahead <chunks>', 'for sequential readers, chunks loaded ahead from the cache dir into memory (never from the store)', '8')
    .option('--no-passthrough', 'serve every read through thinfs, never letting the kernel read a verified local copy directly (FUSE passthrough)')
    .option('--no-native-reads', 'without passthrough, answer every read on the JS thread (by default reads of verified local copies are answered by the FUSE transport thread)')
    .option('--listing-cache <size>', 'directory listings the FUSE transport keeps to answer listings handed ahead and lookups itself (LRU; a listing over a twelfth of it is left to thinfs)', '48M')
    .option('--no-allow-other', 'only the mounting user may access the mount')
    .option('--allow-suid', 'honour setuid/setgid bits of served files (root only; the mount is nosuid by default)')
    .option('--allow-dev', 'let device nodes of served files open their devices (root only; the mount is nodev by default)')
    .option('--debug', 'log every FUSE request (op, unique, node id)')
    .addHelpText('after', `
Runs in the foreground until SIGTERM/SIGINT/SIGHUP (clean unmount, exit 0) or until the mountpoint is
unmounted (thinfs unmount). Run it under systemd or with & for a background mount.

The mount is ro,nosuid,nodev,noatime,default_permissions (and allow_other unless --no-allow-other): a
setuid-root binary or a device node in an image must not give local users root or raw devices.
Containers do not need more: overlayfs/podman decide setuid and devices by their own mount (as
CernVM-FS, nosuid by default, is used). --allow-suid / --allow-dev lift this, as root only.

Examples:
  thinfs mount /srv/store /mnt/thinfs --cache-dir /var/cache/thinfs --cache-quota 20G
  thinfs mount http://mirror1/store,http://mirror2/store /mnt/thinfs --metrics-port 9400
  ls /mnt/thinfs/layers/                      # one directory per published layer (diff id hex)
  chroot /mnt/thinfs/images/busybox%3Alatest/rootfs /bin/sh`)
    .action(async (storeLoc: string, mountpoint: string, o: MountCli) => {
      // More libuv threads: cache reads and store reads of concurrent FUSE requests share this pool.
      process.env.UV_THREADPOOL_SIZE ??= '16';
      const log = createLogger('thinfs-mount');
      const cacheDir = resolve(o.cacheDir ?? defaultCacheDir());
      let metricsPort: number | null = null;
      if (o.metricsPort !== undefined) {
        metricsPort = Number(o.metricsPort);
        if (!Number.isInteger(metricsPort) || metricsPort < 0 || metricsPort > 65535) throw new ThinfsError(`--metrics-port: bad port "${o.metricsPort}"`, EXIT.USAGE);
      }
      const readahead = parseSize(o.readahead, '--readahead');
      const storeLocation = /^https?:\/\//.test(storeLoc) ? storeLoc : resolve(storeLoc);
      // A recording sees the pages the workload touches: every read through this process (no passthrough, none
      // answered by the transport) and no kernel readahead (one page a fault), so the trace can name parts of chunks.
      const recording = !!o.record;
      if (recording) log.info('recording: passthrough, reads answered by the transport and kernel readahead are off for this mount');
      // Every flag is parsed before anything is written or started (the podman store, its watch loop): a bad value is
      // a usage error (exit 2) that leaves nothing behind.
      const mountOptions = {
        store: storeLocation,
        mountpoint,
        cacheDir,
        cacheQuota: parseSize(o.cacheQuota, '--cache-quota'),
        memCache: parseSize(o.memCache, '--mem-cache'),
        statsFile: resolve(o.statsFile ?? join(cacheDir, 'stats', `${process.pid}.json`)),
        metricsPort,
        readyFile: o.readyFile ? resolve(o.readyFile) : null,
        prefetch: o.prefetch ? resolve(o.prefetch) : null,
        record: o.record ? resolve(o.record) : null,
        prefetchParallel: Math.max(1, parseCount(o.prefetchParallel, '--prefetch-parallel')),
        fileAhead: o.fileAhead,
        fillRate: o.fillRate ? parseSize(o.fillRate, '--fill-rate') : 0,
        maxRead: parseSize(o.maxRead, '--max-read'),
        readaheadKb: recording ? 4 : readahead ? Math.ceil(readahead / 1024) : null,
        localReadahead: parseCount(o.localReadahead, '--local-readahead'),
        passthrough: recording ? false : o.passthrough,
        nativeReads: recording ? false : o.nativeReads,
        listingCache: listingCache(o.listingCache),
        allowOther: o.allowOther,
        allowSuid: !!o.allowSuid,
        allowDev: !!o.allowDev,
        debug: !!o.debug,
        http: httpOptionsFrom(o),
        publicKeys: publicKeysFrom(o),
        refreshMs: refreshMs(o.refresh),
        log,
      };
      // A ready file left by a daemon that was killed (SIGKILL, OOM) must not say this one serves before it does.
      if (mountOptions.readyFile) await rm(mountOptions.readyFile, { force: true });
      // The podman image store is written from the store alone (never through this process's own mount).
      const podmanStop = new AbortController();
      let code: number;
      try {
        if (o.podmanStore) {
          const ps = { store: await Store.open(storeLocation, { http: mountOptions.http, publicKeys: mountOptions.publicKeys, trustDir: join(cacheDir, 'trust') }), mountpoint: resolve(mountpoint), dir: resolve(o.podmanStore), log };
          // a first pass before the mount reports ready, so a unit ordered after it finds the images
          await generatePodmanStore(ps);
          void watchPodmanStore({ ...ps, intervalMs: 2000, refreshMs: mountOptions.refreshMs, signal: podmanStop.signal });
        }
        code = await runMount(mountOptions);
      } finally {
        // A mount that failed to start must not leave the watch loop keeping the process alive (a unit would hang in
        // "activating" instead of failing and being restarted).
        podmanStop.abort();
      }
      // Nothing else may keep a daemon alive after its filesystem is gone (stats server, cache timers).
      process.exit(code);
    });

  program.command('unmount')
    .alias('umount')
    .description('unmount a thinfs mount (fusermount -u, falling back to a lazy unmount); the daemon then exits')
    .argument('<mountpoint>', 'mounted directory')
    .action(async (mountpoint: string) => {
      const mp = resolve(mountpoint);
      if (!(await mountEntry(mp))) throw new ThinfsError(`${mp} is not mounted`, EXIT.NOT_FOUND);
      await unmountPath(mp);
      process.stdout.write(`thinfs: unmounted ${mp}\n`);
    });
}
