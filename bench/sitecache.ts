// Site cache bench (issue 12, acceptance 5): an origin nginx serving the store, a caching proxy in front of it
// (Squid as a forward proxy, the CernVM-FS site cache; THINFS_BENCH_PROXY=nginx for an nginx proxy_cache reverse
// proxy), and 8 mounts with empty, separate caches that cold-read the same file set (every file of a python3
// image) at once through the proxy. Baseline: one node cold-reading the same set straight from the origin.
// Reports origin bytes of the 8 nodes vs the one node (target <= 1.1x) and the proxy's hit ratio.
// Needs root (FUSE mounts), nginx and squid (scripts/setup.sh).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startNginx, startNginxCache, startSquid, type WebServer } from '../test/helpers/web.js';
import { makePythonLayerTars } from '../test/fixtures/python.js';
import { putTestImage } from '../test/helpers/descriptor.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const NODES = Number(process.env.THINFS_BENCH_NODES ?? 8);
const PROXY = process.env.THINFS_BENCH_PROXY ?? 'squid';

function thinfs(args: string[]): Promise<string> {
  return new Promise((res, rej) => {
    const c = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    c.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    c.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    c.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`thinfs ${args.join(' ')}: ${code}\n${err}`))));
  });
}

interface Mount { mp: string; child: ChildProcess; stop(): Promise<void> }

async function mount(store: string, mp: string, cache: string, extra: string[]): Promise<Mount> {
  await mkdir(mp, { recursive: true });
  const ready = `${mp}.ready`;
  const child = spawn(process.execPath, [MAIN, 'mount', store, mp, '--cache-dir', cache, '--ready-file', ready, '--no-passthrough', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => { err += b.toString(); if (err.length > 1e6) err = err.slice(-1e5); });
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`mount exited: ${err.slice(-2000)}`);
    try { await readFile(ready); break; } catch { /* not yet */ }
    if (i > 400) throw new Error('mount not ready after 20 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    mp, child,
    stop: async () => {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await gone;
    },
  };
}

/** Read every file under dir (bytes discarded); returns the byte count. */
async function readAll(dir: string): Promise<number> {
  let n = 0;
  const ents = await readdir(dir, { withFileTypes: true });
  for (const e of ents) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += await readAll(p);
    else if (e.isFile()) n += (await readFile(p)).length;
  }
  return n;
}

/** Sum of the 4th field ($body_bytes_sent) of nginx access log lines from `from` on. */
function originBytes(lines: string[], from: number): number {
  return lines.slice(from).reduce((s, l) => s + (Number(l.split(' ')[3]) || 0), 0);
}

function hitRatio(lines: string[]): { requests: number; hits: number; hitBytes: number; bytes: number } {
  let requests = 0, hits = 0, hitBytes = 0, bytes = 0;
  for (const l of lines) {
    const f = l.trim().split(/\s+/);
    // squid: time elapsed client code/status bytes method url ...; nginx (ours): method uri status bytes cache-status
    const isSquid = PROXY === 'squid';
    const status = isSquid ? f[3] ?? '' : f[4] ?? '';
    const b = Number(isSquid ? f[4] : f[3]) || 0;
    requests++;
    bytes += b;
    if (/HIT/.test(status)) { hits++; hitBytes += b; }
  }
  return { requests, hits, hitBytes, bytes };
}

export async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'thinfs-bench-sitecache-'));
  const servers: WebServer[] = [];
  const mounts: Mount[] = [];
  try {
    const store = join(work, 'store');
    await thinfs(['init', store]);
    const tars = await makePythonLayerTars(work);
    if (!tars) throw new Error('needs python3 on this machine');
    const hexes: string[] = [];
    for (const t of [tars.base, tars.stdlib]) hexes.push(JSON.parse(await thinfs(['ingest', t, '--store', store, '--json', '--no-progress'])).diffId.slice(7));
    await putTestImage(store, 'bench/python:3', hexes);
    const origin = await startNginx(store, join(work, 'origin'));
    servers.push(origin);
    const rootfs = (mp: string) => join(mp, 'images', 'bench%2Fpython%3A3', 'rootfs');

    // Baseline: one node, no proxy.
    let from = (await origin.accessLog()).length;
    const one = await mount(origin.url, join(work, 'mnt-one'), join(work, 'cache-one'), []);
    mounts.push(one);
    const t1 = Date.now();
    const fileBytes = await readAll(rootfs(one.mp));
    const oneMs = Date.now() - t1;
    await one.stop();
    mounts.pop();
    const oneOrigin = originBytes(await origin.accessLog(), from);

    // 8 nodes behind the proxy, separate empty caches, reading at once.
    const proxy = PROXY === 'nginx' ? await startNginxCache(origin.url, join(work, 'proxy')) : await startSquid();
    servers.push(proxy);
    const storeUrl = PROXY === 'nginx' ? proxy.url : origin.url;
    const extra = PROXY === 'nginx' ? [] : ['--proxy', proxy.url];
    from = (await origin.accessLog()).length;
    const proxyFrom = (await proxy.accessLog()).length;
    for (let i = 0; i < NODES; i++) mounts.push(await mount(storeUrl, join(work, `mnt-${i}`), join(work, `cache-${i}`), extra));
    const t8 = Date.now();
    const read = await Promise.all(mounts.map((m) => readAll(rootfs(m.mp))));
    const manyMs = Date.now() - t8;
    for (const m of mounts.splice(0)) await m.stop();
    if (read.some((n) => n !== fileBytes)) throw new Error(`a node read ${read.join(',')} bytes, expected ${fileBytes} each`);
    const manyOrigin = originBytes(await origin.accessLog(), from);
    const h = hitRatio((await proxy.accessLog()).slice(proxyFrom));
    const ratio = manyOrigin / oneOrigin;

    console.log(`file set: ${fileBytes} bytes (every file of a python3 image), proxy: ${PROXY}`);
    console.log(`| run | origin bytes | time |`);
    console.log(`|---|---|---|`);
    console.log(`| 1 node, direct | ${oneOrigin} | ${(oneMs / 1000).toFixed(2)} s |`);
    console.log(`| ${NODES} nodes via proxy | ${manyOrigin} | ${(manyMs / 1000).toFixed(2)} s |`);
    console.log(`origin bytes, ${NODES} nodes / 1 node: ${ratio.toFixed(3)}x (target <= 1.1x) ${ratio <= 1.1 ? 'OK' : 'ABOVE TARGET'}`);
    console.log(`proxy hit ratio: ${(h.hits / Math.max(1, h.requests) * 100).toFixed(1)}% of ${h.requests} requests, ${(h.hitBytes / Math.max(1, h.bytes) * 100).toFixed(1)}% of ${h.bytes} bytes`);
  } finally {
    for (const m of mounts) await m.stop().catch(() => {});
    for (const s of servers) await s.stop().catch(() => {});
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
