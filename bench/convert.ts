// docker2thin conversion time vs `skopeo copy` of the same image to a local OCI layout, same run, same
// registry (Debian's docker-registry on loopback). The image is the realistic one of bench/lib/realistic-image.ts
// (debootstrap minbase bookworm + a python3 layer, gzip; built once and cached outside the checkout).
// skopeo fetches and verifies the blobs and writes them as files; docker2thin fetches, verifies, decompresses,
// chunks, hashes, compresses and indexes every file into a store. Also: re-conversion of a converted image
// (every layer present: the goal is < 1 s), and the core ingest of the same blobs from local files, alone and
// two at once, to show what the conversion pipeline adds or hides around it.
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { realisticImageInRegistry, IMAGE_TAG } from './lib/realistic-image.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const D2T = join(ROOT, 'dist', 'tools', 'docker2thin.js');
const THINFS = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

let seq = 0;

/** Wall time and CPU time (user + sys, from GNU time: load on a shared machine inflates wall time, not CPU). */
function timed(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ s: number; cpu: number; out: string }> {
  const cpuFile = join(tmpdir(), `thinfs-bench-cpu-${process.pid}-${++seq}`);
  return new Promise((res, rej) => {
    const t = process.hrtime.bigint();
    const c = spawn('/usr/bin/time', ['-f', '%U %S', '-o', cpuFile, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, THINFS_NO_PROGRESS: '1', THINFS_LOG_LEVEL: 'warn', ...env } });
    let out = '', err = '';
    c.stdout.on('data', (b) => { out += b; });
    c.stderr.on('data', (b) => { err += b; });
    c.on('close', (code) => {
      const s = Number(process.hrtime.bigint() - t) / 1e9;
      if (code !== 0) { rej(new Error(`${cmd} ${args.join(' ')} exited ${code}\n${err}`)); return; }
      readFile(cpuFile, 'utf8').then((text) => {
        const [u, sy] = text.trim().split('\n').pop()!.split(' ').map(Number);
        void rm(cpuFile, { force: true });
        res({ s, cpu: (u ?? 0) + (sy ?? 0), out });
      }, rej);
    });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

interface Run { s: number; cpu: number }
const fmt = (xs: Run[]) => `${median(xs.map((x) => x.s)).toFixed(2).padStart(6)} s  cpu ${median(xs.map((x) => x.cpu)).toFixed(2).padStart(6)} s  (wall: ${xs.map((x) => x.s.toFixed(2)).join(', ')})`;
const wall = (xs: Run[]) => median(xs.map((x) => x.s));

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'thinfs-bench-convert-'));
  const img = await realisticImageInRegistry(dir);
  try {
    const index = JSON.parse(await readFile(join(img.layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
    const blob = (d: string) => join(img.layout, 'blobs', 'sha256', d.replace(/^sha256:/, ''));
    const manifest = JSON.parse(await readFile(blob(index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === IMAGE_TAG)!.digest), 'utf8')) as { layers: Array<{ digest: string; size: number }> };
    const blobs = manifest.layers.map((l) => blob(l.digest));
    console.log(`convert bench: realistic image ${img.ref} (${img.layers} gzip layers, ${(img.compressedBytes / 1e6).toFixed(0)} MB of blobs: ${manifest.layers.map((l) => `${(l.size / 1e6).toFixed(0)} MB`).join(' + ')}), registry on loopback, ${RUNS} runs each, alternating`);

    // Warm-up: the registry's blob files in the page cache for both contenders.
    await timed('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${img.ref}`, `oci:${join(dir, 'warm')}:x`]);
    await rm(join(dir, 'warm'), { recursive: true, force: true });

    const sk: Run[] = [], d2t: Run[] = [], again: Run[] = [];
    let tarBytes = 0;
    for (let i = 0; i < RUNS; i++) {
      sk.push(await timed('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${img.ref}`, `oci:${join(dir, `oci-${i}`)}:x`]));
      await rm(join(dir, `oci-${i}`), { recursive: true, force: true });
      const store = join(dir, `store-${i}`);
      await timed(process.execPath, [THINFS, 'init', store]);
      const r = await timed(process.execPath, [D2T, '--insecure', '--json', '--store', store, img.ref]);
      d2t.push(r);
      tarBytes = (JSON.parse(r.out).descriptor.layers as Array<{ diffSize?: number }>).reduce((a, l) => a + (l.diffSize ?? 0), 0);
      again.push(await timed(process.execPath, [D2T, '--insecure', '--store', store, img.ref]));
      // Stores stay until the end: on ext4 without a journal (this machine's root), each new inode skips every inode
      // deleted in the last minute (recently_deleted), so removing 5k files right before the next run made its object
      // writes several times dearer (measured: a fifth of a writer thread's CPU, and sys time varying 3x between runs).
    }
    // The core's own ingest of the same blobs from local files: one after another, then both at once.
    const one: Run[] = [], par: Run[] = [], oneNode: Run[] = [];
    for (let i = 0; i < Math.min(RUNS, 2); i++) {
      const s1 = join(dir, `ingest-seq-${i}`), s2 = join(dir, `ingest-par-${i}`);
      await timed(process.execPath, [THINFS, 'init', s1]);
      await timed(process.execPath, [THINFS, 'init', s2]);
      const runs: Run[] = [];
      for (const b of blobs) runs.push(await timed(process.execPath, [THINFS, 'ingest', b, '--store', s1]));
      one.push({ s: runs.reduce((a, r) => a + r.s, 0), cpu: runs.reduce((a, r) => a + r.cpu, 0) });
      const t = process.hrtime.bigint();
      const both = await Promise.all(blobs.map((b) => timed(process.execPath, [THINFS, 'ingest', b, '--store', s2])));
      par.push({ s: Number(process.hrtime.bigint() - t) / 1e9, cpu: both.reduce((a, r) => a + r.cpu, 0) });
      // The same with the in-process decoder (Node zlib), the path before the child decoders: paired in this run.
      const s3 = join(dir, `ingest-node-${i}`);
      await timed(process.execPath, [THINFS, 'init', s3]);
      const nodeRuns: Run[] = [];
      for (const b of blobs) nodeRuns.push(await timed(process.execPath, [THINFS, 'ingest', b, '--store', s3], { THINFS_DECODER: 'node' }));
      oneNode.push({ s: nodeRuns.reduce((a, r) => a + r.s, 0), cpu: nodeRuns.reduce((a, r) => a + r.cpu, 0) });
    }
    const mb = tarBytes / 1e6;
    const rate = (xs: Run[]) => `${(mb / wall(xs)).toFixed(0).padStart(5)} MB/s`;
    console.log(`  ${'skopeo copy -> OCI layout (baseline)'.padEnd(44)} ${fmt(sk)} ${rate(sk)}`);
    console.log(`  ${'docker2thin (new store)'.padEnd(44)} ${fmt(d2t)} ${rate(d2t)}`);
    console.log(`  ${'docker2thin again (every layer present)'.padEnd(44)} ${fmt(again)}`);
    console.log(`  ${'thinfs ingest of the blobs, one by one'.padEnd(44)} ${fmt(one)} ${rate(one)}`);
    console.log(`  ${'  same, in-process decoder (THINFS_DECODER=node)'.padEnd(44)} ${fmt(oneNode)} ${rate(oneNode)}`);
    console.log(`  ${'thinfs ingest of the blobs, all at once'.padEnd(44)} ${fmt(par)} ${rate(par)}`);
    console.log(`  (rates over ${mb.toFixed(0)} MB uncompressed; the image is cached in ${img.layout})`);
    console.log(`  ratio docker2thin/skopeo: ${(wall(d2t) / wall(sk)).toFixed(2)}x wall (goal <= 2x)`);
    console.log(`  re-conversion: ${wall(again).toFixed(2)} s wall, ${median(again.map((x) => x.cpu)).toFixed(2)} s cpu (goal < 1 s)`);
    console.log(`  docker2thin / parallel local ingest of the same blobs: ${(wall(d2t) / wall(par)).toFixed(2)}x wall (what registry access, verification and the pipeline add)`);
    console.log(`  load average during the run: ${loadavg().map((x) => x.toFixed(1)).join(' ')} (2 cores)`);
  } finally {
    await img.registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => { console.error(e); process.exit(1); });
}
