// Chunk-size trade-off on real files of this machine: object count, cold-read cost and dedup after an edit.
import { readFile, readdir, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { Chunker, type ChunkParams } from '../src/chunker/fastcdc.js';

const CANDIDATES: Array<[string, ChunkParams]> = [
  ['casync-like 16/64/256K', { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }],
  ['64/256K/1M', { min: 64 << 10, avg: 256 << 10, max: 1 << 20 }],
  ['thinfs 256K/1M/4M', { min: 256 << 10, avg: 1 << 20, max: 4 << 20 }],
  ['cvmfs-like 4/8/16M', { min: 4 << 20, avg: 8 << 20, max: 16 << 20 }],
];

async function bigFiles(root: string, minSize: number, limit: number): Promise<string[]> {
  const out: string[] = [];
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d).catch(() => [] as string[])).sort()) {
      if (total >= limit) return;
      const p = join(d, e);
      const st = await lstat(p).catch(() => null);
      if (!st) continue;
      if (st.isDirectory()) await walk(p);
      else if (st.isFile() && st.size >= minSize) { out.push(p); total += st.size; }
    }
  };
  await walk(root);
  return out;
}

function chunkHashes(data: Buffer, p: ChunkParams): string[] {
  const c = new Chunker(p);
  const hs = c.push(data).map((b) => createHash('sha256').update(b).digest('hex'));
  const last = c.flush();
  if (last) hs.push(createHash('sha256').update(last).digest('hex'));
  return hs;
}

export async function main(): Promise<void> {
  const files = await bigFiles('/usr/lib', 1 << 20, 200e6);
  const datas = await Promise.all(files.map((f) => readFile(f)));
  const total = datas.reduce((a, d) => a + d.length, 0);
  console.log(`chunking bench: ${files.length} files >= 1 MiB, ${(total / 1e6).toFixed(0)} MB from /usr/lib`);
  console.log('  params                      chunks  avg KiB  MB/s   cold 4K read KiB  dedup after 100-byte insert');
  for (const [name, p] of CANDIDATES) {
    const t = process.hrtime.bigint();
    let chunks = 0;
    const before: string[][] = [];
    for (const d of datas) { const h = chunkHashes(d, p); chunks += h.length; before.push(h); }
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    // Edit: insert 100 bytes in the middle of every file, re-chunk, count chunks still shared.
    let shared = 0, after = 0;
    datas.forEach((d, i) => {
      const mid = d.length >> 1;
      const h = chunkHashes(Buffer.concat([d.subarray(0, mid), Buffer.alloc(100, 7), d.subarray(mid)]), p);
      const old = new Set(before[i]);
      after += h.length;
      shared += h.filter((x) => old.has(x)).length;
    });
    const avgKiB = total / chunks / 1024;
    // A cold read of 4 KiB fetches the whole chunk holding it (files smaller than min are one object).
    const coldKiB = Math.min(avgKiB, total / files.length / 1024);
    console.log(`  ${name.padEnd(26)} ${String(chunks).padStart(7)} ${avgKiB.toFixed(0).padStart(8)} ${(total / 1e6 / secs).toFixed(0).padStart(5)} ${coldKiB.toFixed(0).padStart(18)} ${((shared / after) * 100).toFixed(1).padStart(10)}% shared`);
  }
}
