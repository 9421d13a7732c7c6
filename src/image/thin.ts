import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import type { Logger } from '../util/log.js';
import { BadInputError, IntegrityError, NotFoundError } from '../util/errors.js';
import { encodeEntry, padding, END_OF_ARCHIVE } from '../tar/writer.js';
import { readTar } from '../tar/reader.js';
import { RegistryClient } from '../registry/client.js';
import { MT, parseManifest, type ImageManifest } from '../registry/media.js';
import { selectPlatform, hostPlatform, type Platform } from '../registry/platform.js';
import { formatReference, type ImageReference } from '../registry/reference.js';
import { THIN_ANNOTATION, parseThinImage, type ThinImage } from '../format/descriptor.js';

/** The one file inside a thin image's only layer (CernVM-FS DUCC names it the same way). */
const THIN_FILE = 'thin.json';
const ANN_VERSION = 'org.thinfs.thin.version';
const ANN_REFERENCE = 'org.thinfs.thin.reference';
const ANN_MANIFEST = 'org.thinfs.thin.manifest-digest';
const ANN_DESCRIPTOR = 'org.thinfs.thin.descriptor-digest';
const MAX_THIN = 16 << 20;

function sha256(b: Buffer): string { return `sha256:${createHash('sha256').update(b).digest('hex')}`; }

/** REF -> REF-thin (a digest-only reference becomes tag sha256-<hex>-thin). */
export function thinReference(ref: ImageReference): ImageReference {
  const tag = ref.tag ? `${ref.tag}-thin` : `${ref.digest!.replace(':', '-')}-thin`;
  if (tag.length > 128) throw new BadInputError(`tag "${tag}" is longer than 128 characters; give the destination with --push-to`);
  return { registry: ref.registry, repository: ref.repository, tag };
}

/** A deterministic one-file tar: same descriptor bytes, same layer digest. */
function thinLayerTar(json: Buffer, mtime: number): Buffer {
  const hdr = encodeEntry({
    path: Buffer.from(THIN_FILE), type: 'file', mode: 0o644, uid: 0, gid: 0, uname: '', gname: '', size: json.length,
    mtime, mtimeNs: 0, linkpath: null, devmajor: 0, devminor: 0, xattrs: new Map(),
  });
  return Buffer.concat([hdr, json, Buffer.alloc(padding(json.length)), END_OF_ARCHIVE]);
}

/** Build the tiny OCI image carrying the descriptor (config keeps the original runtime config). */
function buildThinImage(desc: ThinImage): { manifest: Buffer; config: Buffer; layer: Buffer } {
  const json = Buffer.from(JSON.stringify(desc, null, 2) + '\n');
  const created = Number.isFinite(Date.parse(desc.created)) ? desc.created : new Date().toISOString();
  const layer = thinLayerTar(json, Math.floor(Date.parse(created) / 1000));
  const layerDigest = sha256(layer);
  const orig = desc.config as { config?: unknown };
  const config = Buffer.from(JSON.stringify({
    created,
    architecture: desc.platform.architecture,
    os: desc.platform.os,
    ...(desc.platform.variant ? { variant: desc.platform.variant } : {}),
    ...(orig.config ? { config: orig.config } : {}),
    rootfs: { type: 'layers', diff_ids: [layerDigest] },
    history: [{ created, created_by: 'docker2thin', comment: `thin image of ${desc.reference} (${desc.manifestDigest})` }],
  }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256(config), size: config.length },
    layers: [{ mediaType: MT.ociLayer, digest: layerDigest, size: layer.length, annotations: { 'org.opencontainers.image.title': THIN_FILE } }],
    annotations: {
      [THIN_ANNOTATION]: 'true',
      [ANN_VERSION]: String(desc.schemaVersion),
      [ANN_REFERENCE]: desc.reference,
      [ANN_MANIFEST]: desc.manifestDigest,
      [ANN_DESCRIPTOR]: sha256(json),
      'org.opencontainers.image.created': created,
    },
  }));
  return { manifest, config, layer };
}

/** Push the thin image: config and layer blobs (skipped if present), then the manifest under the tag. */
export async function pushThinImage(desc: ThinImage, target: ImageReference, client: RegistryClient, opts: { chunkSize?: number; log?: Logger } = {}): Promise<string> {
  const { manifest, config, layer } = buildThinImage(desc);
  const repo = target.repository;
  const how = await client.uploadBlob(repo, sha256(layer), layer, { chunkSize: opts.chunkSize });
  await client.uploadBlob(repo, sha256(config), config, { chunkSize: opts.chunkSize });
  const digest = await client.putManifest(repo, target.tag ?? target.digest!, manifest, MT.ociManifest);
  opts.log?.info({ reference: formatReference(target), digest, upload: how }, 'thin image pushed');
  return digest;
}

/** Read a thin image back: verify every digest and the annotation, extract and validate thin.json. */
export async function pullThinImage(ref: ImageReference, client: RegistryClient, opts: { platform?: Platform } = {}): Promise<{ descriptor: ThinImage; raw: Buffer; manifestDigest: string; reference: string }> {
  const repo = ref.repository;
  // "pull-thin REF" may name the original image: its thin image is REF-thin.
  const candidates: ImageReference[] = [ref];
  if (ref.tag && !ref.digest && !ref.tag.endsWith('-thin')) candidates.push({ ...ref, tag: `${ref.tag}-thin` });
  for (const [i, used] of candidates.entries()) {
    const last = i === candidates.length - 1;
    const what = formatReference(used);
    let got: { raw: Buffer; contentType?: string; digest: string };
    try { got = await client.getManifest(repo, used.digest ?? used.tag!); } catch (e) {
      if (e instanceof NotFoundError && !last) continue;
      throw e;
    }
    let p = parseManifest(got.raw, got.contentType, what);
    let manifestDigest = got.digest;
    if (p.kind === 'index') {
      const pick = selectPlatform(p.index.manifests, opts.platform ?? hostPlatform(), what);
      const child = await client.getManifest(repo, pick.digest);
      manifestDigest = child.digest;
      p = parseManifest(child.raw, child.contentType ?? pick.mediaType, what);
      if (p.kind !== 'manifest') throw new BadInputError(`${what}: nested index`);
    }
    if (p.manifest.annotations?.[THIN_ANNOTATION] !== 'true') {
      if (!last) continue;
      throw new BadInputError(`${what} is not a thin image (no ${THIN_ANNOTATION} annotation)${candidates.length > 1 ? ` and neither is ${formatReference(candidates[0]!)}` : ''}`);
    }
    return readThin(client, repo, p.manifest, manifestDigest, what);
  }
  throw new NotFoundError(`${formatReference(ref)}: no thin image`);
}

async function readThin(client: RegistryClient, repo: string, m: ImageManifest, manifestDigest: string, what: string): Promise<{ descriptor: ThinImage; raw: Buffer; manifestDigest: string; reference: string }> {
  if (m.layers.length !== 1) throw new BadInputError(`${what}: a thin image has exactly one layer, this one has ${m.layers.length}`);
  const l = m.layers[0]!;
  // A thin image copied by other tools (skopeo) may come back gzip-compressed.
  const gz = l.mediaType === MT.ociLayerGzip || l.mediaType === MT.dockerLayerGzip;
  if (l.mediaType !== MT.ociLayer && l.mediaType !== MT.dockerLayerTar && !gz) {
    throw new BadInputError(`${what}: unsupported thin layer media type "${l.mediaType}"`);
  }
  if (l.size > MAX_THIN) throw new BadInputError(`${what}: thin layer of ${l.size} bytes is implausibly large`);
  const blob = await client.getBlobBuffer(repo, l.digest, MAX_THIN);
  let tar: Buffer;
  try { tar = gz ? gunzipSync(blob, { maxOutputLength: MAX_THIN }) : blob; } catch (e) {
    throw new BadInputError(`${what}: thin layer does not decompress (${(e as Error).message})`);
  }
  let raw: Buffer | null = null;
  for await (const { entry, data } of readTar((async function* () { yield tar; })())) {
    const parts: Buffer[] = [];
    for await (const c of data) parts.push(c);
    if (entry.type === 'file' && entry.path.toString('utf8').replace(/^\.\//, '') === THIN_FILE) raw = Buffer.concat(parts);
  }
  if (!raw) throw new BadInputError(`${what}: thin layer has no ${THIN_FILE}`);
  const want = m.annotations?.[ANN_DESCRIPTOR];
  if (want && sha256(raw) !== want) throw new IntegrityError(want, `${what}: ${THIN_FILE} hashes to ${sha256(raw)}, the manifest annotation says ${want}`);
  const descriptor = parseThinImage(raw, `${what} ${THIN_FILE}`);
  return { descriptor, raw, manifestDigest, reference: what };
}
