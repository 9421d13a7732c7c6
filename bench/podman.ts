// podman start bench (issue 13, acceptance 3), one run: a Debian + python3 image in a local registry,
// (a) pulled into podman's own store, (b) converted by docker2thin and run by `podman run REF` from the
// image store generated over the thinfs mount. Same podman, same runc, same workload (a python import of
// ~25 standard modules). Warm: page cache dropped before each start, thinfs chunk cache filled. Hot: page
// cache kept. Also `true` as the command (the container start alone) to show where the time goes, and
// the mount's FUSE request counts of one warm start. Median of RUNS starts, the two paths alternated.
// Needs root (drop_caches, mounts), podman, runc, docker-registry, skopeo; the image from
// bench/lib/realistic-image.ts (debootstrap + umoci, built once and cached).
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { testPodman, type TestPodman } from '../test/helpers/podman.js';
import { startRegistry } from '../test/fixtures/images.js';
import { mountStore, type Mounted } from '../test/fuse-mount-helper.js';
import { realisticImage } from './lib/realistic-image.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const D2T = fileURLToPath(new URL('../tools/docker2thin.js', import.meta.url));
const RUNS = Number(process.env.THINFS_BENCH_PODMAN_RUNS ?? 5);
/** Imports many standard-library modules (hundreds of files stat'ed and read): the start-up a python job pays. */
const PY_IMPORTS = 'import json, email.parser, http.client, xml.etree.ElementTree, sqlite3, asyncio, decimal, argparse, logging, unittest, urllib.request, csv, zipfile, tarfile, shutil, subprocess, ssl, hashlib, multiprocessing, concurrent.futures, dataclasses, typing, pathlib, pydoc';
const WORKLOAD = ['/usr/bin/python3', '-c', PY_IMPORTS];

function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '', err = '';
    c.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    c.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    c.on('error', rej);
    c.on('close', (code) => res({ code, out, err }));
  });
}
async function ok(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await sh(cmd, args, env);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} -> ${r.code}: ${r.err}`);
  return r.out;
}
async function dropCaches(): Promise<void> {
  await ok('sync', []);
  await fsp.writeFile('/proc/sys/vm/drop_caches', '3');
}
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

async function start(p: TestPodman, ref: string, cmd: string[]): Promise<number> {
  const t0 = performance.now();
  const r = await p.podman(['run', '--rm', '--network=none', ...(cmd.length ? ['--entrypoint', cmd[0]!] : []), ref, ...cmd.slice(1)]);
  const s = (performance.now() - t0) / 1000;
  if (r.code !== 0) throw new Error(`podman run failed: ${r.stderr}`);
  return s;
}

export async function main(): Promise<void> {
  if (process.getuid?.() !== 0) { console.log('podman bench: needs root (drop_caches, mounts); skipped'); return; }
  for (const c of ['podman', 'runc', 'docker-registry']) if ((await sh('which', [c])).code !== 0) { console.log(`podman bench: ${c} not installed; skipped`); return; }
  const work = await fsp.mkdtemp('/var/tmp/thinfs-bench-podman-');
  const reg = await startRegistry(path.join(work, 'registry'));
  let mnt: Mounted | null = null;
  const podmans: TestPodman[] = [];
  try {
    // The realistic image (debootstrap minbase + python3 layer, cached by bench/lib/realistic-image.ts).
    const img = await realisticImage();
    const ref = `${reg.host}/bench/python:1`;
    await ok('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', img.ociRef, `docker://${ref}`]);

    const store = path.join(work, 'store');
    await ok(process.execPath, [MAIN, 'init', store]);
    let t0 = performance.now();
    await ok(process.execPath, [D2T, '--insecure', '--store', store, ref], { THINFS_NO_PROGRESS: '1' });
    const convertS = (performance.now() - t0) / 1000;
    mnt = await mountStore(store, path.join(work, 'mnt'), { cacheDir: path.join(work, 'cache') });
    const ps = path.join(work, 'podman-store');
    await ok(process.execPath, [MAIN, 'podman-store', store, mnt.mp, ps]);
    const conf = path.join(work, 'thin', 'storage.conf');
    await fsp.mkdir(path.dirname(conf), { recursive: true });
    await ok(process.execPath, [MAIN, 'podman-conf', ps, '--graphroot', path.join(work, 'thin/graph'), '--runroot', path.join(work, 'thin/run'), '-o', conf]);
    const thin = await testPodman(path.join(work, 'thin'), { storageConf: conf });
    const own = await testPodman(path.join(work, 'own'));
    podmans.push(thin, own);

    t0 = performance.now();
    await own.podmanOk(['pull', '--quiet', '--tls-verify=false', ref], 600_000);
    const pullS = (performance.now() - t0) / 1000;
    // cold thinfs: empty chunk cache, page cache dropped (fills the cache for the warm runs)
    await dropCaches();
    const coldThin = await start(thin, ref, WORKLOAD);
    await dropCaches();
    const coldOwn = await start(own, ref, WORKLOAD);

    const rows: Array<[string, number, number]> = [];
    for (const [label, cmd, warm] of [
      ['warm start, python imports', WORKLOAD, true], ['hot start, python imports', WORKLOAD, false],
      ['warm start, `true` (container only)', ['/usr/bin/true'], true], ['hot start, `true` (container only)', ['/usr/bin/true'], false],
    ] as Array<[string, string[], boolean]>) {
      const a: number[] = []; const b: number[] = [];
      if (!warm) { await start(thin, ref, cmd); await start(own, ref, cmd); }
      for (let i = 0; i < RUNS; i++) {
        if (warm) await dropCaches();
        a.push(await start(thin, ref, cmd));
        if (warm) await dropCaches();
        b.push(await start(own, ref, cmd));
      }
      rows.push([label, median(a), median(b)]);
    }
    // Where a warm thinfs start spends its FUSE time.
    const before = await mnt.stats();
    await dropCaches();
    await start(thin, ref, WORKLOAD);
    const after = await mnt.stats();
    const req = Object.entries(after.ops.requests).map(([k, v]) => {
      const b0 = before.ops.requests[k] ?? { n: 0, totalSec: 0, queueSec: 0 };
      return { op: k, n: v.n - b0.n, ms: (v.totalSec - b0.totalSec) * 1000, queueMs: (v.queueSec - b0.queueSec) * 1000 };
    }).filter((r) => r.n > 0).sort((x, y) => y.ms - x.ms);

    console.log(`image ${ref}: ${img.layers} layers, ${(img.compressedBytes / 1e6).toFixed(0)} MB compressed; docker2thin ${convertS.toFixed(1)} s; podman pull ${pullS.toFixed(1)} s; ${RUNS} starts per row (median)`);
    console.log(`cold start (caches empty, page cache dropped): thinfs ${coldThin.toFixed(2)} s, podman own store ${coldOwn.toFixed(2)} s (+ pull ${pullS.toFixed(1)} s)`);
    console.log('| start | thinfs image store | podman own store | ratio |');
    console.log('|---|---|---|---|');
    for (const [l, a, b] of rows) console.log(`| ${l} | ${a.toFixed(3)} s | ${b.toFixed(3)} s | ${(a / b).toFixed(2)}x |`);
    console.log(`FUSE requests of one warm thinfs start (count, time to reply, of which queued for the JS thread): ${req.map((r) => `${r.op} ${r.n} (${r.ms.toFixed(0)} ms, ${r.queueMs.toFixed(0)} queued)`).join(', ')}`);
    console.log(`passthrough opens ${after.ops.opensPassthrough - before.ops.opensPassthrough}, served opens ${after.ops.opensServed - before.ops.opensServed}, chunk fetches from the store ${after.cache.fetches - before.cache.fetches}`);
  } finally {
    for (const p of podmans) await p.cleanup().catch(() => undefined);
    if (mnt) await mnt.stop();
    await reg.stop();
    await fsp.rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
