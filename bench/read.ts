// Read benchmark (issue 3, acceptance 7), all in one run on the same data: the native extracted tree, thinfs hot
// (page cache), warm (node-local cache, page cache dropped, daemon restarted so its memory cache is empty) and cold
// (empty cache), warm and hot again with --no-passthrough (every read served by thinfs), and squashfuse on a
// mksquashfs image of the same tree. Three workloads: sequential read of a large
// file (MB/s), `find -printf '%s %m'` over the tree (median of FIND_RUNS, each paired with a scan of the native tree),
// and reading every file. Prints a table with ratios.
// Needs root (drop_caches, mounts), squashfs-tools and squashfuse. THINFS_BENCH_BIG_MB sets the large file (512).
// THINFS_BENCH_ROWS=cold runs the native and thinfs cold rows only (faster; the default runs every row).
// Run alone: `node dist/bench/read.js` (numbers from a machine busy with other work are not comparable).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pseudoRandom } from '../test/helpers/layers.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const BIG_MB = Number(process.env.THINFS_BENCH_BIG_MB ?? 512);
/** The metadata scan takes ~50 ms, where this machine's noise is ~10 ms: its median over this many runs is reported. */
const FIND_RUNS = Number(process.env.THINFS_BENCH_FIND_RUNS ?? 5);
const COLD_ONLY = process.env.THINFS_BENCH_ROWS === 'cold';

function sh(cmd: string, args: string[], opts: { quiet?: boolean } = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    c.stdout.on('data', (b: Buffer) => { if (!opts.quiet) out += b.toString(); });
    c.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    c.on('error', rej);
    c.on('close', (code) => res({ code, out, err }));
  });
}
async function ok(cmd: string, args: string[], quiet = false): Promise<string> {
  const r = await sh(cmd, args, { quiet });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} -> ${r.code}: ${r.err}`);
  return r.out;
}

async function dropCaches(): Promise<void> {
  await ok('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3');
}

/** Wall time of a shell pipeline, in seconds. */
async function timed(script: string): Promise<number> {
  const t0 = performance.now();
  await ok('bash', ['-c', script], true);
  return (performance.now() - t0) / 1000;
}

/** findX: the median of paired ratios (each scan timed right after one of the native tree in the same state). */
interface Row { seqMBs: number; findS: number; findX?: number; readAllS: number }

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
const findCmd = (dir: string) => `find ${JSON.stringify(dir)} -printf '%s %m\\n' > /dev/null`;

/**
 * The three workloads on dir, each after before(). With pair (the native tree and how to put it in the same state),
 * every metadata scan is preceded by one of the native tree: this VM's speed drifts over minutes, so the ratio of
 * neighbouring runs is steadier than the ratio of rows measured minutes apart.
 */
async function measure(dir: string, bigRel: string, bigBytes: number, before: () => Promise<void>,
  pair?: { dir: string; before: () => Promise<void> }): Promise<Row> {
  await before();
  const seq = await timed(`dd if=${JSON.stringify(join(dir, bigRel))} of=/dev/null bs=1M status=none`);
  const finds: number[] = [], ratios: number[] = [];
  for (let i = 0; i < FIND_RUNS; i++) {
    let base = 0;
    if (pair) { await pair.before(); base = await timed(findCmd(pair.dir)); }
    await before();
    const t = await timed(findCmd(dir));
    finds.push(t);
    if (pair) ratios.push(t / base);
  }
  const findS = median(finds);
  await before();
  // cat through a pipe into wc: GNU tar and cat > /dev/null may skip reading entirely.
  const readAllS = await timed(`cd ${JSON.stringify(dir)} && find . -type f -print0 | xargs -0 -n 200 cat | wc -c > /dev/null`);
  return { seqMBs: bigBytes / 1e6 / seq, findS, findX: pair ? median(ratios) : undefined, readAllS };
}

class Mount {
  child: ChildProcess | null = null;
  private metricsPort = 0;
  constructor(readonly store: string, readonly mp: string, readonly cacheDir: string, readonly extra: string[] = []) {}
  async start(): Promise<void> {
    const ready = `${this.mp}.ready`;
    await rm(ready, { force: true });
    this.child = spawn(process.execPath, [MAIN, 'mount', this.store, this.mp, '--cache-dir', this.cacheDir, '--ready-file', ready,
      '--cache-quota', '20G', '--metrics-port', '0', ...this.extra], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, THINFS_LOG_LEVEL: 'warn' } });
    for (let i = 0; i < 400 && !existsSync(ready); i++) await new Promise((r) => setTimeout(r, 25));
    if (!existsSync(ready)) throw new Error('mount did not become ready');
    const { readFile } = await import('node:fs/promises');
    this.metricsPort = (JSON.parse(await readFile(ready, 'utf8')) as { metricsPort: number }).metricsPort;
  }
  /** The daemon's stats now (its HTTP endpoint: the stats file is rewritten once a second, so it may lag). */
  async statsJson(): Promise<{ cache?: { assembling?: number } }> {
    return (await (await fetch(`http://127.0.0.1:${this.metricsPort}/stats`)).json()) as { cache?: { assembling?: number } };
  }

  async stop(): Promise<void> {
    if (!this.child) return;
    const exited = new Promise((r) => this.child!.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
    this.child = null;
  }
}

export async function main(): Promise<void> {
  if (process.getuid?.() !== 0) { console.log('read bench: needs root (drop_caches, mounts); skipped'); return; }
  const work = await mkdtemp(join(tmpdir(), 'thinfs-bench-read-'));
  const mounts: Mount[] = [];
  let sqMounted = '';
  try {
    // The tree: the python stdlib of this machine (many small files) plus one large incompressible file.
    const py = (await readdir('/usr/lib')).filter((n) => /^python3\.\d+$/.test(n)).sort().pop();
    const src = join(work, 'src');
    await mkdir(join(src, 'big'), { recursive: true });
    if (py) await ok('cp', ['-a', join('/usr/lib', py), join(src, 'pylib')]);
    const bigRel = 'big/large.bin';
    const bigBytes = BIG_MB * 1024 * 1024;
    const fh = await import('node:fs/promises').then((m) => m.open(join(src, bigRel), 'w'));
    for (let off = 0; off < bigBytes; off += 64 << 20) await fh.write(pseudoRandom(Math.min(64 << 20, bigBytes - off), `big${off}`));
    await fh.close();
    const tar = join(work, 'tree.tar');
    await ok('tar', ['-cf', tar, '--numeric-owner', '--sort=name', '-C', src, '.']);
    const native = join(work, 'native');
    await mkdir(native);
    await ok('tar', ['-xpf', tar, '--numeric-owner', '-C', native]);
    await rm(src, { recursive: true });
    const store = join(work, 'store');
    await ok(process.execPath, [MAIN, 'ingest', tar, '--store', store, '--init', '--no-progress']);
    const hex = (await readdir(join(store, 'layers'))).find((n) => n.endsWith('.json'))!.slice(0, -5);
    const sqImg = join(work, 'tree.sqfs');
    await ok('mksquashfs', [native, sqImg, '-noappend', '-comp', 'zstd', '-quiet', '-no-progress'], true);
    await rm(tar);
    const fileCount = (await ok('bash', ['-c', `find ${native} -type f | wc -l`])).trim();
    console.log(`data: python stdlib (${fileCount} files incl. one ${BIG_MB} MiB incompressible file), store ${store}`);

    const results: Array<[string, Row]> = [];
    const noop = async () => {};
    results.push(['native, page cache dropped', await measure(native, bigRel, bigBytes, dropCaches)]);
    results.push(['native, hot', await measure(native, bigRel, bigBytes, noop)]);

    const mp = join(work, 'mnt');
    await mkdir(mp);
    const layerDir = join(mp, 'layers', hex);
    // cold: empty node-local cache and a fresh daemon before each workload
    const coldRow: Row = { seqMBs: 0, findS: 0, readAllS: 0 };
    let coldIdx = 0;
    const cold = async () => {
      for (const m of mounts.splice(0)) await m.stop();
      const cacheDir = join(work, `cache-cold-${coldIdx++}`);
      const m = new Mount(store, mp, cacheDir);
      await m.start();
      mounts.push(m);
      await dropCaches();
    };
    // Pairs for the metadata scan: the native tree with its page cache dropped, or hot (one scan first).
    const nativeCold = { dir: native, before: dropCaches };
    const nativeHot = { dir: native, before: async () => { await timed(findCmd(native)); } };
    Object.assign(coldRow, await measure(layerDir, bigRel, bigBytes, cold, nativeCold));
    results.push(['thinfs cold (empty cache)', coldRow]);

    if (COLD_ONLY) {
      for (const [name, r] of results) console.log(`${name.padEnd(34)}seq ${r.seqMBs.toFixed(0)} MB/s, find ${r.findS.toFixed(3)} s (x${(r.findX ?? 1).toFixed(2)}), read-all ${r.readAllS.toFixed(3)} s`);
      return;
    }
    // warm: everything in the node-local cache; daemon restarted (memory cache empty) and page cache dropped.
    // hot: the same mount again, everything in the kernel page cache. Both with FUSE passthrough (the default) and
    // without it (every read served by thinfs), on the same warm cache.
    const warmCache = join(work, 'cache-warm');
    for (const m of mounts.splice(0)) await m.stop();
    const filler = new Mount(store, mp, warmCache);
    await filler.start();
    await ok('bash', ['-c', `cd ${layerDir} && find . -type f -print0 | xargs -0 cat | wc -c`], true);
    // The local cache is warm when what a full read leaves there is done: the whole-file copies (passthrough).
    for (let i = 0; i < 600 && (await filler.statsJson()).cache?.assembling; i++) await new Promise((r) => setTimeout(r, 100));
    await filler.stop();
    for (const [label, extra] of [['', []], [', no passthrough', ['--no-passthrough']]] as Array<[string, string[]]>) {
      const warm = async () => {
        for (const m of mounts.splice(0)) await m.stop();
        const m = new Mount(store, mp, warmCache, extra);
        await m.start();
        mounts.push(m);
        await dropCaches();
      };
      results.push([`thinfs warm${label}`, await measure(layerDir, bigRel, bigBytes, warm, nativeCold)]);
      await ok('bash', ['-c', `cd ${layerDir} && find . -type f -print0 | xargs -0 cat | wc -c`], true);
      results.push([`thinfs hot${label}`, await measure(layerDir, bigRel, bigBytes, noop, nativeHot)]);
      for (const m of mounts.splice(0)) await m.stop();
    }

    const sqMp = join(work, 'sq');
    await mkdir(sqMp);
    const sqRemount = async () => {
      if (sqMounted) await sh('fusermount', ['-u', sqMp]);
      await dropCaches();
      await ok('squashfuse', [sqImg, sqMp]);
      sqMounted = sqMp;
    };
    results.push(['squashfuse (page cache dropped)', await measure(sqMp, bigRel, bigBytes, sqRemount, nativeCold)]);
    results.push(['squashfuse, hot', await measure(sqMp, bigRel, bigBytes, noop, nativeHot)]);
    await sh('fusermount', ['-u', sqMp]);
    sqMounted = '';

    const base = (name: string) => results.find(([n]) => n === name)![1];
    const nCold = base('native, page cache dropped'), nHot = base('native, hot');
    const pad = (s: string, n: number) => s.padEnd(n);
    const num = (x: number, d = 2) => x.toFixed(d);
    console.log('');
    console.log(`${pad('mode', 34)}${pad('seq MB/s', 11)}${pad('x native', 10)}${pad('find s', 9)}${pad('x native', 10)}${pad('read-all s', 12)}x native`);
    for (const [name, r] of results) {
      // Ratios against native in the same page-cache state: hot rows vs native hot, the rest vs native cold.
      const b = name.includes('hot') ? nHot : nCold;
      console.log(`${pad(name, 34)}${pad(num(r.seqMBs, 0), 11)}${pad(num(r.seqMBs / b.seqMBs), 10)}${pad(num(r.findS, 3), 9)}${pad(num(r.findX ?? r.findS / b.findS), 10)}${pad(num(r.readAllS, 3), 12)}${num(r.readAllS / b.readAllS)}`);
    }
    const warmR = base('thinfs warm'), hotR = base('thinfs hot'), sqR = base('squashfuse (page cache dropped)');
    console.log(`(find: median of ${FIND_RUNS} runs, each from its row's starting state and each right after a scan of the native tree ` +
      'in the same state; its "x native" is the median of those paired ratios. The other columns: one run.)');
    console.log('');
    console.log(`targets: hot seq >= 0.9x native hot: ${num(hotR.seqMBs / nHot.seqMBs)}x; warm seq >= 300 MB/s: ${num(warmR.seqMBs, 0)} MB/s; ` +
      `warm seq vs squashfuse: ${num(warmR.seqMBs / sqR.seqMBs)}x; metadata scan <= 1.5x native: warm ${num(warmR.findX!)}x, hot ${num(hotR.findX!)}x`);
  } finally {
    for (const m of mounts) await m.stop().catch(() => {});
    if (sqMounted) await sh('fusermount', ['-uz', sqMounted]);
    await sh('fusermount', ['-uz', join(work, 'mnt')]);
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => { console.error(e); process.exit(1); });
}
