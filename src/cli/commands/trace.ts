// The trace commands: attach a recorded prefetch trace (`thinfs mount --record`) to an image, as a content-addressed
// object its descriptor names (signed with the descriptor when the store is signed), or detach it.
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { WritableStore, type Store } from '../../store/store.js';
import { openLayerCatalog } from '../../store/layer-catalog.js';
import { encodeTrace, parseTrace, type TraceChunk } from '../../format/trace.js';
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

export function registerTraceCommands(program: Command): void {
  const trace = program.command('trace').description('prefetch traces: the chunks an image\'s start-up reads, replayed on first touch');
  trace.command('attach')
    .description('store a trace recorded with `thinfs mount --record` and name it in the image\'s descriptor')
    .requiredOption('-s, --store <dir>', 'store directory')
    .argument('<image>', 'image name, e.g. python:v1')
    .argument('<file>', 'trace file written by `thinfs mount --record`')
    .option('--level <n>', 'zstd level the traced chunks are stored at: every cold start fetches them (0: leave them as they are)', '19')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, file: string, o: { store: string; level: string; json?: boolean }) => {
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
      const bytes = encodeTrace(chunks);
      const sha256 = sha256hex(bytes);
      desc.trace = { sha256, size: bytes.length };
      await store.putImage(desc, undefined, undefined, [{ hex: sha256, data: bytes }]);
      const r = { image: name, trace: desc.trace, chunks: chunks.length, dropped: t.chunks.length - chunks.length, bytes: chunks.reduce((a, c) => a + c.size, 0), recompressed: packed };
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `attached trace ${sha256} to ${name}: ${r.chunks} chunks, ${r.bytes} bytes${r.dropped ? ` (${r.dropped} from other layers dropped)` : ''}`
        + `${packed ? `; stored at zstd ${level}: ${packed.before} -> ${packed.after} bytes (${packed.changed} of ${packed.objects} objects rewritten)` : ''}`
        + `${packed?.packs ? `, ${packed.packs} packs carrying them ${packed.packsBefore} -> ${packed.packsAfter} bytes` : ''}\n`);
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
