// The trace commands: attach a recorded prefetch trace (`thinfs mount --record`) to an image, as a content-addressed
// object its descriptor names (signed with the descriptor when the store is signed), or detach it.
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { WritableStore, type Store } from '../../store/store.js';
import { openLayerCatalog } from '../../store/layer-catalog.js';
import { encodeTrace, parseTrace, type TraceChunk, type TraceSegment } from '../../format/trace.js';
import { NotFoundError, UsageError } from '../../util/errors.js';
import { sha256hex } from '../../util/hash.js';

/** The packs the traced chunks' layers' catalogs say carry them. */
async function packsCarrying(store: Store, chunks: TraceChunk[]): Promise<string[]> {
  const out: string[] = [];
  for (const layer of new Set(chunks.map((c) => c.layer))) {
    const { catalog, close } = await openLayerCatalog(store, layer);
    try { out.push(...catalog.packsCarrying(new Set(chunks.filter((c) => c.layer === layer).map((c) => c.hash)))); } finally { await close(); }
  }
  return out;
}

/** A chunk read in less than this share of its bytes travels as the parts read (put in nodes' page cache), not whole. */
const PARTS_BELOW = 0.9;
/**
 * Page data segments close past 128 KiB for the first, twice that for each next, up to 2 MiB: the first ones arrive
 * soon (what a start reads first), the later ones compress better (zstd sees more at once: on the python image, 2 MiB
 * segments throughout take 3.19 MB, 512 KiB ones 3.30 MB, this schedule 3.18 MB, one stream 3.09 MB).
 */
const segmentTarget = (n: number): number => Math.min(2 << 20, (128 << 10) << n);

/**
 * The page data of a trace: every traced chunk's bytes, in first-read order, packed into segments (segmentTarget)
 * that nodes fetch instead of the chunks one by one (fewer requests, and zstd sees more at once). A
 * chunk read in less than PARTS_BELOW of its bytes contributes only the ranges read (the pages a process mapped of a
 * big library); the rest whole (a node checks it against its hash and keeps it as a chunk).
 */
export async function buildPages(store: Store, chunks: TraceChunk[]): Promise<Array<TraceSegment & { data: Buffer }>> {
  const out: Array<TraceSegment & { data: Buffer }> = [];
  let items: Array<[number, number, number]> = [], parts: Buffer[] = [], size = 0;
  const close = () => {
    if (!items.length) return;
    const data = Buffer.concat(parts);
    out.push({ hash: sha256hex(data), size, items, data });
    items = []; parts = []; size = 0;
  };
  const target = () => segmentTarget(out.length);
  for (let ci = 0; ci < chunks.length; ci++) {
    const c = chunks[ci]!;
    if (c.size === 0) continue;
    const bytes = await store.getObject(c.hash, c.size);
    const read = c.ranges ? c.ranges.reduce((n, r) => n + r[1], 0) : c.size;
    if (read >= c.size * PARTS_BELOW) {
      // Whole, in one item (a node lands only a chunk it gets in one piece): a big one closes the segment before it.
      if (size && size + c.size > target() * 2) close();
      items.push([ci, 0, c.size]); parts.push(bytes); size += c.size;
      if (size >= target()) close();
      continue;
    }
    for (const [off, len] of c.ranges!) {
      for (let at = off; at < off + len;) {
        const n = Math.min(off + len - at, target() - size);
        items.push([ci, at, n]); parts.push(bytes.subarray(at, at + n)); size += n;
        at += n;
        if (size >= target()) close();
      }
    }
  }
  close();
  // A segment that is one whole chunk is that chunk's object (same bytes, same name): nodes fetch it as a chunk.
  return out.filter((seg) => !(seg.items.length === 1 && seg.hash === chunks[seg.items[0]![0]]!.hash));
}

export function registerTraceCommands(program: Command): void {
  const trace = program.command('trace').description('prefetch traces: the chunks an image\'s start-up reads, replayed on first touch');
  trace.command('attach')
    .description('store a trace recorded with `thinfs mount --record` and name it in the image\'s descriptor')
    .requiredOption('-s, --store <dir>', 'store directory')
    .argument('<image>', 'image name, e.g. python:v1')
    .argument('<file>', 'trace file written by `thinfs mount --record`')
    .option('--level <n>', 'zstd level the traced chunks are stored at: every cold start fetches them (0: leave them as they are)', '19')
    .option('--pages', 'also store page data: the traced bytes in a few segments, partly read chunks as the parts read, which nodes put in the page cache at open instead of fetching those chunks (see the README, "Page data")')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, file: string, o: { store: string; level: string; pages?: boolean; json?: boolean }) => {
      const level = Number(o.level);
      if (!Number.isInteger(level) || level < 0 || level > 22) throw new UsageError(`--level: expected 0 to 22, got ${o.level}`);
      const store = await WritableStore.openDir(o.store);
      const desc = await store.getImage(name);
      if (!desc) throw new NotFoundError(`image ${name} is not in store ${store.location}`);
      const t = parseTrace(await readFile(file), `trace file ${file}`);
      // Only chunks read through this image's layers are kept: the rest could never be replayed for it.
      const layers = new Set(desc.layers.map((l) => l.diffId.replace(/^sha256:/, '')));
      const chunks = t.chunks.filter((c) => layers.has(c.layer));
      // Before the descriptor names the trace: a node replaying it already gets the smaller objects, and one starting
      // without it (or another workload) the smaller copies in the packs its catalogs name.
      const packed = level > 0 ? await store.recompress(chunks.map((c) => c.hash), level, await packsCarrying(store, chunks)) : null;
      // Page data: what nodes put in the page cache at a file's open instead of fetching its partly read chunks whole.
      const pages = o.pages ? await buildPages(store, chunks) : [];
      const bytes = encodeTrace(chunks, pages);
      const sha256 = sha256hex(bytes);
      desc.trace = { sha256, size: bytes.length };
      await store.putImage(desc, undefined, undefined, [
        ...pages.map((p) => ({ hex: p.hash, data: p.data, level: level || undefined })),
        { hex: sha256, data: bytes },
      ]);
      const pageChunks = new Set(pages.flatMap((p) => p.items.map(([ci]) => ci))).size;
      const partly = new Set(pages.flatMap((p) => p.items.filter(([ci, off, len]) => off > 0 || len < chunks[ci]!.size).map(([ci]) => ci))).size;
      const r = {
        image: name, trace: desc.trace, chunks: chunks.length, dropped: t.chunks.length - chunks.length, bytes: chunks.reduce((a, c) => a + c.size, 0), recompressed: packed,
        pages: { segments: pages.length, chunks: pageChunks, partly, bytes: pages.reduce((n, p) => n + p.size, 0) },
      };
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `attached trace ${sha256} to ${name}: ${r.chunks} chunks, ${r.bytes} bytes${r.dropped ? ` (${r.dropped} from other layers dropped)` : ''}`
        + `${packed ? `; stored at zstd ${level}: ${packed.before} -> ${packed.after} bytes (${packed.changed} of ${packed.objects} objects rewritten)` : ''}`
        + `${packed?.packs ? `, ${packed.packs} packs carrying them ${packed.packsBefore} -> ${packed.packsAfter} bytes` : ''}`
        + `${pages.length ? `; page data: ${pageChunks} chunks (${partly} as the parts read), ${r.pages.bytes} bytes in ${pages.length} segments` : ''}\n`);
    });
  trace.command('detach')
    .description('remove the trace named by an image\'s descriptor (gc removes the object later)')
    .requiredOption('-s, --store <dir>', 'store directory')
    .argument('<image>', 'image name')
    .action(async (name: string, o: { store: string }) => {
      const store = await WritableStore.openDir(o.store);
      const desc = await store.getImage(name);
      if (!desc) throw new NotFoundError(`image ${name} is not in store ${store.location}`);
      delete desc.trace;
      await store.putImage(desc);
    });
}
