// The mount daemon: mount options, mountpoint preparation (stale FUSE mounts detached), start-up in named stages
// (open the view, connect the transport, announce, prefetch) and serving until a signal or an unmount ends it.
import { execFile } from 'node:child_process';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Store } from '../store/store.js';
import type { HttpOptions } from '../store/http-backend.js';
import { NodeCache } from '../cache/node-cache.js';
import { ThinfsError, UsageError, EXIT, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { Namespace } from './namespace.js';
import { CatalogReader } from '../catalog/reader.js';
import { ThinFs, ENTRY_TTL } from './ops.js';
import { native, OP, E, type Binding, type Handler, type Session } from '../fuse/kernel.js';
import { readU64 } from '../format/listing.js';
import { StatsReporter } from './stats.js';
import { UNCACHED_BELOW } from './node-ids.js';
import { Prefetcher } from './prefetch.js';
import { LayerTrigger } from './layer-trigger.js';

const execFileP = promisify(execFile);

export interface MountOptions {
  store: string;
  mountpoint: string;
  cacheDir: string;
  cacheQuota: number;
  memCache: number;
  statsFile: string | null;
  metricsPort: number | null;
  readyFile: string | null;
  prefetch: string | null;
  /** Record the chunks read, in first-read order, to this trace file (at unmount, and on SIGUSR2). */
  record?: string | null;
  /** Speculative store fetches in flight at once (trace replay, rest of files read from their start). */
  prefetchParallel?: number;
  /** Fetch the rest of a multi-chunk file when it is read from offset 0. */
  fileAhead?: boolean;
  /** Background fill of a touched image's other chunks, decoded bytes per second (0 or absent: off). */
  fillRate?: number;
  maxRead: number;
  readaheadKb: number | null;
  localReadahead: number;
  /** FUSE passthrough of files whose bytes are all local (kernel >= 6.9, root). */
  passthrough: boolean;
  /** Without passthrough: READs of files whose verified bytes are local are answered by the transport thread (default on). */
  nativeReads?: boolean;
  /** Bytes of directory listings the FUSE transport keeps to answer READDIR ahead and LOOKUP itself (default 48 MiB). */
  listingCache?: number;
  allowOther: boolean;
  /** Honour setuid/setgid bits of served files (root only; default nosuid). */
  allowSuid: boolean;
  /** Let device nodes of served files be opened as devices (root only; default nodev). */
  allowDev: boolean;
  debug: boolean;
  /** Mirrors' timeouts and proxies, for an HTTP store. */
  http?: HttpOptions;
  /** Ed25519 public keys: serve only what the store's signed repository manifest names. */
  publicKeys?: string[];
  /** How often the signed manifest is polled for a new revision (ms). */
  refreshMs?: number;
  log: Logger;
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as octal. */
function mountinfoEscape(p: string): string {
  return p.replace(/[\\ \t\n]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
}

/**
 * Read a /proc file through the threadpool. (fs.promises.readFile with an encoding was measured running
 * synchronously on the JS thread here: ~50 ms stalls of every FUSE request once a second with a big mount table.)
 */
async function readProcFile(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const parts: Buffer[] = [];
    for (;;) {
      const b = Buffer.allocUnsafe(64 << 10);
      const { bytesRead } = await fh.read(b, 0, b.length, null);
      if (!bytesRead) break;
      parts.push(b.subarray(0, bytesRead));
    }
    return Buffer.concat(parts).toString('utf8');
  } finally { await fh.close(); }
}

export async function mountEntry(mountpoint: string): Promise<{ fstype: string; source: string } | null> {
  const text = await readProcFile('/proc/self/mountinfo');
  const want = mountinfoEscape(resolve(mountpoint));
  let found: { fstype: string; source: string } | null = null;
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f[4] !== want) continue;
    const dash = f.indexOf('-');
    found = { fstype: f[dash + 1] ?? '', source: f[dash + 2] ?? '' };
  }
  return found;
}

/** fusermount -u, then lazy (-uz) when busy, then umount -l (root without fusermount's mtab entry). */
export async function unmountPath(mountpoint: string, log?: Logger): Promise<void> {
  const tries: Array<[string, string[]]> = [['fusermount', ['-u', mountpoint]], ['fusermount', ['-uz', mountpoint]], ['umount', ['-l', mountpoint]]];
  let last = '';
  for (const [cmd, args] of tries) {
    try { await execFileP(cmd, args); log?.info({ cmd: `${cmd} ${args.join(' ')}` }, 'unmounted'); return; } catch (e) {
      last = `${cmd} ${args.join(' ')}: ${((e as { stderr?: string }).stderr ?? errorMessage(e)).trim()}`;
    }
  }
  throw new ThinfsError(`cannot unmount ${mountpoint}: ${last}`);
}

/**
 * A previous daemon that died leaves its mountpoint answering ENOTCONN ("Transport endpoint is
 * not connected"): detach it lazily so we can mount again. A live mount is refused instead.
 */
async function prepareMountpoint(mp: string, log: Logger): Promise<void> {
  try {
    const st = await stat(mp);
    if (!st.isDirectory()) throw new ThinfsError(`mountpoint ${mp} is not a directory`, EXIT.USAGE);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') {
      log.warn({ mountpoint: mp }, 'stale FUSE mountpoint (Transport endpoint is not connected): detaching it');
      await unmountPath(mp, log);
    } else if (code === 'ENOENT') {
      await mkdir(mp, { recursive: true });
    } else throw e;
  }
  const live = await mountEntry(mp);
  if (live && live.fstype.startsWith('fuse') && (await probeDead(mp))) {
    // stat() above may have been answered from cached attributes; a readdir always reaches the daemon.
    log.warn({ mountpoint: mp }, 'stale FUSE mountpoint (Transport endpoint is not connected): detaching it');
    await unmountPath(mp, log);
  } else if (live) {
    throw new ThinfsError(`${mp} is already a mountpoint (${live.fstype} from ${live.source}); unmount it first (thinfs unmount ${mp})`);
  }
}

/** True when the FUSE daemon behind mp is gone (ENOTCONN/ECONNABORTED); a live or slow one counts as alive. */
async function probeDead(mp: string): Promise<boolean> {
  const probe = readdir(mp).then(() => false, (e: NodeJS.ErrnoException) => e.code === 'ENOTCONN' || e.code === 'ECONNABORTED');
  return Promise.race([probe, new Promise<boolean>((r) => setTimeout(() => r(false), 5000).unref())]);
}

/** Sets the kernel readahead of this FUSE mount's backing device (sequential reads ask for more per round trip). */
async function setReadahead(mp: string, kb: number, log: Logger): Promise<void> {
  try {
    const st = await stat(mp);
    const major = Math.floor(st.dev / 256) & 0xfff, minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
    await writeFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, String(kb));
  } catch (e) {
    log.warn({ err: e }, 'cannot set readahead');
  }
}

/**
 * The kernel mount options. ro: writes fail with EROFS in the VFS; default_permissions: the kernel checks modes from
 * our attributes. nosuid,nodev unless asked otherwise: the images come from whoever published them, and a setuid-root
 * binary or a device node in a layer must not give a local user root or raw devices. Containers lose nothing: overlayfs
 * and podman decide setuid and devices by their own mount, as CernVM-FS (nosuid by default) users do.
 */
function mountOptions(o: Pick<MountOptions, 'maxRead' | 'allowOther' | 'allowSuid' | 'allowDev'>): string[] {
  if ((o.allowSuid || o.allowDev) && process.getuid?.() !== 0) {
    // fusermount3 would drop them with a warning: say so before mounting instead.
    throw new UsageError(`${o.allowSuid ? '--allow-suid' : '--allow-dev'} needs root: fusermount3 mounts every user's FUSE filesystem nosuid,nodev`);
  }
  const mopts = ['ro', o.allowSuid ? 'suid' : 'nosuid', o.allowDev ? 'dev' : 'nodev', 'default_permissions', `max_read=${o.maxRead}`];
  if (o.allowOther) mopts.push('allow_other');
  return mopts;
}

/** What a mount serves, opened before anything is mounted: the store, the cache, the view's operations, the stats. */
interface View { store: Store; cache: NodeCache; fs: ThinFs; stats: StatsReporter; prefetcher: Prefetcher }

async function openView(o: MountOptions, mp: string, startedAt: number): Promise<View> {
  const log = o.log;
  CatalogReader.preload();
  // The highest manifest revision seen lives with the cache: replay protection across restarts.
  const store = await Store.open(o.store, { http: o.http, publicKeys: o.publicKeys, trustDir: join(o.cacheDir, 'trust') });
  if (store.trust) log.info({ revision: store.trust.current!.revision, expires: store.trust.current!.expires }, 'signed repository manifest trusted');
  const cache = await NodeCache.open({ dir: o.cacheDir, quota: o.cacheQuota, memBytes: o.memCache, store, log });
  const ns = new Namespace(store, cache, log);
  const fs = new ThinFs(ns, cache, log, { statsFile: o.statsFile, mountedAt: startedAt, localReadahead: o.localReadahead });
  const prefetcher = new Prefetcher(cache, log, { parallel: o.prefetchParallel ?? 32, fileAhead: o.fileAhead ?? true, record: !!o.record, fillRate: o.fillRate ?? 0 });
  fs.prefetcher = prefetcher;
  prefetcher.onLanded = (hash) => fs.prefetchLanded(hash);
  // Not awaited: the process touching the image goes on while the traced chunks arrive.
  // A traced image's catalogs are fetched at its first touch, alongside its trace, and ahead of the trace's chunks.
  // With --fill-rate, the rest of the image follows its trace, in the background.
  ns.onImage = (img) => void prefetcher.replay(img.desc, () => ns.imageLayers(img))
    .then(() => prefetcher.fill(img.desc.name, () => ns.imageLayers(img)))
    .catch((e: unknown) => log.warn({ err: e, image: img.desc.name }, 'prefetch of an image failed'));
  // podman over layers/ (its generated image store) never touches images/: the lookup of a traced image's top layer
  // starts the same replay, through the same Image (so images/ and layers/ together still replay it once).
  const trigger = new LayerTrigger(store, log, (name, accept) => ns.image(name, accept));
  ns.onLayerDir = (name) => trigger.touched(name);
  trigger.warm();
  const stats = new StatsReporter(fs, cache, { store: store.location, mountpoint: mp, cacheDir: o.cacheDir, statsFile: o.statsFile, log, startedAt, trusted: () => store.trust?.current ?? null }, prefetcher, trigger);
  return { store, cache, fs, stats, prefetcher };
}

type Init = { maxReadahead: number; maxPages: number; kernelMinor: number; passthrough: boolean };
/** A live FUSE connection: the transport, what INIT negotiated, and the errno that will end it (ENODEV: unmounted). */
interface Connection { k: Binding; session: Session; init: Init; closed: Promise<number> }

/** Mounts, routes the transport's events to the view, and waits for the kernel's INIT (the mount is usable after it). */
async function connect(o: MountOptions, mp: string, mopts: string[], fs: ThinFs): Promise<Connection> {
  const log = o.log;
  const k = native();
  let initDone: (v: Init) => void = () => {};
  const inited = new Promise<Init>((r) => { initDone = r; });
  let closedDone: (errno: number) => void = () => {};
  const closed = new Promise<number>((r) => { closedDone = r; });
  const reply = (unique: number, errno: number, data?: Buffer | Buffer[]): void => {
    // One writev takes at most 63 buffers; a read over many small sparse regions can have more slices.
    if (Array.isArray(data) && data.length > 32) data = Buffer.concat(data);
    const r = k.reply(session, unique, errno, data);
    // ENODEV: the connection is gone (unmounted while this request was being served).
    if (r < 0 && r !== -E.ENODEV) log.warn({ errno: -r, unique }, 'FUSE reply refused by the kernel');
  };
  const onEvent: Handler = (op, unique, nodeid, body, tNs) => {
    if (o.debug) log.info({ op, unique, nodeid }, 'request');
    switch (op) {
      case OP.CLOSED: closedDone(body as number); return;
      case OP.INIT: {
        const b = body as Buffer;
        const pt = b.readUInt32LE(20) === 1;
        // Before any OPEN can reach us: the transport forwards first opens from the INIT on.
        const nat = !pt && o.nativeReads !== false;
        if (pt || nat) fs.openReply = (u, id, fd) => k.openReply(session, u, id, fd);
        // First opens come here: a replayed trace's page data can be put in the page cache before they are answered.
        if ((pt || nat) && typeof k.notifyStore === 'function') {
          fs.notifyStore = (id, off, data) => k.notifyStore(session, id, off, data);
          if (fs.prefetcher) fs.prefetcher.pushPages = true;
        }
        fs.nativeReads = nat;
        fs.passthrough = pt;
        // With or without passthrough: a file served by READs is answered by the transport from its landed chunks.
        if (o.nativeReads !== false && typeof k.chunkLanded === 'function') {
          fs.chunkReads = {
            landed: (id, nodeSize, off, len, path, fid) => k.chunkLanded(session, id, nodeSize, off, len, path, fid),
            reply: (u, id, off, size) => k.replyChunks(session, u, id, off, size),
          };
          fs.landForPrefetch();
        }
        initDone({ maxReadahead: b.readUInt32LE(0), maxPages: b.readUInt32LE(4), kernelMinor: b.readUInt32LE(8), passthrough: pt });
        return;
      }
      case OP.DIR_LISTED: fs.listedAhead(nodeid); return;
      case OP.OPENED: fs.openedNatively(nodeid); return;
      case OP.READ_NATIVE: fs.readNatively(nodeid, unique, (body as Buffer).readUInt32LE(0)); return;
      case OP.FORGET: fs.forget(nodeid, readU64(body as Buffer, 0)); return;
      case OP.BATCH_FORGET: {
        const b = body as Buffer;
        const count = b.readUInt32LE(0);
        for (let i = 0; i < count; i++) fs.forget(readU64(b, 8 + i * 16), readU64(b, 16 + i * 16));
        return;
      }
      default: fs.handle(op, unique, nodeid, body as Buffer | null, reply, tNs);
    }
  };
  let session: Session;
  try {
    session = k.mount(mp, 'thinfs', mopts.join(','), {
      maxReadahead: Math.max(o.maxRead, (o.readaheadKb ?? 0) * 1024), maxPages: Math.max(1, Math.min(256, Math.floor(o.maxRead / 4096))), maxBackground: 64,
      passthrough: o.passthrough ? 1 : 0, ttl: ENTRY_TTL, uncachedBelow: UNCACHED_BELOW, nativeReads: o.nativeReads === false ? 0 : 1,
      ...(o.listingCache !== undefined ? { listingBudget: o.listingCache } : {}),
    }, onEvent);
  } catch (e) {
    throw new ThinfsError(`cannot mount ${mp}: ${errorMessage(e)}`);
  }
  fs.dirEof = (id, off) => k.dirEof(session, id, off);
  fs.nativeReadStats = () => k.readStats(session);
  fs.dropped = (id) => k.forgetNode(session, id);
  fs.letGo = (id) => k.letGoNode(session, id);
  fs.keepListing = (id, block, base, ahead) => k.keepListing(session, id, block, base, ahead);
  fs.listingStats = () => k.listingStats(session);
  fs.noXattr = (id) => k.noXattr(session, id);
  fs.noXattrListing = (block, base) => k.noXattrListing(session, block, base);
  fs.xattrsByTransport = () => k.xattrsAnswered(session);
  const init = await Promise.race([inited, new Promise<null>((r) => setTimeout(() => r(null), 10_000).unref())]);
  if (!init) {
    await abandonMount(o, mp, { k, session, init: { maxReadahead: 0, maxPages: 0, kernelMinor: 0, passthrough: false }, closed });
    throw new ThinfsError(`cannot mount ${mp}: the kernel sent no FUSE INIT within 10 s`);
  }
  // The one-chunk files of directories being read are handed to the transport ahead of their open (with passthrough it
  // gives the kernel their chunk files; without, it answers their reads too).
  if (o.nativeReads !== false) {
    fs.handFile = (id, p, size, sha) => k.fileAhead(session, id, p, size, sha);
    fs.handBytes = (id, bytes) => k.fileBytesAhead(session, id, bytes);
  }
  log.info({ ...init, maxReadBytes: init.maxPages * 4096 }, 'FUSE connection initialised');
  if (!init.passthrough && o.passthrough) log.info('FUSE passthrough not available (needs kernel >= 6.9 and root): every read is served by thinfs');
  if (o.readaheadKb) await setReadahead(mp, o.readaheadKb, log);
  return { k, session, init, closed };
}

/** The mount is serving: metrics endpoint, stats file, the "mounted" line, the ready file (last: it means ready). */
async function announce(o: MountOptions, mp: string, v: View, metricsPort: number | null): Promise<void> {
  v.stats.startFile();
  await v.stats.writeFile();
  o.log.info({ store: v.store.location, mountpoint: mp, cacheDir: o.cacheDir, quota: o.cacheQuota, metricsPort, statsFile: o.statsFile }, 'mounted');
  process.stdout.write(`thinfs: mounted ${v.store.location} at ${mp}${metricsPort !== null ? ` (metrics on http://127.0.0.1:${metricsPort}/metrics)` : ''}\n`);
  if (o.readyFile) {
    // Renamed into place: a waiter that sees the file must never read it half-written (benches did, under load).
    const tmp = `${o.readyFile}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify({ pid: process.pid, mountpoint: mp, metricsPort, statsFile: o.statsFile }) + '\n');
    await rename(tmp, o.readyFile);
  }
}

/** While the trusted manifest stays expired, the warning is repeated this often (not at every poll). */
const EXPIRED_WARN_MS = 10 * 60_000;

/**
 * Polls the signed repository manifest: new layers and images appear with a new revision; nodes handed out keep theirs.
 * A trusted manifest that expires while mounted keeps being served (running containers need it), but never silently:
 * expiry is how a node learns that no newer revision reaches it (a stalled publisher, or a mirror or proxy holding
 * updates back: TUF's freeze attack), so it is warned about, and exported as a metric to alert on.
 */
function startRefresh(o: MountOptions, store: Store): NodeJS.Timeout | null {
  if (!store.trust) return null;
  let warnedAt = 0;
  const checkExpiry = () => {
    const cur = store.trust!.current!;
    if (Date.parse(cur.expires) > Date.now()) {
      if (warnedAt) o.log.info({ revision: cur.revision, expires: cur.expires }, 'repository manifest valid again');
      warnedAt = 0;
    } else if (Date.now() - warnedAt >= EXPIRED_WARN_MS) {
      warnedAt = Date.now();
      o.log.warn({ revision: cur.revision, expires: cur.expires },
        'the trusted repository manifest has expired and no mirror serves a newer one that verifies: still serving its revision (is the publisher signing? is a mirror or proxy holding updates back?)');
    }
  };
  const t = setInterval(() => {
    store.refreshManifest().then((changed) => {
      if (changed) o.log.info({ revision: store.trust!.current!.revision }, 'new repository manifest revision');
    }, (e: unknown) => o.log.warn({ err: e }, 'repository manifest refresh refused; keeping the current revision')).finally(checkExpiry);
  }, o.refreshMs ?? 60_000);
  t.unref();
  return t;
}

/** The paths of a prefetch list (one per line, # comments). */
async function readPrefetchList(listFile: string): Promise<string[]> {
  return (await readFile(listFile, 'utf8')).split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

/** Fetches the files of a prefetch list in the background (readers are not held up). */
function startPrefetch(list: string[], fs: ThinFs, log: Logger): void {
  fs.prefetch(list).then((r) => log.info(r, 'prefetch done'), (e) => log.warn({ err: e }, 'prefetch failed'));
}

/**
 * A start that failed once the kernel had the mount: the mount is taken down (else it stays, a stale mountpoint, and
 * the FUSE session keeps the process alive after its error), and no ready file says otherwise.
 */
async function abandonMount(o: MountOptions, mp: string, c: Connection): Promise<void> {
  const r = process.getuid?.() === 0 ? c.k.unmount(mp) : -E.EPERM;
  if (r < 0) await unmountPath(mp, o.log).catch((e: unknown) => o.log.error({ err: e }, 'unmount failed'));
  await Promise.race([c.closed, new Promise<void>((r2) => setTimeout(r2, 2000).unref())]);
  if (o.readyFile) await rm(o.readyFile, { force: true });
}

/** Writes the chunks recorded so far (first-read order) as a trace file (renamed into place: never seen half-written). */
async function writeTrace(file: string, p: Prefetcher, log: Logger): Promise<void> {
  const bytes = p.traceBytes();
  if (!bytes) return;
  try {
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, bytes);
    await rename(tmp, file);
    log.info({ file, chunks: p.recordedChunks }, 'prefetch trace written');
  } catch (e) {
    log.warn({ err: e, file }, 'cannot write the prefetch trace');
  }
}

/**
 * Serves until SIGTERM/SIGINT (then detaches the mount) or until the kernel ends the connection (someone ran
 * `thinfs unmount` / fusermount -u), then flushes the cache index and stats. Resolves to the exit code.
 */
function serveUntilStopped(o: MountOptions, mp: string, v: View, c: Connection, refresh: NodeJS.Timeout | null): Promise<number> {
  const log = o.log;
  return new Promise<number>((done) => {
    let stopping = false;
    const finish = async (why: string, needUnmount: boolean): Promise<void> => {
      if (stopping) return;
      stopping = true;
      log.info({ why }, 'shutting down');
      v.prefetcher.stop();
      if (refresh) clearInterval(refresh);
      let code: number = EXIT.OK;
      if (needUnmount) {
        // Lazy detach: the name goes at once; the connection ends when the last user lets go (then CLOSED arrives).
        const r = process.getuid?.() === 0 ? c.k.unmount(mp) : -E.EPERM;
        if (r < 0) {
          try { await unmountPath(mp, log); } catch (e) { log.error({ err: e }, 'unmount failed'); code = EXIT.FAILURE; }
        }
        const gone = await Promise.race([c.closed.then(() => true), new Promise<boolean>((r2) => setTimeout(() => r2(false), 2000).unref())]);
        if (!gone) log.warn({ mountpoint: mp }, 'mount still in use after detach; exiting, its users will see ENOTCONN');
      }
      await v.cache.flush();
      if (o.record) await writeTrace(o.record, v.prefetcher, log);
      await v.stats.close(false);
      if (o.readyFile) await rm(o.readyFile, { force: true });
      log.info({ code }, 'stopped');
      done(code);
    };
    // A failure while shutting down (flushing the cache index, the stats file) still ends the daemon, with code 1.
    const end = (why: string, needUnmount: boolean) => finish(why, needUnmount).catch((e) => {
      log.error({ err: e }, 'shutdown failed');
      done(EXIT.FAILURE);
    });
    void c.closed.then((errno) => end(`FUSE connection closed (${errno === E.ENODEV ? 'unmounted' : `errno ${errno}`})`, false));
    process.once('SIGTERM', () => void end('SIGTERM', true));
    process.once('SIGINT', () => void end('SIGINT', true));
    // As libfuse does: a mount started with & from a terminal gets SIGHUP when the terminal goes; dying of it left the
    // mountpoint stale (ENOTCONN) for every reader.
    process.once('SIGHUP', () => void end('SIGHUP', true));
    // A recorded trace on demand, the mount staying up.
    if (o.record) process.on('SIGUSR2', () => void writeTrace(o.record!, v.prefetcher, log));
  });
}

/** Mount, serve until SIGTERM/SIGINT or an external unmount, then shut down cleanly. Resolves to the exit code. */
export async function runMount(o: MountOptions): Promise<number> {
  const mp = resolve(o.mountpoint);
  const startedAt = Date.now();
  const mopts = mountOptions(o);
  const view = await openView(o, mp, startedAt);
  // What may fail for a reason of the host (a port in use, a list file missing) fails before the kernel has the mount.
  const prefetchList = o.prefetch ? await readPrefetchList(o.prefetch) : null;
  let conn: Connection | null = null;
  try {
    const metricsPort = o.metricsPort !== null ? await view.stats.listen(o.metricsPort) : null;
    await prepareMountpoint(mp, o.log);
    conn = await connect(o, mp, mopts, view.fs);
    await announce(o, mp, view, metricsPort);
  } catch (e) {
    if (conn) await abandonMount(o, mp, conn);
    await view.stats.close(false).catch(() => undefined); // the metrics server would keep the process alive after its error
    throw e;
  }
  const refresh = startRefresh(o, view.store);
  if (prefetchList) startPrefetch(prefetchList, view.fs, o.log);
  return serveUntilStopped(o, mp, view, conn, refresh);
}

export function defaultCacheDir(): string {
  return process.getuid?.() === 0 ? '/var/cache/thinfs' : join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? '/tmp', '.cache'), 'thinfs');
}
