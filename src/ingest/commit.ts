// Ingest stage 4, commit: once the whole tar is read, checks its digests against what the caller
// expects, seals the catalog into an object, writes the layer manifest and publishes it through the
// store's transaction (which owns staging, durability and the exactly-once publish).
import { readFile } from 'node:fs/promises';
import type { ChunkParams } from '../chunker/fastcdc.js';
import type { CatalogWriter } from '../catalog/writer.js';
import type { Txn } from '../store/txn.js';
import { catalogLevel } from '../store/codec.js';
import type { LayerManifest } from '../store/types.js';
import { IntegrityError } from '../util/errors.js';
import { sha256hex } from '../util/hash.js';
import type { TreeCounts } from './tree.js';
import { INLINE_MAX } from './tree.js';

interface LayerFacts {
  diffId: string; blobDigest: string; tarBytes: number; blobBytes: number;
  tree: TreeCounts; treeProps: Record<string, string | number>; chunks: number; chunking: ChunkParams;
}

interface CommitOptions {
  expectDiffId?: string; expectBlobDigest?: string; blobMediaType?: string; source?: string;
  beforeCommit?: () => Promise<void>;
  /** fsck --repair: the layer may be published already; write back the objects it is missing. */
  repair?: boolean;
}

/** Refuse a layer whose content is not what the caller was told it is (nothing is published). */
function checkDigests(f: { diffId: string; blobDigest: string }, o: CommitOptions): void {
  if (o.expectDiffId && o.expectDiffId !== f.diffId) throw new IntegrityError(o.expectDiffId, `layer content hashes to ${f.diffId}, expected diff id ${o.expectDiffId}`);
  if (o.expectBlobDigest && o.expectBlobDigest !== f.blobDigest) throw new IntegrityError(o.expectBlobDigest, `layer blob hashes to ${f.blobDigest}, expected ${o.expectBlobDigest}`);
}

export async function commitLayer(txn: Txn, cat: CatalogWriter, f: LayerFacts, o: CommitOptions): Promise<{ manifest: LayerManifest; published: boolean; restored: number }> {
  checkDigests(f, o);
  // No timestamps or blob digests in the catalog: the same layer gives the same catalog object on every node.
  cat.finish({ diff_id: f.diffId, ...f.treeProps,
    chunk_min: f.chunking.min, chunk_avg: f.chunking.avg, chunk_max: f.chunking.max, inline_max: INLINE_MAX });
  const catalogData = await readFile(cat.path);
  const catalogHash = sha256hex(catalogData);
  const catalogSize = catalogData.length; // put() may hand the buffer's memory to a worker
  await txn.put(catalogHash, catalogData, catalogLevel(catalogSize));
  const manifest: LayerManifest = {
    schemaVersion: 1, mediaType: 'application/vnd.thinfs.layer.v1+json',
    diffId: f.diffId, blobDigest: f.blobDigest, ...(o.blobMediaType ? { blobMediaType: o.blobMediaType } : {}),
    catalog: catalogHash, catalogSize,
    sizes: { tar: f.tarBytes, blob: f.blobBytes, files: f.tree.bytes, stored: txn.newBytes },
    counts: { entries: f.tree.entries, files: f.tree.files, chunks: f.chunks, objects: txn.newObjects, inlined: f.tree.inlined },
    chunking: { ...f.chunking, inlineMax: INLINE_MAX },
    created: new Date().toISOString(),
    ...(o.source ? { source: o.source } : {}),
  };
  if (o.beforeCommit) await o.beforeCommit();
  return txn.commit(manifest, { repair: o.repair });
}
