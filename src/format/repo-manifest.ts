/**
 * The repository manifest (the CernVM-FS `.cvmfspublished` idea): one file at the store root that names
 * every published layer manifest and image descriptor by SHA-256 and size, with a revision that only
 * grows, a timestamp and an expiry. Owns the schema, its validation and the signed file's byte layout:
 *
 *   <payload: the manifest as JSON, one line>\n
 *   --\n
 *   ed25519 <key id> <base64 signature of the payload bytes>\n
 *
 * An unsigned store writes the payload and `--\nunsigned\n`. Signing and checking live in src/store/trust.ts.
 * `imageIndex` (optional: older readers ignore it, and the signature covers the bytes) names the derived image index.
 */
import { TrustError } from '../util/errors.js';

export const REPO_MANIFEST_FILE = 'thinfs-published';
export const REPO_MANIFEST_MEDIA_TYPE = 'application/vnd.thinfs.repository.v1+json';
/** Larger is refused before reading: a hostile mirror cannot exhaust memory with it. */
export const REPO_MANIFEST_MAX = 256 << 20;

export interface NamedEntry { sha256: string; size: number }

export interface RepoManifest {
  schemaVersion: 1;
  mediaType: typeof REPO_MANIFEST_MEDIA_TYPE;
  /** Grows by one at every publication; a client refuses a revision lower than one it has seen. */
  revision: number;
  /** When this revision was signed, and after when it is refused (ISO 8601, UTC). */
  timestamp: string;
  expires: string;
  /** Layer manifests by diff id hex (layers/<hex>.json). */
  layers: Record<string, NamedEntry>;
  /** Image descriptors by image name (images/<encoded name>.json). */
  images: Record<string, NamedEntry>;
  /**
   * The published image index (src/format/image-index.ts) derived from exactly these descriptors: an object in
   * data/ named by the hash and size of its decoded bytes. Absent in manifests written before it existed.
   */
  imageIndex?: NamedEntry;
}

export interface SignatureLine { algorithm: 'ed25519'; keyId: string; signature: Buffer }

export interface ManifestFile { payload: Buffer; signature: SignatureLine | null }

const SEPARATOR = Buffer.from('\n--\n');

export function encodeManifestFile(payload: Buffer, signature: SignatureLine | null): Buffer {
  const tail = signature ? `ed25519 ${signature.keyId} ${signature.signature.toString('base64')}\n` : 'unsigned\n';
  return Buffer.concat([payload, SEPARATOR, Buffer.from(tail)]);
}

/** Split a manifest file into its payload bytes and signature line (nothing checked yet). */
export function decodeManifestFile(file: Buffer): ManifestFile {
  const at = file.lastIndexOf(SEPARATOR);
  if (at < 0) throw new TrustError('malformed', 'repository manifest has no signature block ("--" line)');
  const payload = file.subarray(0, at);
  const tail = file.subarray(at + SEPARATOR.length).toString('utf8');
  if (tail === 'unsigned\n') return { payload, signature: null };
  const m = /^ed25519 ([0-9a-f]{16}) ([A-Za-z0-9+/]+={0,2})\n$/.exec(tail);
  if (!m) throw new TrustError('malformed', 'repository manifest signature line is not "ed25519 <key id> <base64>"');
  return { payload, signature: { algorithm: 'ed25519', keyId: m[1]!, signature: Buffer.from(m[2]!, 'base64') } };
}

const HEX64 = /^[0-9a-f]{64}$/;

function checkEntries(v: unknown, what: string, keyOk: (k: string) => boolean): Record<string, NamedEntry> {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new TrustError('malformed', `repository manifest: ${what} is not an object`);
  const out: Record<string, NamedEntry> = Object.create(null);
  for (const [k, e] of Object.entries(v as Record<string, NamedEntry>)) {
    if (!keyOk(k) || !e || typeof e.sha256 !== 'string' || !HEX64.test(e.sha256) || !Number.isSafeInteger(e.size) || e.size < 0) {
      throw new TrustError('malformed', `repository manifest: bad ${what} entry ${JSON.stringify(k)}`);
    }
    out[k] = { sha256: e.sha256, size: e.size };
  }
  return out;
}

/** Parse and validate a payload (after its signature was checked). */
export function parseRepoManifest(payload: Buffer): RepoManifest {
  let j: RepoManifest;
  try { j = JSON.parse(payload.toString('utf8')) as RepoManifest; } catch (e) {
    throw new TrustError('malformed', `repository manifest is not JSON (${(e as Error).message})`);
  }
  if (j?.schemaVersion !== 1 || j.mediaType !== REPO_MANIFEST_MEDIA_TYPE) throw new TrustError('malformed', 'not a thinfs v1 repository manifest');
  if (!Number.isSafeInteger(j.revision) || j.revision < 1) throw new TrustError('malformed', `repository manifest: bad revision ${String(j.revision)}`);
  if (Number.isNaN(Date.parse(j.timestamp)) || Number.isNaN(Date.parse(j.expires))) throw new TrustError('malformed', 'repository manifest: bad timestamp or expiry');
  const m: RepoManifest = {
    schemaVersion: 1, mediaType: REPO_MANIFEST_MEDIA_TYPE, revision: j.revision, timestamp: j.timestamp, expires: j.expires,
    layers: checkEntries(j.layers, 'layers', (k) => HEX64.test(k)),
    images: checkEntries(j.images, 'images', (k) => k.length > 0 && k.length <= 4096),
  };
  if (j.imageIndex !== undefined) m.imageIndex = checkEntries({ imageIndex: j.imageIndex }, 'imageIndex', () => true).imageIndex;
  return m;
}

/** The payload bytes of a manifest: one line of JSON, keys in a fixed order. */
export function encodeRepoManifest(m: RepoManifest): Buffer {
  const sorted = (r: Record<string, NamedEntry>) => Object.fromEntries(Object.keys(r).sort().map((k) => [k, r[k]]));
  return Buffer.from(JSON.stringify({ ...m, layers: sorted(m.layers), images: sorted(m.images) }));
}
