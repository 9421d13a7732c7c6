// The headline benchmark: starting a container from a realistic image (Debian minbase + python3,
// bench/lib/realistic-image.ts) over an emulated shared link (bench/lib/netem.ts: one bandwidth cap
// for every simulated node, added round-trip time), podman pull + run against thinfs.
// Both sides cross the same link: the registry (for podman) and the store's nginx (for thinfs) sit
// behind delaying proxies whose outgoing traffic shares one htb class.
// For each RTT and workload it reports, per path: wall time, bytes moved, HTTP requests; then N = 1,
// 2, 4, 8 nodes starting at once. thinfs starts the container two ways: "rootfs" rows run `podman run --rootfs
// <mount>/images/NAME/rootfs:O` (the image view); "native" rows run `podman run REF` through the podman image store
// generated over the node's mount (`thinfs podman-store`, `thinfs podman-conf`: overlayfs stacks the mount's
// layers/<hex>/, what a cluster node does). "+ trace": the workload's recorded trace (thinfs mount --record under the
// same path, thinfs trace attach) replayed ahead of the process on nodes with empty caches (native: started by the
// lookup of the image's top layer); the prefetch column is the daemons' stats after the start (summed over nodes).
// A row's time ends when its containers exit; its bytes and requests are counted once the nodes' speculative fetches
// (file-ahead, trace) are done, so what a start set in motion is counted even if it was still on the wire at the exit.
// Untraced rows read a copy of the store as converted, traced rows another copy that `trace attach` recompresses, so
// no untraced row fetches chunks a traced row's attach recompressed before it.
// Writes bench/out/coldstart.md and, with gnuplot, coldstart.png.
//
// Env: BENCH_RTTS (ms, default "0,20"), BENCH_MBIT (default 100), BENCH_NODES (default "1,2,4,8"), BENCH_WORKLOADS
// (default "true,python"), BENCH_PATHS (which rows: "podman,cold,trace,native,native-trace", default all; "cold" and
// "trace" are the rootfs rows, "native" the native cold/warm/hot rows; e.g. "cold" for the no-trace rootfs rows alone,
// a few minutes). THINFS_PACKS=0 converts the image without packs (the request count before them). BENCH_MOUNT_ARGS:
// extra `thinfs mount` flags for every node, e.g. "--no-passthrough" (what nodes on RHEL 8/9 kernels run). BENCH_PAGES=0:
// traces attached without page data (`trace attach` without `--pages`: traced chunks replayed one by one, whole).
import { mkdir, readFile, rm, writeFile, appendFile, stat } from 'node:fs/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { realisticImage } from './lib/realistic-image.js';
import { shapeLoopback, startDelayProxy, type DelayProxy } from './lib/netem.js';
import { startRegistry, freePort, type RegistryServer } from '../test/fixtures/images.js';
import { mountStore, type Mounted, type MountStats } from '../test/fuse-mount-helper.js';
import { run, runOk, waitFor } from '../test/helpers/proc.js';
import { parseTrace } from '../src/format/trace.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const D2T = join(ROOT, 'dist', 'tools', 'docker2thin.js');
const THINFS = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const OUT = join(ROOT, 'bench', 'out');
const RTTS = (process.env.BENCH_RTTS ?? '0,20').split(',').map(Number);
const MBIT = Number(process.env.BENCH_MBIT ?? 100);
const NODES = (process.env.BENCH_NODES ?? '1,2,4,8').split(',').map(Number);
const PATHS = new Set((process.env.BENCH_PATHS ?? 'podman,cold,trace,native,native-trace').split(','));
const ONLY = (process.env.BENCH_WORKLOADS ?? '').split(',').filter(Boolean);
const MOUNT_ARGS = (process.env.BENCH_MOUNT_ARGS ?? '').split(/\s+/).filter(Boolean);
/** Traced rows attach their trace with page data (`--pages`) unless BENCH_PAGES=0 (the chunk-by-chunk replay). */
const ATTACH_ARGS = process.env.BENCH_PAGES === '0' ? [] : ['--pages'];
/** Every thinfs node of the bench mounts through here: BENCH_MOUNT_ARGS are added to its flags. */
const mountNode = (url: string, mp: string, o: { cacheDir: string; extra?: string[] }): Promise<Mounted> =>
  mountStore(url, mp, { ...o, extra: [...MOUNT_ARGS, ...(o.extra ?? [])] });
const IMAGE = 'python';     // thin image name and registry repository
const TAG = 'v1';

export const WORKLOADS: Record<string, string[]> = {
  true: ['/bin/true'],
  python: ['/usr/bin/python3', '-c', 'import json,email,http.client,asyncio,decimal,sqlite3'],
};

interface Row { rtt: number; workload: string; path: string; nodes: number; seconds: number; bytes: number; requests: number; prefetch?: string }

function now(): number { return Number(process.hrtime.bigint()) / 1e9; }

export async function dropCaches(): Promise<void> {
  await run('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3').catch(() => {});
}

/**
 * nginx serving the store as static files, with an access log to count requests; images/ listed as README's nginx
 * setup does (what `thinfs podman-store` over HTTP and the mount's index of images by top layer read).
 */
export async function startNginx(dir: string, store: string): Promise<{ port: number; log: string; requests(): Promise<number>; stop(): void }> {
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  const log = join(dir, 'access.log');
  await writeFile(conf, `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log; worker_processes 2;
events { worker_connections 1024; }
http { log_format timed '$msec $request_time $status $body_bytes_sent $request_uri'; access_log ${log} timed; client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
  keepalive_requests 100000;
  server { listen 127.0.0.1:${port}; root ${store}; location ~ /images/ { autoindex on; autoindex_format json; } } }
`);
  await writeFile(log, '');
  const p: ChildProcess = spawn('nginx', ['-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    try { const r = await fetch(`http://127.0.0.1:${port}/thinfs-store.json`); await r.arrayBuffer(); break; } catch { await new Promise((r) => setTimeout(r, 50)); }
  }
  return {
    port, log,
    requests: async () => (await readFile(log, 'utf8')).split('\n').filter(Boolean).length,
    stop: () => { p.kill('SIGTERM'); },
  };
}

export class Podman {
  /** env: e.g. CONTAINERS_STORAGE_CONF naming an additional image store (a native thinfs node). */
  constructor(readonly dir: string, readonly env: Record<string, string> = {}) {}
  /** Flags naming root and runroot, unless a storage.conf does (podman drops its additionalimagestores when --storage-driver is given). */
  args(): string[] { return this.env.CONTAINERS_STORAGE_CONF ? [] : ['--root', join(this.dir, 'root'), '--runroot', join(this.dir, 'run'), '--storage-driver', 'overlay']; }
  async pullRun(ref: string, cmd: string[]): Promise<void> {
    await runOk('podman', [...this.args(), 'pull', '--quiet', '--tls-verify=false', ref], { timeoutMs: 900_000, env: this.env });
    await this.run(ref, cmd);
  }
  /** The image must be local (own store or an additional one): never pulled here. */
  async run(ref: string, cmd: string[]): Promise<void> {
    await runOk('podman', [...this.args(), 'run', '--rm', '--network=none', '--pull=never', '--entrypoint', cmd[0]!, ref, ...cmd.slice(1)], { timeoutMs: 600_000, env: this.env });
  }
  async rootfsRun(rootfs: string, cmd: string[]): Promise<void> {
    await runOk('podman', [...this.args(), 'run', '--rm', '--network=none', '--rootfs', `${rootfs}:O`, ...cmd], { timeoutMs: 600_000, env: this.env });
  }
  async reset(): Promise<void> {
    await run('podman', [...this.args(), 'system', 'reset', '--force'], { env: this.env });
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * A node that runs thin images natively: its own podman (root, runroot) whose storage.conf names an image store
 * generated (one pass of `thinfs podman-store`, before the mount, as a node does when an image is published) over
 * its own mountpoint DIR/mnt; the mount itself is made by the caller (mountAt), with DIR/cache as its cache.
 */
export class NativeNode {
  readonly mp: string;
  readonly cacheDir: string;
  private constructor(readonly dir: string, readonly pod: Podman) { this.mp = join(dir, 'mnt'); this.cacheDir = join(dir, 'cache'); }
  static async make(dir: string, storeUrl: string): Promise<NativeNode> {
    const imageStore = join(dir, 'ps');
    const conf = join(dir, 'storage.conf');
    await mkdir(join(dir, 'mnt'), { recursive: true });
    await runOk(process.execPath, [THINFS, 'podman-store', storeUrl, join(dir, 'mnt'), imageStore]);
    await runOk(process.execPath, [THINFS, 'podman-conf', imageStore, '--graphroot', join(dir, 'root'), '--runroot', join(dir, 'run'), '-o', conf]);
    return new NativeNode(dir, new Podman(dir, { CONTAINERS_STORAGE_CONF: conf }));
  }
  mountAt(storeUrl: string, extra: string[] = []): Promise<Mounted> {
    return mountNode(storeUrl, this.mp, { cacheDir: this.cacheDir, extra });
  }
}

/**
 * Waits (up to 30 s) until the nodes have no speculative fetch queued or in flight (the rest of files read from their
 * start, a trace): a row's time ends when the container exits, its bytes and requests once what the start set in
 * motion has arrived, so a fetch still on the wire at the exit is not left out.
 */
async function idle(ms: Mounted[]): Promise<void> {
  for (const m of ms) {
    await waitFor(async () => {
      const p = ((await m.stats()) as unknown as { prefetch: { inflight: number; queued: number } }).prefetch;
      return p.inflight === 0 && p.queued === 0 || undefined;
    }, 30_000, 50, 'prefetch idle').catch(() => undefined);
  }
}

interface PrefetchStats {
  traces: number; traceErrors: number; tracesDone: number; traceChunks: number; fetched: number; hits: number; waste: number;
  pageSegments: number; pageSegmentErrors: number; pageChunks: number; pageBytes: number;
}

/** When the replay of the first node was asked for, started and done (its daemon's log), in s after t0 (epoch ms). */
function replayTimeline(m: Mounted, t0Ms: number): string {
  const at = (msg: string) => {
    for (const l of m.stderr().split('\n')) {
      try { const o = JSON.parse(l) as { msg?: string; time?: number }; if (o.msg === msg && o.time) return `${((o.time - t0Ms) / 1000).toFixed(2)} s`; } catch { /* not a log line */ }
    }
    return '-';
  };
  return `top layer touched ${at('top layer of a traced image touched: replaying its trace')}, replay started ${at('replaying prefetch trace')}, done ${at('prefetch trace replayed')}`;
}

/**
 * Each daemon's prefetch counters once its replay is done (or 30 s), summed over nodes. A node that did not replay
 * exactly one trace, or replayed another number of chunks than the recorded trace holds (a fresh cache: every traced
 * chunk is queued), is flagged in the cell, so a row never passes off another start as this trace's.
 */
async function prefetchOf(ms: Mounted[], traceChunks: number): Promise<string> {
  const all: PrefetchStats[] = [];
  for (const m of ms) {
    const get = async () => ((await m.stats()) as unknown as { prefetch: PrefetchStats }).prefetch;
    const p = await waitFor(async () => { const x = await get(); return x.traces > 0 && x.tracesDone === x.traces ? x : undefined; }, 30_000, 100, 'trace replayed')
      .catch(async () => get());
    all.push(p!);
  }
  const sum = (k: keyof PrefetchStats) => all.reduce((a, p) => a + p[k], 0);
  // With page data a traced chunk comes in a segment (pageChunks) instead of on its own (traceChunks).
  const bad = all.filter((p) => p.traces !== 1 || p.traceErrors !== 0 || p.pageSegmentErrors !== 0 || p.traceChunks + p.pageChunks !== traceChunks).length;
  const pages = sum('pageSegments') ? `; page data: ${sum('pageSegments')} segments, ${sum('pageChunks')} chunks, ${(sum('pageBytes') / 1e6).toFixed(1)} MB put in page caches` : '';
  return `${sum('hits')} / ${sum('fetched')} / ${sum('waste')} (trace: ${traceChunks} chunks${pages})${bad ? ` (${bad} node(s) without exactly this replay: ${JSON.stringify(all)})` : ''}`;
}

export async function main(): Promise<void> {
  const image = await realisticImage();
  const work = join(tmpdir(), `tcs-${process.pid}`); // podman refuses a runroot path over 50 characters
  await mkdir(work, { recursive: true });
  await mkdir(OUT, { recursive: true });
  const rows: Row[] = [];
  let reg: RegistryServer | null = null;
  let nginx: Awaited<ReturnType<typeof startNginx>> | null = null;
  const proxies: DelayProxy[] = [];
  let unshape: (() => void) | null = null;
  const mounts: Mounted[] = [];
  try {
    reg = await startRegistry(join(work, 'registry'));
    await runOk('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', image.ociRef, `docker://${reg.host}/${IMAGE}:${TAG}`], { timeoutMs: 600_000 });
    // Two copies of the converted store behind one nginx: untraced rows read `plain` (chunks as ingest wrote them),
    // traced rows `traced`, where `trace attach` recompresses the traced chunks (zstd 19). With one store, untraced
    // rows after the first attach fetched those recompressed chunks (10.4 instead of 12.6 MB).
    const stores = join(work, 'stores');
    const store = join(stores, 'plain');
    const tstore = join(stores, 'traced');
    await mkdir(stores);
    await runOk(process.execPath, [THINFS, 'init', store]);
    await runOk(process.execPath, [D2T, '--insecure', '--no-progress', '--store', store, '--name', IMAGE, `${reg.host}/${IMAGE}:${TAG}`], { timeoutMs: 900_000 });
    await runOk('cp', ['-a', store, tstore]);
    nginx = await startNginx(work, stores);
    console.log(`image: ${image.layers} layers, ${(image.compressedBytes / 1e6).toFixed(1)} MB compressed; link ${MBIT} Mbit/s shared by all nodes${MOUNT_ARGS.length ? `; thinfs mount ${MOUNT_ARGS.join(" ")}` : ""}`);

    for (const rtt of RTTS) {
      const regProxy = await startDelayProxy(reg.port, rtt);
      const storeProxy = await startDelayProxy(nginx.port, rtt);
      proxies.push(regProxy, storeProxy);
      unshape = shapeLoopback([regProxy.port, storeProxy.port], MBIT);
      const regRef = `127.0.0.1:${regProxy.port}/${IMAGE}:${TAG}`;
      const storeUrl = `http://127.0.0.1:${storeProxy.port}/plain`;
      const tracedUrl = `http://127.0.0.1:${storeProxy.port}/traced`;
      const thinRef = `${reg.host}/${IMAGE}:${TAG}`; // the name the generated image store gives the converted image
      const regRequests = () => reg!.log().split('\n').filter((l) => /"(GET|HEAD) \/v2\//.test(l)).length;

      for (const [wname, cmd] of Object.entries(WORKLOADS).filter(([w]) => !ONLY.length || ONLY.includes(w))) {
        for (const n of NODES) {
          // podman pull + run, n nodes at once, each with its own empty store.
          const pods = Array.from({ length: n }, (_, i) => new Podman(join(work, `p${rtt}${wname[0]}${n}-${i}`)));
          let b0 = regProxy.stats().bytesDown; let q0 = regRequests(); let t0 = now();
          // A thinfs row: its time now (the container exited), its bytes and requests once the nodes are idle.
          const ended = async (path: string, nodes: number, ms: Mounted[]): Promise<Row> => {
            const seconds = now() - t0;
            await idle(ms);
            return { rtt, workload: wname, path, nodes, seconds, bytes: storeProxy.stats().bytesDown - b0, requests: (await nginx!.requests()) - q0 };
          };
          if (PATHS.has('podman')) {
            await Promise.all(pods.map((p) => p.pullRun(regRef, cmd)));
            rows.push({ rtt, workload: wname, path: 'podman pull + run', nodes: n, seconds: now() - t0, bytes: regProxy.stats().bytesDown - b0, requests: regRequests() - q0 });
          }
          if (n === 1 && PATHS.has('podman')) {
            await dropCaches();
            t0 = now(); await pods[0]!.run(regRef, cmd);
            rows.push({ rtt, workload: wname, path: 'podman warm', nodes: 1, seconds: now() - t0, bytes: 0, requests: 0 });
            t0 = now(); await pods[0]!.run(regRef, cmd);
            rows.push({ rtt, workload: wname, path: 'podman hot', nodes: 1, seconds: now() - t0, bytes: 0, requests: 0 });
          }

          // thinfs: n mounts with empty caches (one per simulated node), the container started from the mount. Warm: the
          // daemon restarted once its background work after the cold start is done (settle), page cache dropped.
          const rootfs = (m: Mounted) => join(m.mp, 'images', encodeURIComponent(IMAGE), 'rootfs');
          const ms: Mounted[] = [];
          if (PATHS.has('cold')) {
            for (let i = 0; i < n; i++) {
              const base = join(work, `thinfs-${rtt}-${wname}-${n}-${i}`);
              await mkdir(base, { recursive: true });
              const m = await mountNode(storeUrl, join(base, 'mnt'), { cacheDir: join(base, 'cache') });
              ms.push(m); mounts.push(m);
            }
            b0 = storeProxy.stats().bytesDown; q0 = await nginx.requests(); t0 = now();
            await Promise.all(ms.map((m, i) => pods[i]!.rootfsRun(rootfs(m), cmd)));
            rows.push(await ended('thinfs rootfs cold', n, ms));
            if (n === 1) {
              // warm: daemon restarted on its filled cache, page cache dropped; hot: once more.
              const m0 = ms[0]!;
              console.log(`rootfs cold: ${await settle(m0)} whole-file copies built after the start`);
              await m0.stop();
              const again = await mountNode(storeUrl, m0.mp, { cacheDir: m0.cacheDir });
              mounts.push(again); ms[0] = again;
              await dropCaches();
              b0 = storeProxy.stats().bytesDown; q0 = await nginx.requests(); t0 = now();
              await pods[0]!.rootfsRun(rootfs(again), cmd);
              rows.push(await ended('thinfs rootfs warm', 1, [again]));
              t0 = now(); await pods[0]!.rootfsRun(rootfs(again), cmd);
              rows.push({ rtt, workload: wname, path: 'thinfs rootfs hot', nodes: 1, seconds: now() - t0, bytes: 0, requests: 0 });
              console.log(`rootfs warm + hot: requests reaching the daemon's JS thread: ${jsRequests(await again.stats())}`);
            }
            for (const m of ms) await m.stop();
          }

          // thinfs cold + trace: a first run records what the workload reads (`mount --record`), the trace is attached
          // to the image (`thinfs trace attach`), then n fresh nodes start it with empty caches; detached after.
          if (PATHS.has('trace')) {
            const traceFile = join(work, `trace-${rtt}-${wname}.json`);
            const rec = await mountNode(tracedUrl, join(work, `rec-${rtt}-${wname}-${n}`, 'mnt'), { cacheDir: join(work, `rec-${rtt}-${wname}-${n}`, 'cache'), extra: ['--record', traceFile] });
            mounts.push(rec);
            await pods[0]!.rootfsRun(rootfs(rec), cmd);
            await rec.stop();
            await runOk(process.execPath, [THINFS, 'trace', 'attach', '-s', tstore, IMAGE, traceFile, ...ATTACH_ARGS]);
            const ts: Mounted[] = [];
            for (let i = 0; i < n; i++) {
              const base = join(work, `trace-${rtt}-${wname}-${n}-${i}`);
              await mkdir(base, { recursive: true });
              const m = await mountNode(tracedUrl, join(base, 'mnt'), { cacheDir: join(base, 'cache') });
              ts.push(m); mounts.push(m);
            }
            b0 = storeProxy.stats().bytesDown; q0 = await nginx.requests(); t0 = now();
            const t0Ms = Date.now();
            await Promise.all(ts.map((m, i) => pods[i]!.rootfsRun(rootfs(m), cmd)));
            console.log(`rootfs cold + trace (${wname}, ${rtt} ms, ${n} node(s)): start took ${(now() - t0).toFixed(2)} s; node 1: ${replayTimeline(ts[0]!, t0Ms)}; JS thread: ${jsRequests(await ts[0]!.stats())}`);
            const row: Row = await ended('thinfs rootfs cold + trace', n, ts);
            row.prefetch = await prefetchOf(ts, parseTrace(await readFile(traceFile)).chunks.length);
            rows.push(row);
            for (const m of ts) await m.stop();
            await runOk(process.execPath, [THINFS, 'trace', 'detach', '-s', tstore, IMAGE]);
          }
          for (const p of pods) await p.reset();

          // native: `podman run REF` through each node's generated image store (no registry, no pull), n nodes at once.
          const nodeDir = (tag: string, i: number) => join(work, `${tag}${rtt}${wname[0]}${n}-${i}`); // short: podman's runroot limit
          // n fresh native nodes, each mounted on an empty cache (its mount also kept in `mounts` for the final cleanup).
          const nativeNodes = async (tag: string, url: string): Promise<{ nodes: NativeNode[]; nm: Mounted[] }> => {
            const nodes: NativeNode[] = [];
            const nm: Mounted[] = [];
            for (let i = 0; i < n; i++) {
              const node = await NativeNode.make(nodeDir(tag, i), url);
              const m = await node.mountAt(url);
              nodes.push(node); nm.push(m); mounts.push(m);
            }
            return { nodes, nm };
          };
          if (PATHS.has('native')) {
            const { nodes, nm } = await nativeNodes('n', storeUrl);
            b0 = storeProxy.stats().bytesDown; q0 = await nginx.requests(); t0 = now();
            await Promise.all(nodes.map((node) => node.pod.run(thinRef, cmd)));
            rows.push(await ended('thinfs native cold', n, nm));
            if (n === 1) {
              // warm: daemon restarted on its filled cache, page cache dropped; hot: once more.
              console.log(`native cold: ${await settle(nm[0]!)} whole-file copies built after the start`);
              await nm[0]!.stop();
              const again = await nodes[0]!.mountAt(storeUrl);
              mounts.push(again); nm[0] = again;
              await dropCaches();
              b0 = storeProxy.stats().bytesDown; q0 = await nginx.requests(); t0 = now();
              await nodes[0]!.pod.run(thinRef, cmd);
              rows.push(await ended('thinfs native warm', 1, [again]));
              t0 = now(); await nodes[0]!.pod.run(thinRef, cmd);
              rows.push({ rtt, workload: wname, path: 'thinfs native hot', nodes: 1, seconds: now() - t0, bytes: 0, requests: 0 });
              console.log(`native warm + hot: requests reaching the daemon's JS thread: ${jsRequests(await again.stats())}`);
            }
            for (const m of nm) await m.stop();
            for (const node of nodes) await node.pod.reset();
          }

          // native cold + trace: the workload recorded under podman on a node of its own (`mount --record`: the reads
          // through layers/), attached to the image; n fresh nodes start it, the lookup of the top layer replays it.
          if (PATHS.has('native-trace')) {
            const traceFile = join(work, `ntrace-${rtt}-${wname}.json`);
            const recNode = await NativeNode.make(nodeDir('r', 0), tracedUrl);
            const rec = await recNode.mountAt(tracedUrl, ['--record', traceFile]);
            mounts.push(rec);
            await recNode.pod.run(thinRef, cmd);
            await rec.stop();
            await recNode.pod.reset();
            const traced = parseTrace(await readFile(traceFile)).chunks.length;
            await runOk(process.execPath, [THINFS, 'trace', 'attach', '-s', tstore, IMAGE, traceFile, ...ATTACH_ARGS]);
            const { nodes, nm } = await nativeNodes('t', tracedUrl);
            b0 = storeProxy.stats().bytesDown; q0 = await nginx.requests(); t0 = now();
            const t0Ms = Date.now();
            await Promise.all(nodes.map((node) => node.pod.run(thinRef, cmd)));
            console.log(`native cold + trace (${wname}, ${rtt} ms, ${n} node(s)): start took ${(now() - t0).toFixed(2)} s; node 1: ${replayTimeline(nm[0]!, t0Ms)}; JS thread: ${jsRequests(await nm[0]!.stats())}`);
            const row: Row = await ended('thinfs native cold + trace', n, nm);
            row.prefetch = await prefetchOf(nm, traced);
            rows.push(row);
            for (const m of nm) await m.stop();
            for (const node of nodes) await node.pod.reset();
            await runOk(process.execPath, [THINFS, 'trace', 'detach', '-s', tstore, IMAGE]);
          }
        }
      }
      unshape(); unshape = null;
      await regProxy.close(); await storeProxy.close();
    }
  } finally {
    unshape?.();
    for (const m of mounts) await m.stop().catch(() => {});
    for (const p of proxies) await p.close().catch(() => {});
    nginx?.stop();
    await reg?.stop();
    await rm(work, { recursive: true, force: true }).catch(() => {});
  }
  await report(rows, image.compressedBytes);
}

async function report(rows: Row[], imageBytes: number): Promise<void> {
  const lines = [
    `| RTT | workload | path | nodes | time (s) | vs pull+run | bytes (MB) | % of image | requests | prefetch hits / fetched / waste |`,
    `|---|---|---|---|---|---|---|---|---|---|`,
  ];
  for (const r of rows) {
    const base = rows.find((b) => b.rtt === r.rtt && b.workload === r.workload && b.nodes === r.nodes && b.path === 'podman pull + run');
    const ratio = base && r !== base ? `${(base.seconds / r.seconds).toFixed(1)}x faster` : '';
    lines.push(`| ${r.rtt} ms | ${r.workload} | ${r.path} | ${r.nodes} | ${r.seconds.toFixed(2)} | ${ratio} | ${(r.bytes / 1e6).toFixed(1)} | ${r.bytes ? ((100 * r.bytes) / imageBytes / r.nodes).toFixed(1) + '%' : ''} | ${r.requests || ''} | ${r.prefetch ?? ''} |`);
  }
  const md = (MOUNT_ARGS.length ? `thinfs nodes mounted with \`${MOUNT_ARGS.join(' ')}\`\n\n` : '') + lines.join('\n') + '\n';
  console.log(md);
  await writeFile(join(OUT, 'coldstart.md'), md);
  await plot(rows);
}

/**
 * Before a warm restart: the daemon's background work after the cold start done (whole-file copies of the multi-chunk
 * files the start read, built once readers leave the cache alone for 0.5 s), as on a node whose daemon stays up a
 * moment after its first container. Returns the copies built.
 */
async function settle(m: Mounted): Promise<number> {
  const s = await waitFor(async () => { const x = await m.stats(); return x.cache.assembling === 0 ? x : undefined; }, 30_000, 100, 'whole-file copies built');
  return s!.cache.filesAssembled;
}

/** FUSE requests that reached the daemon's JS thread (count per op, summed time to reply), and what the C transport answered itself. */
function jsRequests(s: MountStats): string {
  const ops = Object.entries(s.ops.requests).filter(([, v]) => v.n > 0).sort((a, b) => b[1].n - a[1].n).map(([k, v]) => `${k} ${v.n} (${(v.totalSec * 1000).toFixed(0)} ms)`);
  return `${ops.join(', ')}; by the transport: lookups ${s.ops.lookupsByTransport}, xattrs ${s.ops.xattrsByTransport}, opens ${s.ops.opensByTransport}`;
}

/** One bar group per (RTT, workload): time of each path with one node. gnuplot renders the PNG. */
async function plot(rows: Row[]): Promise<void> {
  const have = await run('sh', ['-c', 'command -v gnuplot']);
  if (have.code !== 0) { console.log('gnuplot not installed: no chart (bash scripts/setup.sh installs it)'); return; }
  const paths = ['podman pull + run', 'thinfs rootfs cold', 'thinfs rootfs cold + trace', 'thinfs native cold', 'thinfs native cold + trace',
    'podman warm', 'thinfs rootfs warm', 'thinfs native warm', 'podman hot', 'thinfs rootfs hot', 'thinfs native hot'];
  const groups = [...new Set(rows.map((r) => `${r.workload}, ${r.rtt} ms`))];
  const data = join(OUT, 'coldstart.dat');
  await writeFile(data, `group ${paths.map((p) => `"${p}"`).join(' ')}\n`);
  for (const g of groups) {
    const vals = paths.map((p) => rows.find((r) => `${r.workload}, ${r.rtt} ms` === g && r.path === p && r.nodes === 1)?.seconds ?? 0);
    await appendFile(data, `"${g}" ${vals.map((v) => v.toFixed(3)).join(' ')}\n`);
  }
  const script = `set terminal pngcairo size 1000,500
set output '${join(OUT, 'coldstart.png')}'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel 'seconds (1 node)'
set key outside right
set linetype 9 lc rgb '#8c510a'
set linetype 10 lc rgb '#c51b7d'
set linetype 11 lc rgb '#7f7f7f'
set title 'container start, ${MBIT} Mbit/s shared link'
plot for [i=2:${paths.length + 1}] '${data}' using i:xtic(1) title columnhead
`;
  const r = await run('gnuplot', ['-e', script.replace(/\n/g, '; ')]);
  if (r.code !== 0) console.log(`gnuplot failed: ${r.stderr}`);
  else console.log(`chart: ${join(OUT, 'coldstart.png')} (${(await stat(join(OUT, 'coldstart.png'))).size} bytes)`);
}
