// Image index bench: what a mount's start costs to index a store's images by top layer (the layer trigger, Prefetch),
// with the published image index (one file the repository manifest names) and without it (a store published before
// it: one GET per descriptor, 8 at a time). A stock nginx serves a store of THINFS_BENCH_IMAGES images (default
// 1000) through a delay proxy adding THINFS_BENCH_RTT_MS (default 20) of round trip. Reports, per case, the requests
// the store saw and the time from the mount being ready to its first index; and the publication side's cost: one
// republication of the manifest (with the index derived) at that many images. Needs root (FUSE) and nginx.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startNginx } from '../test/helpers/web.js';
import { testDescriptor } from '../test/helpers/descriptor.js';
import { mountStore } from '../test/fuse-mount-helper.js';
import { startDelayProxy } from './lib/netem.js';
import { republishManifest } from '../src/store/trust.js';
import { imagePath } from '../src/store/layout.js';
import { decodeManifestFile, encodeManifestFile } from '../src/format/repo-manifest.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const IMAGES = Number(process.env.THINFS_BENCH_IMAGES ?? 1000);
const RTT = Number(process.env.THINFS_BENCH_RTT_MS ?? 20);

function thinfs(args: string[]): string {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`thinfs ${args.join(' ')}: ${r.status}\n${r.stderr}`);
  return r.stdout;
}

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'thinfs-bench-index-'));
  try {
    const store = join(dir, 'store');
    thinfs(['init', store]);
    await mkdir(join(dir, 'src'), { recursive: true });
    await writeFile(join(dir, 'src', 'f.txt'), 'one layer\n');
    spawnSync('tar', ['--numeric-owner', '-C', join(dir, 'src'), '-cf', join(dir, 'l.tar'), '.']);
    const hex = (JSON.parse(thinfs(['ingest', join(dir, 'l.tar'), '--store', store, '--json', '--no-progress'])) as { diffId: string }).diffId.slice(7);
    // The descriptors are written directly (the bench's setup), then published once; then the publication is timed.
    for (let i = 0; i < IMAGES; i++) {
      const name = `img-${i}:v1`;
      await writeFile(join(store, imagePath(name)), JSON.stringify(testDescriptor(name, store, [hex]), null, 2) + '\n');
    }
    await republishManifest(store);
    const t0 = performance.now();
    await republishManifest(store);
    const publishMs = performance.now() - t0;

    const web = await startNginx(store, join(dir, 'nginx'));
    const proxy = await startDelayProxy(Number(new URL(web.url).port), RTT);
    const url = `http://127.0.0.1:${proxy.port}`;
    const measure = async (name: string) => {
      const from = (await web.accessLog()).length;
      const m = await mountStore(url, join(dir, `mnt-${name}`), { cacheDir: join(dir, `cache-${name}`), extra: ['--no-file-ahead'] });
      const t = performance.now();
      try {
        for (;;) {
          const s = (await m.stats()) as unknown as { prefetch: { layerIndexBuilds: number } };
          if (s.prefetch.layerIndexBuilds >= 1) break;
          if (performance.now() - t > 600_000) throw new Error('no index after 10 min');
          await new Promise((r) => setTimeout(r, 10));
        }
        const ms = performance.now() - t;
        const lines = (await web.accessLog()).slice(from);
        return { ms, requests: lines.length, descriptors: lines.filter((l) => / \/images\/[^ ]+\.json /.test(l)).length };
      } finally { await m.stop(); }
    };
    try {
      const withIndex = await measure('index');
      // The same store as one published before the index: its manifest names none (unsigned, as such stores were).
      const mf = join(store, 'thinfs-published');
      const payload = JSON.parse(decodeManifestFile(await readFile(mf)).payload.toString()) as Record<string, unknown>;
      delete payload.imageIndex;
      await writeFile(mf, encodeManifestFile(Buffer.from(JSON.stringify(payload)), null));
      const without = await measure('descriptors');
      console.log(`${IMAGES} images over nginx, ${RTT} ms RTT: mount start's index of images by top layer`);
      console.log('| case | store requests (descriptors) | ready -> first index |');
      console.log('|---|---|---|');
      console.log(`| published image index | ${withIndex.requests} (${withIndex.descriptors}) | ${withIndex.ms.toFixed(0)} ms |`);
      console.log(`| every descriptor (older store) | ${without.requests} (${without.descriptors}) | ${without.ms.toFixed(0)} ms |`);
      console.log(`publication: one republish of the manifest and index at ${IMAGES} images: ${publishMs.toFixed(0)} ms`);
    } finally {
      await proxy.close();
      await web.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
