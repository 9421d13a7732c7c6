// docker2thin conversion time vs `skopeo copy` of the same image to a local OCI layout, same run, same
// registry (Debian's docker-registry on loopback). The image: ~300 MB (uncompressed) in 4 gzip layers made
// from this machine's /usr trees. Baseline skopeo fetches and verifies the blobs and writes them as files;
// docker2thin fetches, verifies, decompresses, chunks, compresses and indexes them into the store.
import { mkdtemp, rm, readdir, stat, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { OciLayout, startRegistry, pushLayout, type Layer } from '../test/fixtures/images.js';

const TARGET = Number(process.env.BENCH_IMAGE_MB ?? 300) * 1e6;
const LAYERS = 4;
const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const D2T = join(ROOT, 'dist', 'tools', 'docker2thin.js');
const THINFS = join(ROOT, 'dist', 'src', 'cli', 'main.js');

/** Split whole top-level directories of /usr trees into LAYERS groups of ~TARGET/LAYERS bytes each. */
async function pickLayers(): Promise<string[][]> {
  const roots = ['/usr/lib/x86_64-linux-gnu', '/usr/share', '/usr/lib/python3.11', '/usr/include', '/usr/lib'];
  const per = TARGET / LAYERS;
  const groups: string[][] = [[]];
  const seen: string[] = [];
  let cur = 0;
  let total = 0;
  for (const r of roots) {
    let entries: string[];
    try { entries = (await readdir(r)).sort(); } catch { continue; }
    for (const e of entries) {
      const p = join(r, e);
      if (seen.some((q) => p.startsWith(q + '/') || q.startsWith(p + '/') || q === p)) continue;
      const du = spawnSync('du', ['-sb', p], { encoding: 'utf8' });
      const n = Number(du.stdout.split('\t')[0]);
      if (!n || n > per * 1.3) continue;
      groups[groups.length - 1]!.push(p); seen.push(p); cur += n; total += n;
      if (cur >= per) {
        if (groups.length === LAYERS) return groups;
        groups.push([]); cur = 0;
      }
    }
  }
  if (total < TARGET * 0.5) throw new Error(`only ${(total / 1e6).toFixed(0)} MB of /usr trees found`);
  return groups.filter((g) => g.length);
}

function timed(cmd: string, args: string[], env: Record<string, string> = {}): Promise<number> {
  return new Promise((res, rej) => {
    const t = process.hrtime.bigint();
    const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, THINFS_NO_PROGRESS: '1', THINFS_LOG_LEVEL: 'warn', ...env } });
    let err = '';
    c.stderr.on('data', (b) => { err += b; });
    c.on('close', (code) => code === 0 ? res(Number(process.hrtime.bigint() - t) / 1e9) : rej(new Error(`${cmd} ${args.join(' ')} exited ${code}\n${err}`)));
  });
}

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'thinfs-bench-convert-'));
  const reg = await startRegistry(join(dir, 'registry'));
  try {
    const groups = await pickLayers();
    const lw = join(dir, 'layers');
    await mkdir(lw);
    // Layer tars straight from the machine's trees (paths usr/...), gzip -6 as registries usually hold them;
    // two at a time (2 cores). Fixture time is not measured.
    const layers: Layer[] = [];
    const sha = (f: string) => spawnSync('sha256sum', [f], { encoding: 'utf8' }).stdout.split(' ')[0]!;
    const makeOne = async (g: string[], i: number): Promise<Layer> => {
      const tar = join(lw, `l${i}.tar`);
      const members = g.map((p) => p.replace(/^\/+/, ''));
      await timed('tar', ['-c', '-f', tar, '--numeric-owner', '--sort=name', '-C', '/', '--', ...members]).catch(async (e) => {
        if (!(await stat(tar).catch(() => null))) throw e; // exit 1 = "file changed as we read it": the tar is still whole
      });
      const diffId = `sha256:${sha(tar)}`;
      await timed('gzip', ['-6', '-n', '-k', tar]);
      const file = `${tar}.gz`;
      return { name: `l${i}`, file, diffId, digest: `sha256:${sha(file)}`, size: (await stat(file)).size, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' };
    };
    for (let i = 0; i < groups.length; i += 2) layers.push(...await Promise.all(groups.slice(i, i + 2).map((g, j) => makeOne(g, i + j))));
    const tarBytes = (await Promise.all(layers.map(async (l) => (await stat(join(lw, `${l.name}.tar`))).size))).reduce((a, b) => a + b, 0);
    const blobBytes = layers.reduce((a, l) => a + l.size, 0);
    const layout = join(dir, 'layout');
    const lay = await new OciLayout(layout).init();
    await lay.tag(await lay.image(layers, { os: 'linux', architecture: 'amd64' }), 'v1');
    await pushLayout(layout, 'v1', reg, 'bench/img');
    await rm(layout, { recursive: true, force: true });
    const ref = `${reg.host}/bench/img:v1`;
    console.log(`convert bench: ${layers.length} gzip layers, ${(tarBytes / 1e6).toFixed(0)} MB uncompressed, ${(blobBytes / 1e6).toFixed(0)} MB of blobs, registry on loopback`);

    // warm-up: the registry's blob files in the page cache for both contenders
    await timed('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(dir, 'warm')}:v1`]);
    await rm(join(dir, 'warm'), { recursive: true, force: true });

    const rows: Array<[string, number]> = [];
    const sk = await timed('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(dir, 'oci')}:v1`]);
    rows.push(['skopeo copy -> OCI layout (baseline)', sk]);
    await rm(join(dir, 'oci'), { recursive: true, force: true });
    for (const jobs of [3, 1]) {
      const store = join(dir, `store-j${jobs}`);
      await timed(process.execPath, [THINFS, 'init', store]);
      rows.push([`docker2thin --jobs ${jobs} (new store)`, await timed(process.execPath, [D2T, '--insecure', '--jobs', String(jobs), '--store', store, ref])]);
      if (jobs === 3) rows.push(['docker2thin again (all layers present)', await timed(process.execPath, [D2T, '--insecure', '--store', store, ref])]);
      await rm(store, { recursive: true, force: true });
    }
    // the core's own ingest of the same blobs from local files, one after another: what docker2thin adds on top
    const ingestStore = join(dir, 'store-ingest');
    await timed(process.execPath, [THINFS, 'init', ingestStore]);
    let ingestSum = 0;
    for (const l of layers) ingestSum += await timed(process.execPath, [THINFS, 'ingest', l.file, '--store', ingestStore]);
    rows.push(['thinfs ingest of the same blobs (local files)', ingestSum]);
    await rm(ingestStore, { recursive: true, force: true });
    // The same with the in-process decoder (Node zlib), the pre-child-decoder path: paired in this run.
    await timed(process.execPath, [THINFS, 'init', ingestStore]);
    let ingestNode = 0;
    for (const l of layers) ingestNode += await timed(process.execPath, [THINFS, 'ingest', l.file, '--store', ingestStore], { THINFS_DECODER: 'node' });
    rows.push(['  same, in-process decoder (THINFS_DECODER=node)', ingestNode]);
    await rm(ingestStore, { recursive: true, force: true });
    await rm(lw, { recursive: true, force: true });
    const mb = tarBytes / 1e6;
    for (const [name, s] of rows) console.log(`  ${name.padEnd(42)} ${s.toFixed(2).padStart(7)} s ${(mb / s).toFixed(1).padStart(8)} MB/s (uncompressed)`);
    const conv = rows[1]![1];
    console.log(`  ratio docker2thin/skopeo time: ${(conv / sk).toFixed(2)}x (docker2thin also unpacks, chunks, compresses and indexes every file)`);
    console.log(`  re-conversion: ${(rows[2]![1]).toFixed(2)} s, ${((rows[2]![1] / sk) * 100).toFixed(0)}% of a skopeo copy`);
    console.log(`  docker2thin --jobs 1 / local ingest of the same blobs: ${(rows[3]![1] / ingestSum).toFixed(2)}x (registry fetch + verification overhead)`);
  } finally {
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => { console.error(e); process.exit(1); });
}
