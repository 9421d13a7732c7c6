// Ingest throughput vs `tar -x` of the same tarball, measured in the same run on the same disk.
import { mkdtemp, rm, stat, readdir } from 'node:fs/promises';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { WritableStore } from '../src/store/store.js';
import { ingestTar } from '../src/ingest/ingest.js';

const TARGET = Number(process.env.BENCH_LAYER_MB ?? 300) * 1e6;

/** Pick whole top-level directories of this machine's /usr until ~TARGET bytes: real, mixed layer content. */
async function pickSources(): Promise<string[]> {
  const roots = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/python3.11', '/usr/share', '/usr/include', '/usr/bin', '/usr/lib'];
  const picked: string[] = [];
  let total = 0;
  for (const r of roots) {
    let entries: string[];
    try { entries = (await readdir(r)).sort(); } catch { continue; }
    for (const e of entries) {
      const p = join(r, e);
      if (picked.some((q) => p.startsWith(q + '/') || q.startsWith(p + '/') || q === p)) continue;
      const du = spawnSync('du', ['-sb', p], { encoding: 'utf8' });
      const n = Number(du.stdout.split('\t')[0]);
      if (!n || n > TARGET - total + 50e6) continue;
      picked.push(p); total += n;
      if (total >= TARGET) return picked;
    }
  }
  return picked;
}

function timeCmd(cmd: string, args: string[]): number {
  const t = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed`);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'thinfs-bench-ingest-'));
  try {
    const srcs = await pickSources();
    const tarPath = join(dir, 'layer.tar');
    // GNU tar strips the leading '/' (ingest refuses absolute member names).
    const r = spawnSync('tar', ['--numeric-owner', '-cf', tarPath, ...srcs], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0 && r.status !== 1) throw new Error(`tar failed: ${r.stderr}`);
    const size = (await stat(tarPath)).size;
    spawnSync('cat', [tarPath], { stdio: ['ignore', 'ignore', 'ignore'] }); // warm the page cache for both
    console.log(`ingest bench: ${(size / 1e6).toFixed(0)} MB layer from ${srcs.length} directories of this machine`);

    const xdir = join(dir, 'x');
    spawnSync('mkdir', ['-p', xdir]);
    const tx = timeCmd('tar', ['-xf', tarPath, '-C', xdir]);
    const txSync = tx + timeCmd('sync', ['-f', xdir]);
    // The extracted tree stays until the end: removing its files right before the ingest made every object the
    // ingest creates dearer (ext4 without a journal skips inodes deleted within the last minute when allocating).

    const storeDir = join(dir, 'store');
    const store = await WritableStore.init(storeDir);
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const res = await ingestTar(tarPath, store, { source: 'bench' });
    const ti = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const cpuSec = (cpu.user + cpu.system) / 1e6;
    const t1 = process.hrtime.bigint();
    const again = await ingestTar(tarPath, store, { source: 'bench-again' });
    const tr = Number(process.hrtime.bigint() - t1) / 1e9;

    const mb = size / 1e6;
    const rows = [
      ['tar -x (baseline)', tx, mb / tx],
      ['tar -x + sync', txSync, mb / txSync],
      ['thinfs ingest (new store)', ti, mb / ti],
      ['thinfs re-ingest (all dedup)', tr, mb / tr],
    ] as const;
    for (const [name, s, rate] of rows) console.log(`  ${name.padEnd(30)} ${s.toFixed(2).padStart(7)} s ${rate.toFixed(1).padStart(8)} MB/s`);
    console.log(`  ingest CPU: ${cpuSec.toFixed(2)} s -> ${(mb / cpuSec).toFixed(1)} MB/s per core-second (this process's threads; the decoder child is not counted)`);
    console.log(`  load average: ${loadavg().map((x) => x.toFixed(1)).join(' ')} (2 cores)`);
    console.log(`  ratio ingest/tar-x: ${(tx / ti).toFixed(2)}x   ratio ingest/(tar-x+sync): ${(txSync / ti).toFixed(2)}x`);
    console.log(`  stored ${(res.stats.newBytes / 1e6).toFixed(1)} MB in ${res.stats.newObjects} objects (${((res.stats.newBytes / size) * 100).toFixed(1)}% of the tar); re-ingest wrote ${again.stats.newObjects} objects`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
