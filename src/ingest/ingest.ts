// Layer ingest, the pipeline: source (open, decompress, hash) -> tar reader -> tree builder
// (catalog) -> file chunking (objects) -> commit (catalog object + manifest through the store's
// transaction). This file wires the stages and owns the ingest's options, stats and cleanup.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readTar } from '../tar/reader.js';
import { DEFAULT_CHUNKING, type ChunkParams } from '../chunker/fastcdc.js';
import { CatalogWriter } from '../catalog/writer.js';
import type { WritableStore } from '../store/store.js';
import { Codec } from '../store/codec.js';
import { ObjectWriterPool } from '../store/writer-pool.js';
import { openLayerCatalog } from '../store/layer-catalog.js';
import type { LayerManifest } from '../store/types.js';
import { BadInputError, InterruptedError } from '../util/errors.js';
import { Progress } from '../util/progress.js';
import type { Logger } from '../util/log.js';
import { isDigest } from '../util/hash.js';
import { openLayerSource } from './source.js';
import { TreeBuilder } from './tree.js';
import { chunkFile, ObjectSink } from './chunking.js';
import { commitLayer } from './commit.js';
import { Packer, packsEnabled } from './packing.js';


export interface IngestOptions {
  /** Registry blob digest the input must hash to (verified, not trusted). */
  blobDigest?: string;
  blobMediaType?: string;
  /** diff id the uncompressed tar must hash to (from an image config). */
  expectDiffId?: string;
  source?: string;
  progress?: boolean;
  /** Total input size, for the progress bar when reading a stream. */
  totalBytes?: number;
  log?: Logger;
  codec?: Codec;
  chunking?: ChunkParams;
  /** Where the catalog is built before it becomes an object (default: the OS temp dir). */
  scratchDir?: string;
  /** Called after the catalog is built, before commit: test hook for crash-safety checks. */
  /** fsck --repair: the layer may be published already; write back the objects it is missing (same catalog required). */
  repair?: boolean;
  beforeCommit?: () => Promise<void>;
  /** Size of the memory chunks are copied into on their way to the writer threads (default 64 MiB; tests make it small to wrap it often). */
  chunkArenaBytes?: number;
  /** Write packs of small files (packing.ts); default on unless THINFS_PACKS=0. A repair follows the published catalog. */
  packs?: boolean;
  /** Abort (SIGINT/SIGTERM): the input is cut, the transaction rolled back, InterruptedError thrown; nothing is published. */
  signal?: AbortSignal;
}

export interface IngestStats {
  entries: number; files: number; bytes: number; chunks: number; inlined: number;
  tarBytes: number; blobBytes: number; newObjects: number; newBytes: number; seconds: number;
}

// blobDigest is the digest of *this* input; manifest.blobDigest is whichever blob published the layer first.
export interface IngestResult { manifest: LayerManifest; published: boolean; stats: IngestStats; blobDigest: string; /** Objects written back by a repair ingest. */ restored: number }

/**
 * Packs or not: the option, else the environment; a repair re-ingest follows the catalog it must reproduce (a layer
 * published before packs existed has none, and only the same catalog is accepted).
 */
async function wantPacks(store: WritableStore, opts: IngestOptions): Promise<boolean> {
  if (opts.packs !== undefined) return opts.packs;
  if (opts.repair && opts.expectDiffId) {
    const published = await openLayerCatalog(store, opts.expectDiffId).catch(() => null);
    if (published) {
      try { return published.catalog.hasPacks; } finally { await published.close(); }
    }
  }
  return packsEnabled();
}

/**
 * Stream a layer tar (plain, gzip or zstd) into the store in one pass and publish it atomically.
 * Memory is bounded (decoder window + chunks in flight), whatever the layer size.
 */
export async function ingestTar(input: string | NodeJS.ReadableStream, store: WritableStore, opts: IngestOptions = {}): Promise<IngestResult> {
  const t0 = process.hrtime.bigint();
  const chunking = opts.chunking ?? DEFAULT_CHUNKING;
  for (const [what, v] of [['diff id', opts.expectDiffId], ['blob digest', opts.blobDigest]] as const) {
    if (v !== undefined && !isDigest(v)) throw new BadInputError(`expected ${what} ${JSON.stringify(v)} is not a sha256 digest`);
  }
  const bar: { p: Progress | null } = { p: null };
  const source = await openLayerSource(input, (size) => (bar.p = opts.progress
    ? new Progress(`ingest ${opts.source ?? (typeof input === 'string' ? input : 'layer')}`, size ?? opts.totalBytes) : null));

  const interrupted = () => new InterruptedError(`interrupted: ${opts.source ? `layer ${opts.source}` : 'the layer'} was not published`);
  if (opts.signal?.aborted) { source.destroy(); throw interrupted(); }
  const onAbort = () => source.destroy();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const txn = store.beginTxn(opts.source ? opts.source.split('/').pop()! : 'ingest', opts.codec ?? Codec.Zstd);
  txn.pool = ObjectWriterPool.shared();
  const tmp = await mkdtemp(join(opts.scratchDir ?? tmpdir(), 'thinfs-catalog-'));
  let cat: CatalogWriter | null = null;
  const sink = new ObjectSink((hash, data) => txn.put(hash, data), () => txn.flushWrites(), opts.chunkArenaBytes);
  try {
    const packer = (await wantPacks(store, opts)) ? new Packer() : null;
    cat = new CatalogWriter(join(tmp, 'catalog.db'), { packs: !!packer });
    const tree = new TreeBuilder(cat);
    for await (const { entry, data } of readTar(source.tar)) {
      const ino = await tree.add(entry, data);
      if (ino === null) continue;
      const c = await chunkFile(ino, entry, data, chunking, cat, sink);
      if (packer && c.count === 1 && c.first!.offset === 0 && c.first!.size === entry.size && !entry.sparse) packer.offer(ino, entry.path, c.first!.hash, c.first!.size);
    }
    opts.log?.debug({ entries: tree.counts.entries }, 'tar read');
    await sink.drain();
    if (opts.signal?.aborted) throw interrupted();
    await packer?.write(txn, cat);

    const d = source.digests();
    const res = await commitLayer(txn, cat, { ...d, tree: tree.counts, treeProps: tree.props, chunks: sink.chunks, chunking }, {
      expectDiffId: opts.expectDiffId, expectBlobDigest: opts.blobDigest, blobMediaType: opts.blobMediaType, source: opts.source, beforeCommit: opts.beforeCommit, repair: opts.repair,
    });
    const stats: IngestStats = {
      ...tree.counts, chunks: sink.chunks, tarBytes: d.tarBytes, blobBytes: d.blobBytes,
      newObjects: res.published ? txn.newObjects : 0, newBytes: res.published ? txn.newBytes : 0,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
    bar.p?.finish();
    opts.log?.info({ diffId: d.diffId, published: res.published, ...stats }, res.published ? 'layer published' : 'layer was already published');
    return { manifest: res.manifest, published: res.published, stats, blobDigest: d.blobDigest, restored: res.restored };
  } catch (e) {
    bar.p?.finish();
    await sink.settle();
    try { cat?.abort(); } catch { /* already closed */ }
    await txn.abort();
    source.destroy();
    // Whatever the cut input made the reader say (truncated tar, premature close), the cause was the signal.
    throw opts.signal?.aborted ? interrupted() : e;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    await rm(tmp, { recursive: true, force: true });
  }
}
