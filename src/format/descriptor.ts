// Owns the thin image descriptor schema (images/<name>.json, and the payload of a thin OCI image) and its
// validation: L1, shared by the store (reads/writes descriptors), image conversion, the mount and podman.
import { BadInputError } from '../util/errors.js';
import type { TraceRef } from './trace.js';

export const THIN_IMAGE_MEDIA_TYPE = 'application/vnd.thinfs.image.v1+json';
/** Annotation on the tiny OCI image that carries a descriptor (the CernVM-FS "thin image" idea). */
export const THIN_ANNOTATION = 'org.thinfs.thin';

export interface ThinLayer {
  /** Registry blob digest (compressed), as in the original manifest. */
  digest: string;
  /** Uncompressed tar digest: the key of the published layer manifest (layers/<hex>.json). */
  diffId: string;
  size: number;
  mediaType: string;
  /** Catalog object hash (bare hex) recorded at conversion time. */
  catalog: string;
  /** Store-relative path of the layer manifest. */
  manifest: string;
  /** Uncompressed tar size in bytes, when known (not known before a publisher ingested an S3 upload). */
  diffSize?: number;
  /** Where the blob was uploaded for a publisher to ingest (docker2thin --s3-endpoint/--bucket). */
  upload?: { endpoint: string; bucket: string; key: string };
}

/** A thin image descriptor: names the layers of an image and where they live. Versioned JSON. */
export interface ThinImage {
  schemaVersion: 1;
  mediaType: typeof THIN_IMAGE_MEDIA_TYPE;
  /** Short name used under the mount's images/ directory, e.g. "busybox:latest". */
  name: string;
  /** Where it came from, e.g. "127.0.0.1:5000/library/busybox:latest". */
  reference: string;
  manifestDigest: string;
  /** Media type of that manifest (Docker schema 2 or OCI). */
  manifestMediaType?: string;
  /** Digest of the multi-platform index (manifest list) the manifest was selected from, if any. */
  indexDigest?: string;
  platform: { os: string; architecture: string; variant?: string };
  /** Store location(s) the layers were published to (a path or http(s) URLs). */
  store: string;
  /** The original image config JSON (Entrypoint, Env, WorkingDir, User, rootfs.diff_ids ...). */
  config: Record<string, unknown>;
  configDigest: string;
  /** Bottom layer first. */
  layers: ThinLayer[];
  created: string;
  /** Optional prefetch trace (src/format/trace.ts): the chunks a recorded start-up read, replayed ahead of a process. */
  trace?: TraceRef;
}

export function parseThinImage(raw: string | Buffer, what = 'thin image descriptor'): ThinImage {
  let d: ThinImage;
  try { d = JSON.parse(raw.toString()) as ThinImage; } catch (e) {
    throw new BadInputError(`${what}: invalid JSON (${(e as Error).message})`);
  }
  if (d?.schemaVersion !== 1 || d.mediaType !== THIN_IMAGE_MEDIA_TYPE) throw new BadInputError(`${what}: not a thinfs v1 descriptor`);
  if (!Array.isArray(d.layers) || typeof d.name !== 'string') throw new BadInputError(`${what}: missing name or layers`);
  for (const l of d.layers) {
    if (typeof l.diffId !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(l.diffId)) throw new BadInputError(`${what}: bad layer diffId ${l.diffId}`);
  }
  return d;
}
