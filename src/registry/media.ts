import { BadInputError } from '../util/errors.js';

export const MT = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  // not in Docker's spec, but containers/image writes it for uncompressed schema 2 layers
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNdTar: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNdGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNdZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
} as const;

/** What we send in Accept: every manifest kind we can use, so the registry never down-converts to schema1. */
export const MANIFEST_ACCEPT = [MT.ociIndex, MT.dockerManifestList, MT.ociManifest, MT.dockerManifest].join(', ');

export type Compression = 'none' | 'gzip' | 'zstd';

const LAYER_TYPES: Record<string, Compression> = {
  [MT.dockerLayerGzip]: 'gzip',
  [MT.dockerForeignLayerGzip]: 'gzip',
  [MT.dockerLayerTar]: 'none',
  [MT.ociLayer]: 'none',
  [MT.ociLayerGzip]: 'gzip',
  [MT.ociLayerZstd]: 'zstd',
  [MT.ociLayerNdTar]: 'none',
  [MT.ociLayerNdGzip]: 'gzip',
  [MT.ociLayerNdZstd]: 'zstd',
  // docker save archives: layers are plain tars without a manifest media type
  'application/x-tar': 'none',
};

/** Compression of a layer media type; unsupported types are refused before anything is downloaded. */
export function layerCompression(mediaType: string): Compression {
  const c = LAYER_TYPES[mediaType];
  if (!c) throw new BadInputError(`unsupported layer media type "${mediaType}" (supported: ${Object.keys(LAYER_TYPES).join(', ')})`);
  return c;
}

function isIndexType(mt: string | undefined): boolean {
  return mt === MT.ociIndex || mt === MT.dockerManifestList;
}

function isImageManifestType(mt: string | undefined): boolean {
  return mt === MT.ociManifest || mt === MT.dockerManifest;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: { os: string; architecture: string; variant?: string; 'os.version'?: string; 'os.features'?: string[] };
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

function checkDescriptor(d: unknown, what: string): Descriptor {
  const x = d as Descriptor;
  if (!x || typeof x !== 'object' || typeof x.mediaType !== 'string' || typeof x.digest !== 'string' || typeof x.size !== 'number') {
    throw new BadInputError(`${what}: malformed descriptor ${JSON.stringify(d)?.slice(0, 200)}`);
  }
  if (!DIGEST_RE.test(x.digest)) throw new BadInputError(`${what}: unsupported digest "${x.digest}" (sha256 only)`);
  if (!Number.isSafeInteger(x.size) || x.size < 0) throw new BadInputError(`${what}: bad size ${x.size}`);
  return x;
}

/**
 * Parse a manifest or index body. The media type comes from the JSON when present, else from the
 * response's Content-Type (OCI allows omitting it). Schema 1 and unknown kinds are refused (exit 3).
 */
export function parseManifest(raw: Buffer, contentType: string | undefined, what: string): { kind: 'index'; index: ImageIndex } | { kind: 'manifest'; manifest: ImageManifest } {
  let j: Record<string, unknown>;
  try { j = JSON.parse(raw.toString('utf8')) as Record<string, unknown>; } catch (e) {
    throw new BadInputError(`${what}: manifest is not valid JSON (${(e as Error).message})`);
  }
  const ct = contentType?.split(';')[0]!.trim();
  if (j.schemaVersion === 1 || ct === MT.dockerSchema1 || ct === MT.dockerSchema1Signed) {
    throw new BadInputError(`${what}: unsupported manifest media type "${ct ?? MT.dockerSchema1}" (Docker schema 1 is deprecated; re-push the image with a current client)`);
  }
  let mt = typeof j.mediaType === 'string' ? j.mediaType : undefined;
  if (!mt) {
    if (ct && (isIndexType(ct) || isImageManifestType(ct))) mt = ct;
    else if (Array.isArray(j.manifests)) mt = MT.ociIndex;
    else if (j.config && Array.isArray(j.layers)) mt = MT.ociManifest;
  }
  if (j.schemaVersion !== 2) throw new BadInputError(`${what}: unsupported manifest schemaVersion ${String(j.schemaVersion)}`);
  if (isIndexType(mt)) {
    if (!Array.isArray(j.manifests)) throw new BadInputError(`${what}: index without manifests`);
    const manifests = j.manifests.map((m, i) => checkDescriptor(m, `${what}: manifests[${i}]`));
    return { kind: 'index', index: { schemaVersion: 2, mediaType: mt!, manifests, annotations: j.annotations as Record<string, string> | undefined } };
  }
  if (isImageManifestType(mt)) {
    if (!Array.isArray(j.layers)) throw new BadInputError(`${what}: manifest without layers`);
    const config = checkDescriptor(j.config, `${what}: config`);
    const layers = j.layers.map((l, i) => checkDescriptor(l, `${what}: layers[${i}]`));
    return { kind: 'manifest', manifest: { schemaVersion: 2, mediaType: mt!, config, layers, annotations: j.annotations as Record<string, string> | undefined } };
  }
  throw new BadInputError(`${what}: unsupported manifest media type "${mt ?? ct ?? 'unknown'}"`);
}

/** Config blobs we can read (an image config with rootfs.diff_ids). */
export function checkConfigType(mediaType: string, what: string): void {
  if (mediaType !== MT.dockerConfig && mediaType !== MT.ociConfig) {
    throw new BadInputError(`${what}: unsupported config media type "${mediaType}" (not a container image)`);
  }
}
