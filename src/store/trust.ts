/**
 * The store's root of trust, modelled on CernVM-FS's signed manifest: Ed25519 keys (node:crypto), signing
 * and republishing the repository manifest (src/format/repo-manifest.ts), with the image index it names
 * (src/format/image-index.ts), on the writer side, and on the reader side checking a manifest (signature by a
 * trusted key, expiry, revision never lower than one seen, kept in a file for replay protection across restarts)
 * and what it names (by hash and size).
 */
import { createHash, createPrivateKey, randomBytes, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFile, readdir, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import {
  REPO_MANIFEST_FILE, REPO_MANIFEST_MEDIA_TYPE, decodeManifestFile, encodeManifestFile, encodeRepoManifest, parseRepoManifest,
  type NamedEntry, type RepoManifest,
} from '../format/repo-manifest.js';
import { encodeImageIndex, imageIndexEntry, parseImageIndex, type ImageIndexEntry } from '../format/image-index.js';
import type { ThinImage } from '../format/descriptor.js';
import { IMAGES_DIR, INDEXES_DIR, LAYERS_DIR, TXN_DIR, imageIndexPath, imageNameFromFile, imagePath } from './layout.js';
import { withCommitLock, withLayerLock } from './lock.js';
import { decodeObject, encodeObject } from './codec.js';
import { TrustError, ThinfsError, EXIT } from '../util/errors.js';
import { atomicWrite } from '../util/fsutil.js';
import { sha256hex } from '../util/hash.js';
import type { Logger } from '../util/log.js';

/** How long a signature stays valid unless said otherwise (CernVM-FS whitelists: 30 days). */
export const DEFAULT_VALIDITY_MS = 30 * 24 * 3600_000;
/** Where writers find the private key (a path), and the validity in seconds. */
export const SIGNING_KEY_ENV = 'THINFS_SIGNING_KEY';
const VALIDITY_ENV = 'THINFS_MANIFEST_VALIDITY';

/** A key's id: the first 16 hex digits of the SHA-256 of its public key (SubjectPublicKeyInfo DER). */
function keyIdOf(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return sha256hex(pub.export({ type: 'spki', format: 'der' })).slice(0, 16);
}

export function generateSigningKey(): { privatePem: string; publicPem: string; keyId: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: keyIdOf(publicKey),
  };
}

export async function loadPrivateKey(file: string): Promise<KeyObject> {
  let k: KeyObject;
  try { k = createPrivateKey(await readFile(file)); } catch (e) {
    throw new ThinfsError(`cannot load signing key ${file}: ${(e as Error).message}`, EXIT.USAGE);
  }
  if (k.asymmetricKeyType !== 'ed25519') throw new ThinfsError(`signing key ${file} is ${k.asymmetricKeyType}, not ed25519`, EXIT.USAGE);
  return k;
}

/** Trusted public keys by key id (several during a rotation). */
export async function loadPublicKeys(files: string[]): Promise<Map<string, KeyObject>> {
  const out = new Map<string, KeyObject>();
  for (const f of files) {
    let k: KeyObject;
    try { k = createPublicKey(await readFile(f)); } catch (e) {
      throw new ThinfsError(`cannot load public key ${f}: ${(e as Error).message}`, EXIT.USAGE);
    }
    if (k.asymmetricKeyType !== 'ed25519') throw new ThinfsError(`public key ${f} is ${k.asymmetricKeyType}, not ed25519`, EXIT.USAGE);
    out.set(keyIdOf(k), k);
  }
  return out;
}

function signedManifestFile(m: RepoManifest, key: KeyObject | null): Buffer {
  const payload = encodeRepoManifest(m);
  return encodeManifestFile(payload, key ? { algorithm: 'ed25519', keyId: keyIdOf(key), signature: sign(null, payload, key) } : null);
}

/** Check a manifest file's signature against the trusted keys and its expiry; returns the manifest and the key id. */
function verifyManifestFile(file: Buffer, keys: Map<string, KeyObject>, now = Date.now()): { manifest: RepoManifest; keyId: string } {
  const { payload, signature } = decodeManifestFile(file);
  if (!signature) throw new TrustError('unsigned', 'the repository manifest is not signed');
  const key = keys.get(signature.keyId);
  if (!key) throw new TrustError('unknown-key', `the repository manifest is signed by key ${signature.keyId}, which is not among the trusted keys (${[...keys.keys()].join(', ')})`);
  if (!verify(null, payload, key, signature.signature)) throw new TrustError('bad-signature', `the repository manifest's signature does not verify with key ${signature.keyId}`);
  const manifest = parseRepoManifest(payload);
  if (Date.parse(manifest.expires) <= now) throw new TrustError('expired', `the repository manifest (revision ${manifest.revision}) expired at ${manifest.expires}`);
  return { manifest, keyId: signature.keyId };
}

/**
 * The highest revision accepted so far, by signing key, in <dir>/revisions.json: a mount restarted against a
 * mirror serving an older (validly signed) manifest refuses it. Compared against the highest of all trusted keys,
 * so a rotation does not reopen the window.
 */
export class RevisionLog {
  constructor(readonly dir: string) {}
  private get file(): string { return join(this.dir, 'revisions.json'); }
  async read(): Promise<Record<string, number>> {
    try { return JSON.parse(await readFile(this.file, 'utf8')) as Record<string, number>; } catch { return {}; }
  }
  async highest(keyIds: Iterable<string>): Promise<number> {
    const all = await this.read();
    let max = 0;
    for (const k of keyIds) max = Math.max(max, Number(all[k]) || 0);
    return max;
  }
  async record(keyId: string, revision: number): Promise<void> {
    if (((await this.read())[keyId] ?? 0) >= revision) return;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // Processes sharing a trust dir (read commands run at once, a mount and its podman watch) update it under a lock:
    // a read-modify-write racing another could otherwise write back a lower revision than one already recorded.
    const release = await lockfile.lock(this.file, {
      realpath: false, stale: 10_000, retries: { retries: 1000, factor: 1.2, minTimeout: 10, maxTimeout: 200 },
    });
    try {
      const all = await this.read();
      if ((all[keyId] ?? 0) >= revision) return;
      all[keyId] = revision;
      await atomicWrite(this.file, JSON.stringify(all) + '\n');
    } finally {
      await release();
    }
  }
}

/** The reader's side: the manifest it trusts now, and the checks of everything fetched against it. */
export class TrustAnchor {
  current: RepoManifest | null = null;
  currentFile: Buffer | null = null;
  constructor(readonly keys: Map<string, KeyObject>, readonly revisions: RevisionLog | null) {}

  /**
   * Verify a manifest file without making it current: signed by a trusted key, not expired, and no lower a revision
   * than any seen (here or persisted). Run inside the backend's read, so a mirror serving a damaged or older manifest
   * is that mirror's failure and the next one is asked.
   */
  async check(file: Buffer): Promise<{ manifest: RepoManifest; keyId: string }> {
    const v = verifyManifestFile(file, this.keys);
    const seen = Math.max(this.current?.revision ?? 0, this.revisions ? await this.revisions.highest(this.keys.keys()) : 0);
    if (v.manifest.revision < seen) throw new TrustError('replayed', `the repository manifest has revision ${v.manifest.revision}, lower than revision ${seen} already seen`);
    return v;
  }

  /** Verify a manifest file (check) and make it current. */
  async accept(file: Buffer): Promise<RepoManifest> {
    const { manifest, keyId } = await this.check(file);
    await this.revisions?.record(keyId, manifest.revision);
    this.current = manifest;
    this.currentFile = file;
    return manifest;
  }

  private need(): RepoManifest {
    if (!this.current) throw new TrustError('unsigned', 'no signed repository manifest loaded');
    return this.current;
  }

  layer(hex: string): NamedEntry | null { return this.need().layers[hex] ?? null; }
  image(name: string): NamedEntry | null { return this.need().images[name] ?? null; }

  /** Bytes fetched for `what` must be exactly those the manifest names. */
  static check(what: string, entry: NamedEntry, bytes: Buffer): void {
    const got = sha256hex(bytes);
    if (bytes.length !== entry.size || got !== entry.sha256) {
      throw new TrustError('hash-mismatch', `${what} hashes to ${got} (${bytes.length} bytes); the signed manifest names ${entry.sha256} (${entry.size} bytes)`);
    }
  }
}

export interface RepublishOptions {
  /** Sign with this key; without one, an unsigned manifest is written (never over a signed one). */
  key?: KeyObject | null;
  validityMs?: number;
  log?: Logger;
}

/** The signing key and validity writers use unless told otherwise: from THINFS_SIGNING_KEY / THINFS_MANIFEST_VALIDITY. */
export async function writerSigningOptions(): Promise<RepublishOptions> {
  const keyFile = process.env[SIGNING_KEY_ENV];
  const v = process.env[VALIDITY_ENV];
  return { key: keyFile ? await loadPrivateKey(keyFile) : null, validityMs: v ? Number(v) * 1000 : undefined };
}

async function hashDir(root: string, dir: string): Promise<Array<{ name: string; entry: NamedEntry; bytes: Buffer }>> {
  const names = await readdir(join(root, dir)).catch(() => [] as string[]);
  const out: Array<{ name: string; entry: NamedEntry; bytes: Buffer }> = [];
  for (const n of names) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const b = await readFile(join(root, dir, n)).catch(() => null);
    if (b) out.push({ name: n, entry: { sha256: sha256hex(b), size: b.length }, bytes: b });
  }
  return out;
}

/** The index entry of descriptor bytes the manifest names under `name`; null for one no reader would accept. */
function indexEntryOf(name: string, bytes: Buffer): ImageIndexEntry | null {
  try {
    const d = JSON.parse(bytes.toString('utf8')) as ThinImage;
    return d?.name === name ? imageIndexEntry(d) : null;
  } catch { return null; }
}

/**
 * Store the image index as indexes/<hash>, framed (zstd) as objects are, beside data/ rather than in it: it is the
 * store's metadata, not content, and counts of objects stay those of content. Always written anew: a fresh mtime
 * keeps a gc that listed an older copy as replaced from taking it, and the caller holds the commit side of the sweep
 * lock while the manifest comes to name it, so no sweep runs in between.
 */
async function writeImageIndex(root: string, images: Record<string, ImageIndexEntry>): Promise<NamedEntry> {
  const bytes = encodeImageIndex(images);
  const entry = { sha256: sha256hex(bytes), size: bytes.length };
  await mkdir(join(root, INDEXES_DIR), { recursive: true });
  await atomicWrite(join(root, imageIndexPath(entry.sha256)), encodeObject(bytes), join(root, TXN_DIR));
  return entry;
}

/**
 * The repository manifest of a store on this filesystem, parsed but not verified (gc and fsck of the writer's own
 * store); null when it has none or it does not parse.
 */
export async function readLocalManifest(root: string): Promise<RepoManifest | null> {
  const file = await readFile(join(root, REPO_MANIFEST_FILE)).catch(() => null);
  if (!file) return null;
  try { return parseRepoManifest(decodeManifestFile(file).payload); } catch { return null; }
}

/**
 * Whether the store's repository manifest names layer `hex` with the bytes its layer manifest has now. Not so after a
 * writer died between writing the layer manifest and republishing (or a republish failed): the layer is in layers/
 * but nodes reading through the manifest do not see it.
 */
export async function manifestNamesLayer(root: string, hex: string): Promise<boolean> {
  const named = (await readLocalManifest(root))?.layers[hex];
  if (!named) return false;
  const b = await readFile(join(root, LAYERS_DIR, `${hex}.json`)).catch(() => null);
  return !!b && b.length === named.size && sha256hex(b) === named.sha256;
}

/**
 * Where the repository manifest no longer says what layers/ and images/ hold (each a line), or [] when it does: a
 * writer died between a layer manifest or descriptor and its republish, or the republish failed. Nodes reading through
 * the manifest do not see those layers and images (or see an image's former descriptor). A store without layers,
 * images or manifest is in agreement. `writtenBefore` (ms): files written since are left out, their writers may still
 * be on their way to republishing (a check of a store in use).
 */
export async function repoManifestDrift(root: string, writtenBefore = Infinity): Promise<string[]> {
  const m = await readLocalManifest(root);
  const out: string[] = [];
  const scan = async (dir: string, key: (file: string) => string | null) => {
    const have = new Map<string, NamedEntry | null>(); // null: written too recently to judge
    for (const n of await readdir(join(root, dir)).catch(() => [] as string[])) {
      const k = n.endsWith('.json') && !n.startsWith('.') ? key(n) : null;
      if (!k) continue;
      const st = await stat(join(root, dir, n)).catch(() => null);
      const b = st && st.mtimeMs < writtenBefore ? await readFile(join(root, dir, n)).catch(() => null) : null;
      have.set(k, b ? { sha256: sha256hex(b), size: b.length } : null);
    }
    return have;
  };
  const compare = (what: string, named: Record<string, NamedEntry>, have: Map<string, NamedEntry | null>) => {
    for (const [k, e] of have) {
      const n = named[k];
      if (!e) continue;
      if (!n) out.push(`${what} ${k} is not named by the repository manifest`);
      else if (n.sha256 !== e.sha256 || n.size !== e.size) out.push(`${what} ${k}: the repository manifest names other bytes than ${what === 'layer' ? 'its manifest' : 'its descriptor'} has`);
    }
    for (const k of Object.keys(named)) if (!have.has(k)) out.push(`${what} ${k} is named by the repository manifest but not in the store`);
  };
  const layers = await scan(LAYERS_DIR, (n) => (/^[0-9a-f]{64}\.json$/.test(n) ? n.slice(0, -5) : null));
  const images = await scan(IMAGES_DIR, (n) => { try { return imageNameFromFile(n); } catch { return null; } });
  if (!m && !layers.size && !images.size) return [];
  compare('layer', m?.layers ?? {}, layers);
  compare('image', m?.images ?? {}, images);
  return out;
}

/**
 * What is wrong with the image index a store's manifest names (src/format/image-index.ts), or null: missing, not
 * its size, not parsing, or not saying what the descriptors the same manifest names say.
 */
export async function imageIndexProblem(root: string, m: RepoManifest): Promise<string | null> {
  const entry = m.imageIndex;
  if (!entry) return null;
  const file = await readFile(join(root, imageIndexPath(entry.sha256))).catch(() => null);
  if (!file) return 'missing';
  let raw: Buffer;
  try { raw = decodeObject(entry.sha256, file); } catch (e) { return `corrupt: ${(e as Error).message}`; }
  if (raw.length !== entry.size) return `${raw.length} bytes, the manifest names ${entry.size}`;
  let index: Record<string, ImageIndexEntry>;
  try { index = parseImageIndex(raw).images; } catch (e) { return (e as Error).message; }
  const want: Record<string, ImageIndexEntry> = {};
  for (const name of Object.keys(m.images)) {
    const bytes = await readFile(join(root, imagePath(name))).catch(() => null);
    // A descriptor that is not the one the manifest names is fsck's to report (broken image), not the index's.
    if (!bytes || sha256hex(bytes) !== m.images[name]!.sha256) { delete index[name]; continue; }
    const e = indexEntryOf(name, bytes);
    if (e) want[name] = e;
  }
  const got = encodeImageIndex(index);
  if (!got.equals(encodeImageIndex(want))) {
    const differ = [...new Set([...Object.keys(index), ...Object.keys(want)])]
      .filter((n) => JSON.stringify(index[n] ?? null) !== JSON.stringify(want[n] ?? null)).sort();
    return `disagrees with the descriptors of images [${differ.slice(0, 10).join(' ')}${differ.length > 10 ? ' ...' : ''}]`;
  }
  return null;
}

/**
 * Write a new revision of the repository manifest naming every layer manifest and image descriptor now in the
 * store, and the image index derived from those descriptors (src/format/image-index.ts). Serialized across
 * processes and nodes by the store's lock ("repository-manifest"), so two writers never publish the same revision
 * or lose each other's entries (each rescans under the lock). Returns null when the store's manifest is signed and
 * no key was given (the signed one is left as it is: readers keep trusting it).
 */
export async function republishManifest(root: string, o: RepublishOptions = {}): Promise<RepoManifest | null> {
  return withLayerLock(root, 'repository-manifest', async (lock) => {
    const path = join(root, REPO_MANIFEST_FILE);
    let prevRevision = 0;
    const prevFile = await readFile(path).catch(() => null);
    if (prevFile) {
      try {
        const { payload, signature } = decodeManifestFile(prevFile);
        if (signature && !o.key) {
          o.log?.warn({ store: root, keyId: signature.keyId }, `the store's manifest is signed: published without re-signing; sign with ${SIGNING_KEY_ENV} set or thinfs sign`);
          return null;
        }
        prevRevision = parseRepoManifest(payload).revision;
      } catch (e) {
        o.log?.warn({ err: e }, 'previous repository manifest unreadable: starting a new revision sequence above it');
        prevRevision = Math.floor(Date.now() / 1000);
      }
    }
    const layers: Record<string, NamedEntry> = {};
    for (const { name, entry } of await hashDir(root, LAYERS_DIR)) {
      const hex = name.slice(0, -5);
      if (/^[0-9a-f]{64}$/.test(hex)) layers[hex] = entry;
    }
    const images: Record<string, NamedEntry> = {};
    // The image index is derived from the very bytes the manifest names, so it never says more than they do.
    const indexed: Record<string, ImageIndexEntry> = {};
    for (const { name, entry, bytes } of await hashDir(root, IMAGES_DIR)) {
      let img: string | null = null;
      try { img = imageNameFromFile(name); } catch { /* not a name this store wrote */ }
      if (!img) continue;
      images[img] = entry;
      const e = indexEntryOf(img, bytes);
      if (e) indexed[img] = e;
    }
    const now = Date.now();
    const m: RepoManifest = {
      schemaVersion: 1, mediaType: REPO_MANIFEST_MEDIA_TYPE, revision: prevRevision + 1,
      timestamp: new Date(now).toISOString(), expires: new Date(now + (o.validityMs ?? DEFAULT_VALIDITY_MS)).toISOString(),
      layers, images,
    };
    await withCommitLock(root, `repository-manifest-${process.pid}-${randomBytes(4).toString('hex')}`, async () => {
      m.imageIndex = await writeImageIndex(root, indexed);
      lock.check(); // lost meanwhile: another writer may be publishing a revision of its own
      await atomicWrite(path, signedManifestFile(m, o.key ?? null), join(root, TXN_DIR));
    });
    return m;
  });
}
