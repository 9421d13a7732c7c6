// The cold start's byte floor: how many compressed bytes a start must fetch, whatever the fetch granularity, for the
// coldstart bench's workloads on the realistic image. The image's rootfs on a loop-mounted ext4 whose device has no
// readahead (read_ahead_kb 0), mounted fresh, the workload run in it once (`unshare --root`), then the page cache of
// every file looked at with mincore(2) (bench/lib/mincore.c): the pages the process touched, read or mapped, and no
// more. Those pages priced at each granularity: whole files, thinfs's chunks (as converted, and recompressed at zstd
// 19 as `trace attach` stores traced chunks), aligned blocks of 1 MiB down to one page (each block one zstd 19 frame,
// framed as the store frames objects), and all touched pages as one zstd 19 stream (no per-object framing at all).
// Each row adds the image's catalogs (what a cold start fetches before its first byte), against the image's compressed
// size (the registry's layer blobs) and the issue's 5% goal.
// Needs root, losetup, mkfs.ext4 (-d), umoci, cc. Env: BENCH_WORKLOADS (default "true,python").
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join, resolve, relative } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { realisticImage, IMAGE_TAG } from './lib/realistic-image.js';
import { WORKLOADS } from './coldstart.js';
import { run, runOk } from '../test/helpers/proc.js';
import { Store } from '../src/store/store.js';
import { objectPath } from '../src/store/layout.js';
import { encodeObject, Codec } from '../src/store/codec.js';
import { CatalogReader, type ChunkRef } from '../src/catalog/reader.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const D2T = join(ROOT, 'dist', 'tools', 'docker2thin.js');
const ONLY = (process.env.BENCH_WORKLOADS ?? '').split(',').filter(Boolean);
const PAGE = 4096;
const BLOCKS = [1 << 20, 256 << 10, 64 << 10, 16 << 10, 4 << 10];
const ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', HOME: '/root' };

/** A file the workload touched: its path in the rootfs and the resident page ranges [first, end). */
interface Touched { path: string; ranges: Array<[number, number]> }

const z19 = (b: Uint8Array) => encodeObject(b, Codec.Zstd, 19).length;
const mb = (n: number) => (n / 1e6).toFixed(2);

/** Feeds every regular file under `dir` to the mincore tool; returns the files with resident pages. */
async function residentPages(tool: string, dir: string): Promise<Touched[]> {
  const files = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => join(e.parentPath ?? e.path, e.name));
  const out = await new Promise<Buffer>((res, rej) => {
    const c = spawn(tool, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    const bufs: Buffer[] = [];
    let err = '';
    c.stdout.on('data', (b: Buffer) => bufs.push(b));
    c.stderr.on('data', (b) => { err += b; });
    c.on('error', rej);
    c.on('close', (code) => code === 0 ? res(Buffer.concat(bufs)) : rej(new Error(`mincore exited ${code}: ${err}`)));
    c.stdin.end(Buffer.concat(files.map((f) => Buffer.from(f + '\0'))));
  });
  return out.toString('latin1').split('\0').filter(Boolean).map((rec) => {
    const tab = rec.indexOf('\t');
    const ranges = rec.slice(0, tab).split(',').map((r) => r.split('-').map(Number) as [number, number]);
    return { path: relative(dir, rec.slice(tab + 1)), ranges };
  });
}

/** Whether any touched page falls in [from, to) bytes. */
const touches = (t: Touched, from: number, to: number) => t.ranges.some(([a, b]) => a * PAGE < to && b * PAGE > from);

export async function main(): Promise<void> {
  const image = await realisticImage();
  const work = join(tmpdir(), `tfloor-${process.pid}`);
  const mnt = join(work, 'mnt');
  let loop = '';
  await mkdir(mnt, { recursive: true });
  try {
    const tool = join(work, 'mincore');
    await runOk('cc', ['-O2', '-o', tool, join(ROOT, 'bench', 'lib', 'mincore.c')]);
    // The rootfs as podman would see it (umoci applies the layers, whiteouts included), on ext4 with no readahead.
    const bundle = join(work, 'bundle');
    await runOk('umoci', ['unpack', '--image', `${image.layout}:${IMAGE_TAG}`, bundle], { timeoutMs: 600_000 });
    const rootfs = join(bundle, 'rootfs');
    const used = Number((await runOk('du', ['-sb', rootfs])).split('\t')[0]);
    const img = join(work, 'rootfs.ext4');
    await runOk('truncate', ['-s', String(Math.ceil((used * 1.5 + (256 << 20)) / 4096) * 4096), img]);
    await runOk('mkfs.ext4', ['-q', '-F', '-d', rootfs, img], { timeoutMs: 600_000 });
    loop = (await runOk('losetup', ['--find', '--show', '--read-only', img])).trim();
    await runOk('blockdev', ['--setra', '0', loop]);
    const ra = (await readFile(`/sys/block/${loop.replace('/dev/', '')}/queue/read_ahead_kb`, 'utf8')).trim();
    if (ra !== '0') throw new Error(`${loop}: read_ahead_kb is ${ra}, not 0`);

    // The image's thinfs store (docker2thin, as the coldstart bench converts it) and its catalogs, top layer first.
    const storeDir = join(work, 'store');
    await runOk(process.execPath, [join(ROOT, 'dist', 'src', 'cli', 'main.js'), 'init', storeDir]);
    await runOk(process.execPath, [D2T, '--no-progress', '--store', storeDir, '--name', 'python', image.ociRef], { timeoutMs: 900_000 });
    const store = await Store.open(storeDir);
    const desc = (await store.getImage('python'))!;
    const cats: CatalogReader[] = [];
    let catalogBytes = 0;
    for (const l of [...desc.layers].reverse()) {
      const m = (await store.getLayer(l.diffId))!;
      catalogBytes += (await stat(join(storeDir, objectPath(m.catalog)))).size;
      const f = join(work, `${m.catalog}.db`);
      await writeFile(f, await store.getObject(m.catalog, m.catalogSize));
      cats.push(CatalogReader.open(f));
    }
    const chunksOf = (path: string): ChunkRef[] | 'inline' | null => {
      for (const c of cats) {
        const e = c.resolve(path);
        if (!e) continue;
        if (e.type !== 'file') return null;
        return e.inline ? 'inline' : c.chunks(e.ino);
      }
      return null;
    };

    const goal = image.compressedBytes * 0.05;
    console.log(`image: ${mb(image.compressedBytes)} MB compressed (5% = ${mb(goal)} MB); catalogs ${mb(catalogBytes)} MB; rootfs on ${loop}, read_ahead_kb ${ra}`);
    const md: string[] = [];
    for (const [wname, cmd] of Object.entries(WORKLOADS).filter(([w]) => !ONLY.length || ONLY.includes(w))) {
      // A fresh mount: none of this file system's pages are cached.
      await runOk('mount', ['-o', 'ro,noatime', loop, mnt]);
      let touched: Touched[];
      try {
        // The image's environment only (run() merges over ours: every other variable unset).
        const env = { ...Object.fromEntries(Object.keys(process.env).map((k) => [k, undefined])), ...ENV };
        const r = await run('unshare', ['--root', mnt, '--wd', '/root', ...cmd], { env, timeoutMs: 300_000 });
        if (r.code !== 0) throw new Error(`${cmd.join(' ')} in the rootfs exited ${r.code}: ${r.stderr}`);
        touched = await residentPages(tool, mnt);
      } finally {
        await runOk('umount', [mnt]);
      }
      // Price the touched pages at each granularity, reading the contents from the unpacked rootfs.
      const rows: Array<[string, number, number, number]> = []; // name, units, plain bytes, compressed bytes
      let pagesPlain = 0, filesPlain = 0, filesZ = 0, chunkN = 0, chunkPlain = 0, chunkStored = 0, chunkZ = 0, inline = 0;
      const blocks = BLOCKS.map(() => ({ n: 0, plain: 0, z: 0 }));
      const allPages: Buffer[] = [];
      const seenChunks = new Set<string>();
      for (const t of touched) {
        const data = await readFile(join(rootfs, t.path));
        filesPlain += data.length; filesZ += z19(data);
        for (const [a, b] of t.ranges) { const p = data.subarray(a * PAGE, b * PAGE); pagesPlain += p.length; allPages.push(p); }
        BLOCKS.forEach((bs, i) => {
          for (let off = 0; off < data.length; off += bs) {
            if (!touches(t, off, off + bs)) continue;
            const blk = data.subarray(off, off + bs);
            blocks[i]!.n++; blocks[i]!.plain += blk.length; blocks[i]!.z += z19(blk);
          }
        });
        const cs = chunksOf(t.path);
        if (cs === 'inline') { inline++; continue; }
        if (!cs) throw new Error(`${t.path}: a touched file the image's catalogs do not have`);
        for (const c of cs) {
          if (!touches(t, c.offset, c.offset + c.size) || seenChunks.has(c.hash)) continue;
          seenChunks.add(c.hash);
          chunkN++; chunkPlain += c.size;
          chunkStored += (await stat(join(storeDir, objectPath(c.hash)))).size;
          chunkZ += z19(await store.getObject(c.hash, c.size));
        }
      }
      rows.push(['whole files touched', touched.length, filesPlain, filesZ]);
      rows.push(['thinfs chunks, as converted', chunkN, chunkPlain, chunkStored]);
      rows.push(['thinfs chunks at zstd 19 (as `trace attach` stores them)', chunkN, chunkPlain, chunkZ]);
      BLOCKS.forEach((bs, i) => rows.push([`${bs >= 1 << 20 ? `${bs >> 20} MiB` : `${bs >> 10} KiB`} blocks`, blocks[i]!.n, blocks[i]!.plain, blocks[i]!.z]));
      rows.push(['touched pages, one zstd 19 stream', 1, pagesPlain, z19(Buffer.concat(allPages))]);
      console.log(`${wname}: ${touched.length} files touched (${inline} inline in the catalogs), ${mb(pagesPlain)} MB of pages`);
      md.push(`| ${wname} | granularity | objects | plain MB | compressed MB | + catalogs MB | % of image |`, '|---|---|---|---|---|---|---|');
      for (const [name, n, plain, z] of rows) {
        md.push(`| ${wname} | ${name} | ${n} | ${mb(plain)} | ${mb(z)} | ${mb(z + catalogBytes)} | ${((100 * (z + catalogBytes)) / image.compressedBytes).toFixed(1)}% |`);
      }
      md.push('');
    }
    for (const c of cats) c.close();
    console.log(md.join('\n'));
  } finally {
    await run('umount', [mnt]).catch(() => undefined);
    if (loop) await run('losetup', ['-d', loop]).catch(() => undefined);
    await rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
}
