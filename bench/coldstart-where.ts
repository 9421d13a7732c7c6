// Where a traced cold start's bytes and time go (`npm run bench -- coldstart-where`): the python workload of
// bench/coldstart.ts on the realistic image, one node, over the same emulated link. A recording run, then a cold run
// with the trace attached, both with the daemon's per-read debug log; then a warm run (daemon restarted, page cache
// dropped) for the part of the time that is the container's own start. It prints:
// - bytes fetched by kind (catalogs, trace object, manifests and descriptors, chunks), and per file: compressed bytes
//   fetched, chunks fetched, bytes the process read through FUSE (its page-ins, readahead included) and bytes read
//   straight from a passed-through local file;
// - the cold run's timeline from podman's start: each store request (start, end, kind) and the daemon's events
//   (first read, catalogs loaded, trace replayed), the number of request rounds (the longest chain of requests that
//   each began after the one before it ended) and the time the link was busy.
// Env: BENCH_RTT (ms, default 20), BENCH_MBIT (default 100), BENCH_PREFETCH_PARALLEL (the cold mount's
// --prefetch-parallel), BENCH_WHERE_OUT (write the raw JSON there), BENCH_JOINT=1 (also: what compressing the traced
// chunks jointly would save, zstd 19 over runs of them in first-read order, against each chunk on its own).
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { createRequire } from 'node:module';
import { realisticImage } from './lib/realistic-image.js';
import { shapeLoopback, startDelayProxy, type DelayProxy } from './lib/netem.js';
import { mountStore, type Mounted } from '../test/fuse-mount-helper.js';
import { runOk } from '../test/helpers/proc.js';
import { Store } from '../src/store/store.js';
import { Podman, WORKLOADS, dropCaches, startNginx } from './coldstart.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const D2T = join(ROOT, 'dist', 'tools', 'docker2thin.js');
const THINFS = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const RTT = Number(process.env.BENCH_RTT ?? 20);
const MBIT = Number(process.env.BENCH_MBIT ?? 100);
const IMAGE = 'python';

interface Req { at: number; sec: number; bytes: number; uri: string }

const zstd = createRequire(import.meta.url)('zstd-napi') as { compress(b: Uint8Array, p?: Record<string, number>): Buffer };

/**
 * Bytes of the traced chunks compressed at zstd 19 one by one (what `trace attach` stores), and jointly: runs of
 * consecutive chunks (first-read order) of at most `cap` decoded bytes each, one zstd stream per run (Infinity: one).
 */
async function jointSizes(store: Store, chunks: Array<[string, string, number]>): Promise<string[]> {
  const data: Buffer[] = [];
  for (const [, hash] of chunks) data.push(await store.getObject(hash));
  const z = (b: Buffer) => zstd.compress(b, { compressionLevel: 19 }).length;
  const single = data.reduce((a, b) => a + z(b), 0);
  const out = [`| traced chunks, zstd 19 | objects | KB | vs one by one |`, `|---|---|---|---|`, `| one by one | ${data.length} | ${(single / 1e3).toFixed(0)} | |`];
  for (const cap of [1 << 20, 4 << 20, 8 << 20, Infinity]) {
    let total = 0, n = 0, run: Buffer[] = [], runBytes = 0;
    const flush = () => { if (run.length) { total += z(Buffer.concat(run)); n++; run = []; runBytes = 0; } };
    for (const b of data) { if (runBytes && runBytes + b.length > cap) flush(); run.push(b); runBytes += b.length; }
    flush();
    out.push(`| jointly, runs of <= ${cap === Infinity ? 'all' : `${cap >> 20} MiB`} | ${n} | ${(total / 1e3).toFixed(0)} | ${(100 * (total - single) / single).toFixed(1)}% |`);
  }
  return out;
}
interface FileInfo { layer: string; ino: number; path: string; size: number; chunks: Array<{ offset: number; size: number; hash: string }> }

function now(): number { return Date.now() / 1000; }

async function nginxLog(file: string, from: number): Promise<Req[]> {
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean).slice(from);
  return lines.map((l) => {
    const [msec, rt, , bytes, uri] = l.split(' ');
    const sec = Number(rt);
    return { at: Number(msec) - sec, sec, bytes: Number(bytes), uri: uri! };
  });
}

/** Every file of every layer of the image, with its chunk map (hash -> files too). */
async function catalogs(store: Store, layers: string[], dir: string): Promise<{ byIno: Map<string, FileInfo>; byHash: Map<string, FileInfo[]>; catalogHashes: Set<string> }> {
  const byIno = new Map<string, FileInfo>();
  const byHash = new Map<string, FileInfo[]>();
  const catalogHashes = new Set<string>();
  for (const diff of layers) {
    const m = (await store.getLayer(diff))!;
    catalogHashes.add(m.catalog);
    const file = join(dir, `cat-${m.catalog}.db`);
    await writeFile(file, await store.getObject(m.catalog));
    const db = new Database(file, { readonly: true });
    const paths = new Map<number, string>([[1, '']]);
    const rows = db.prepare('SELECT d.parent, d.name, d.ino, i.type, i.size FROM dirents d JOIN inodes i ON i.ino = d.ino ORDER BY d.seq').all() as Array<{ parent: number; name: Buffer; ino: number; type: string; size: number }>;
    for (const r of rows) {
      const p = `${paths.get(r.parent) ?? '?'}/${r.name.toString('latin1')}`;
      if (r.type === 'dir') paths.set(r.ino, p);
      const hex = diff.replace(/^sha256:/, '');
      if (r.type !== 'file' || byIno.has(`${hex}:${r.ino}`)) continue;
      const chunks = (db.prepare('SELECT offset, size, hash FROM chunks WHERE ino = ? ORDER BY idx').all(r.ino) as Array<{ offset: number; size: number; hash: Buffer }>)
        .map((c) => ({ offset: c.offset, size: c.size, hash: c.hash.toString('hex') }));
      const f: FileInfo = { layer: hex, ino: r.ino, path: p, size: r.size, chunks };
      byIno.set(`${hex}:${r.ino}`, f);
      for (const c of chunks) { const l = byHash.get(c.hash) ?? []; l.push(f); byHash.set(c.hash, l); }
    }
    db.close();
  }
  return { byIno, byHash, catalogHashes };
}

interface DebugEv { time: number; ev?: string; msg: string; layer?: string; ino?: number; off?: number; len?: number; ms?: number; passthrough?: boolean }

function events(stderr: string): DebugEv[] {
  const out: DebugEv[] = [];
  for (const l of stderr.split('\n')) { try { const j = JSON.parse(l) as DebugEv; if (j && typeof j.time === 'number') out.push(j); } catch { /* not a log line */ } }
  return out;
}

/** Bytes covered by a set of [off, off+len) ranges. */
function covered(ranges: Array<[number, number]>): number {
  ranges.sort((a, b) => a[0] - b[0]);
  let total = 0, end = -1;
  for (const [s, e] of ranges) { if (e <= end) continue; total += e - Math.max(s, end); end = e; }
  return total;
}

export async function main(): Promise<void> {
  const image = await realisticImage();
  const work = join(tmpdir(), `tcw-${process.pid}`);
  await mkdir(work, { recursive: true });
  const mounts: Mounted[] = [];
  let nginx: Awaited<ReturnType<typeof startNginx>> | null = null;
  let proxy: DelayProxy | null = null;
  let unshape: (() => void) | null = null;
  const pod = new Podman(join(work, 'pod'));
  const cmd = WORKLOADS.python!;
  try {
    const storeDir = join(work, 'store');
    await runOk(process.execPath, [THINFS, 'init', storeDir]);
    await runOk(process.execPath, [D2T, '--no-progress', '--store', storeDir, '--name', IMAGE, image.ociRef], { timeoutMs: 900_000 });
    const store = await Store.open(storeDir);
    const desc = (await store.getImage(IMAGE))!;
    const cats = await catalogs(store, desc.layers.map((l) => l.diffId), work);
    nginx = await startNginx(work, storeDir);
    proxy = await startDelayProxy(nginx.port, RTT);
    unshape = shapeLoopback([proxy.port], MBIT);
    const url = `http://127.0.0.1:${proxy.port}`;
    const env = { THINFS_LOG_LEVEL: 'debug' };
    const rootfs = (m: Mounted) => join(m.mp, 'images', IMAGE, 'rootfs');
    const mount = async (name: string, extra: string[] = [], cacheDir?: string) => {
      const base = join(work, name);
      await mkdir(base, { recursive: true });
      const old = process.env.THINFS_LOG_LEVEL;
      process.env.THINFS_LOG_LEVEL = env.THINFS_LOG_LEVEL;
      try {
        const m = await mountStore(url, join(base, 'mnt'), { cacheDir: cacheDir ?? join(base, 'cache'), extra });
        mounts.push(m);
        return m;
      } finally { if (old === undefined) delete process.env.THINFS_LOG_LEVEL; else process.env.THINFS_LOG_LEVEL = old; }
    };

    // 1. recording run (cold, no trace)
    const traceFile = join(work, 'trace.json');
    const rec = await mount('rec', ['--record', traceFile]);
    let q0 = (await nginxLog(nginx.log, 0)).length;
    let t0 = now();
    await pod.rootfsRun(rootfs(rec), cmd);
    const tRec = now() - t0;
    await rec.stop();
    const recReqs = await nginxLog(nginx.log, q0);
    await runOk(process.execPath, [THINFS, 'trace', 'attach', '-s', storeDir, IMAGE, traceFile, ...(process.env.BENCH_PAGES === '0' ? [] : ['--pages'])]);
    const descT = (await store.getImage(IMAGE))!;
    const traceHash = (descT.trace as { sha256: string }).sha256;
    const traced = JSON.parse(await readFile(traceFile, 'utf8')) as { chunks: Array<[string, string, number]> };

    // 2. cold run with the trace
    const par = process.env.BENCH_PREFETCH_PARALLEL;
    const cold = await mount('cold', par ? ['--prefetch-parallel', par] : []);
    q0 = (await nginxLog(nginx.log, 0)).length;
    const tColdStart = now();
    await pod.rootfsRun(rootfs(cold), cmd);
    const tCold = now() - tColdStart;
    const coldStats = await cold.stats();
    const reqStats = Object.entries(coldStats.ops.requests).map(([k, v]) => `${k} ${v.n} (${v.totalSec.toFixed(2)} s, slowest ${(v.maxSec * 1e3).toFixed(0)} ms)`).join(', ');
    // Let prefetch finish what it started (bytes it fetched after the process ended still count).
    await new Promise((r) => setTimeout(r, 1500));
    const coldErr = cold.stderr();
    await cold.stop();
    const reqs = await nginxLog(nginx.log, q0);

    // 3. warm: same cache, daemon restarted, page cache dropped
    const warm = await mount('warm', [], cold.cacheDir);
    await dropCaches();
    t0 = now();
    await pod.rootfsRun(rootfs(warm), cmd);
    const tWarm = now() - t0;
    t0 = now();
    await pod.rootfsRun(rootfs(warm), cmd);
    const tHot = now() - t0;
    await warm.stop();

    // ---- bytes ----
    const kindOf = (uri: string): string => {
      const m = /\/data\/([0-9a-f]{2})\/([0-9a-f]{62})$/.exec(uri);
      if (!m) return uri.includes('/layers/') ? 'layer manifests' : uri.includes('/images/') ? 'image descriptors' : 'store metadata';
      const h = m[1]! + m[2]!;
      if (cats.catalogHashes.has(h)) return 'catalogs';
      if (h === traceHash) return 'trace object';
      return 'chunks';
    };
    const hashOf = (uri: string) => { const m = /\/data\/([0-9a-f]{2})\/([0-9a-f]{62})$/.exec(uri); return m ? m[1]! + m[2]! : null; };
    const lines: string[] = [];
    const total = reqs.reduce((a, r) => a + r.bytes, 0);
    lines.push(`image ${(image.compressedBytes / 1e6).toFixed(1)} MB compressed; RTT ${RTT} ms, ${MBIT} Mbit/s`);
    lines.push(`times: record run ${tRec.toFixed(2)} s, cold + trace ${tCold.toFixed(2)} s, warm ${tWarm.toFixed(2)} s, hot ${tHot.toFixed(2)} s`);
    lines.push(`cold + trace: ${reqs.length} requests, ${(total / 1e6).toFixed(2)} MB (${((100 * total) / image.compressedBytes).toFixed(1)}% of the image); trace: ${traced.chunks.length} chunks, ${(traced.chunks.reduce((a, c) => a + c[2], 0) / 1e6).toFixed(2)} MB decoded`);
    lines.push(`recording run: ${recReqs.length} requests, ${(recReqs.reduce((a, r) => a + r.bytes, 0) / 1e6).toFixed(2)} MB`);
    const byKind = new Map<string, { n: number; bytes: number }>();
    for (const r of reqs) { const k = kindOf(r.uri); const e = byKind.get(k) ?? { n: 0, bytes: 0 }; e.n++; e.bytes += r.bytes; byKind.set(k, e); }
    lines.push('', '| kind | requests | KB |', '|---|---|---|');
    for (const [k, e] of byKind) lines.push(`| ${k} | ${e.n} | ${(e.bytes / 1e3).toFixed(0)} |`);

    // Per file: chunks fetched (compressed bytes), bytes read through FUSE, passthrough opens.
    const evs = events(coldErr);
    const readBy = new Map<string, Array<[number, number]>>();
    const ptOpen = new Set<string>();
    for (const e of evs) {
      if (e.ev === 'read' && e.layer) { const k = `${e.layer}:${e.ino}`; const l = readBy.get(k) ?? []; l.push([e.off!, e.off! + e.len!]); readBy.set(k, l); }
      if (e.ev === 'open' && e.passthrough) ptOpen.add(`${e.layer}:${e.ino}`);
    }
    const perFile = new Map<string, { f: FileInfo; fetched: number; chunks: number; decoded: number }>();
    for (const r of reqs) {
      const h = hashOf(r.uri);
      const fs = h ? cats.byHash.get(h) : undefined;
      if (!fs) continue;
      const f = fs[0]!;
      const k = `${f.layer}:${f.ino}`;
      const e = perFile.get(k) ?? { f, fetched: 0, chunks: 0, decoded: 0 };
      e.fetched += r.bytes; e.chunks++; e.decoded += f.chunks.find((c) => c.hash === h)!.size;
      perFile.set(k, e);
    }
    const rowsF = [...perFile.entries()].sort((a, b) => b[1].fetched - a[1].fetched);
    lines.push('', '| file | size KB | chunks (fetched/all) | fetched KB (compressed) | decoded KB | read via FUSE KB | passthrough |', '|---|---|---|---|---|---|---|');
    let small = { n: 0, fetched: 0, read: 0 };
    for (const [k, e] of rowsF) {
      const read = covered(readBy.get(k) ?? []);
      if (e.fetched < 100e3) { small.n++; small.fetched += e.fetched; small.read += read; continue; }
      lines.push(`| ${e.f.path} | ${(e.f.size / 1e3).toFixed(0)} | ${e.chunks}/${e.f.chunks.length} | ${(e.fetched / 1e3).toFixed(0)} | ${(e.decoded / 1e3).toFixed(0)} | ${(read / 1e3).toFixed(0)} | ${ptOpen.has(k) ? 'yes' : ''} |`);
    }
    lines.push(`| ${small.n} files under 100 KB fetched | | | ${(small.fetched / 1e3).toFixed(0)} | | ${(small.read / 1e3).toFixed(0)} | |`);

    // ---- time (from podman's start; the daemon's clock is this machine's) ----
    const at = (ms: number) => (ms / 1000 - tColdStart).toFixed(3);
    lines.push('', `cold + trace timeline (s from podman's start; the run took ${tCold.toFixed(2)} s):`);
    const fetches = evs.filter((e) => e.ev === 'fetch') as Array<DebugEv & { t0: number; what: string; bytes: number; object: string }>;
    const readsEv = evs.filter((e) => e.ev === 'read');
    const mark = (what: string, ms: number | undefined) => { if (ms !== undefined && Number.isFinite(ms)) lines.push(`- ${at(ms)} ${what}`); };
    const firstReq = reqs.length ? Math.min(...reqs.map((r) => r.at)) * 1000 : undefined;
    mark('first store request reaches nginx', firstReq);
    for (const e of evs) if (/catalog loaded|replaying prefetch trace|prefetch trace replayed/.test(e.msg)) mark(e.msg, e.time);
    const cat = fetches.filter((f) => f.what === 'catalog');
    const ch = fetches.filter((f) => f.what !== 'catalog');
    mark('catalog fetches: first starts', Math.min(...cat.map((f) => f.t0)));
    mark('catalog fetches: last ends', Math.max(...cat.map((f) => f.t0 + f.ms!)));
    mark('chunk fetches: first starts', Math.min(...ch.map((f) => f.t0)));
    mark('chunk fetches: last ends', Math.max(...ch.map((f) => f.t0 + f.ms!)));
    mark('first read (FUSE)', readsEv[0]?.time);
    mark('last read (FUSE)', readsEv.at(-1)?.time);
    // Rounds: the longest chain of fetches each starting after the one before it ended.
    const byEnd = [...fetches].sort((x, y) => x.t0 + x.ms! - (y.t0 + y.ms!));
    const depth = new Map<object, number>();
    let rounds = 0;
    for (const f of [...fetches].sort((x, y) => x.t0 - y.t0)) {
      let d = 1;
      for (const p of byEnd) { if (p.t0 + p.ms! > f.t0) break; d = Math.max(d, (depth.get(p) ?? 1) + 1); }
      depth.set(f, d); rounds = Math.max(rounds, d);
    }
    const waits = readsEv.filter((e) => (e.ms ?? 0) > 5);
    lines.push(`- fetches: ${fetches.length}; longest chain of serial fetches: ${rounds}; link busy at ${MBIT} Mbit/s for ${((total * 8) / (MBIT * 1e6)).toFixed(2)} s`);
    lines.push(`- reads through FUSE: ${readsEv.length}, ${waits.length} waited > 5 ms (${(waits.reduce((x, e) => x + e.ms!, 0) / 1e3).toFixed(2)} s in all); opens passed through: ${ptOpen.size}`);
    lines.push(`- FUSE requests: ${reqStats}`);
    lines.push(`- prefetch: ${JSON.stringify((coldStats as unknown as { prefetch?: unknown }).prefetch ?? null)}`);
    if (process.env.BENCH_JOINT === '1') lines.push('', ...(await jointSizes(store, traced.chunks)));
    const md = lines.join('\n');
    console.log(md);
    if (process.env.BENCH_WHERE_OUT) await writeFile(process.env.BENCH_WHERE_OUT, JSON.stringify({ reqs, evs, traced, tCold, tWarm, tHot, tRec }, null, 1));
  } finally {
    unshape?.();
    for (const m of mounts) await m.stop().catch(() => {});
    await proxy?.close().catch(() => {});
    nginx?.stop();
    await pod.reset().catch(() => {});
    await rm(work, { recursive: true, force: true }).catch(() => {});
  }
}
