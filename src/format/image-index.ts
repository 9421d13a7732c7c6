/**
 * The published image index: derived metadata the publishing side writes beside the repository manifest
 * (src/format/repo-manifest.ts names it by hash, so a signed manifest's trust extends to it), so that a node learns
 * every image's layers and trace from one object instead of one descriptor GET per image (the CernVM-FS answer to
 * per-client scans). Owns its schema, validation and byte encoding. The mount's layer trigger reads it as hints
 * only: the descriptor an entry leads to is still fetched and verified before anything is replayed.
 *
 * Per image: its layers' diff id hex (bottom first), its trace object's hash (when it has one) and its creation
 * time. The top-layer map and the `above` relation are derived by the reader; the per-image list is smaller (a base
 * layer shared by many images is one repeated string, which the object's compression folds) and says what it is.
 */
import { BadInputError } from '../util/errors.js';
import type { ThinImage } from './descriptor.js';

const IMAGE_INDEX_MEDIA_TYPE = 'application/vnd.thinfs.image-index.v1+json';
/** Larger is refused before it is read (the manifest also names its size). */
export const IMAGE_INDEX_MAX = 256 << 20;

export interface ImageIndexEntry {
  /** Diff id hex of each layer, bottom first (the descriptor's order). */
  layers: string[];
  /** Hash of the descriptor's trace object, when it names one. */
  trace?: string;
  /** The descriptor's `created` (newest-first ordering of several traces on one top layer). */
  created?: string;
}

export interface ImageIndex {
  schemaVersion: 1;
  mediaType: typeof IMAGE_INDEX_MEDIA_TYPE;
  /** By image name, as the repository manifest's `images`. */
  images: Record<string, ImageIndexEntry>;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** What the index says of a descriptor; null for one it cannot describe (a layer without a sha256 diff id). */
export function imageIndexEntry(d: ThinImage): ImageIndexEntry | null {
  if (!Array.isArray(d.layers) || !d.layers.length) return null;
  const layers: string[] = [];
  for (const l of d.layers) {
    const m = /^sha256:([0-9a-f]{64})$/.exec(String(l?.diffId));
    if (!m) return null;
    layers.push(m[1]!);
  }
  const e: ImageIndexEntry = { layers };
  if (typeof d.trace?.sha256 === 'string' && HEX64.test(d.trace.sha256)) e.trace = d.trace.sha256;
  if (typeof d.created === 'string') e.created = d.created;
  return e;
}

/** One line of JSON, images in name order: the same store state always gives the same bytes (and object). */
export function encodeImageIndex(images: Record<string, ImageIndexEntry>): Buffer {
  const sorted = Object.fromEntries(Object.keys(images).sort().map((k) => [k, images[k]]));
  return Buffer.from(JSON.stringify({ schemaVersion: 1, mediaType: IMAGE_INDEX_MEDIA_TYPE, images: sorted }) + '\n');
}

export function parseImageIndex(raw: Buffer, what = 'image index'): ImageIndex {
  let j: { schemaVersion?: unknown; mediaType?: unknown; images?: unknown };
  try { j = JSON.parse(raw.toString('utf8')) as typeof j; } catch (e) {
    throw new BadInputError(`${what}: invalid JSON (${(e as Error).message})`);
  }
  if (j?.schemaVersion !== 1 || j.mediaType !== IMAGE_INDEX_MEDIA_TYPE) throw new BadInputError(`${what}: not a thinfs v1 image index`);
  if (!j.images || typeof j.images !== 'object' || Array.isArray(j.images)) throw new BadInputError(`${what}: images is not an object`);
  const images: Record<string, ImageIndexEntry> = Object.create(null);
  for (const [name, v] of Object.entries(j.images as Record<string, unknown>)) {
    const e = v as { layers?: unknown; trace?: unknown; created?: unknown };
    const bad = (why: string) => new BadInputError(`${what}: image ${JSON.stringify(name.slice(0, 200))}: ${why}`);
    if (!name.length || name.length > 4096) throw bad('bad name');
    if (!e || !Array.isArray(e.layers) || !e.layers.length || !e.layers.every((l) => typeof l === 'string' && HEX64.test(l))) throw bad('bad layer list');
    if (e.trace !== undefined && (typeof e.trace !== 'string' || !HEX64.test(e.trace))) throw bad('bad trace hash');
    if (e.created !== undefined && typeof e.created !== 'string') throw bad('bad created');
    const out: ImageIndexEntry = { layers: e.layers as string[] };
    if (e.trace !== undefined) out.trace = e.trace as string;
    if (e.created !== undefined) out.created = e.created as string;
    images[name] = out;
  }
  return { schemaVersion: 1, mediaType: IMAGE_INDEX_MEDIA_TYPE, images };
}
