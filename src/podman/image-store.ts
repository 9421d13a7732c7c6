// The podman image store generated over a thinfs mount: a read-only containers/storage tree (overlay
// driver layout, as podman's `additionalimagestores` reads it) whose layer `diff` directories are
// symlinks to the mount's layers/<diff id hex>/. Owns only that tree: the store is read, the mount is
// never touched (symlink targets need not be reachable while the tree is written).
//
// Layout written under DIR (what c/storage 1.43 reads from an additional image store):
//   overlay/<layer id>/diff -> MNT/layers/<hex>   overlay/<layer id>/link (short name)
//   overlay/<layer id>/lower ("l/<parent link>:...")  overlay/l/<short name> -> ../<layer id>/diff
//   overlay-layers/layers.json + layers.lock     overlay-images/images.json + images.lock
//   overlay-images/<image id>/<big data>         (config under its digest, manifest)
import { mkdir, readFile, readdir, rename, rm, symlink, writeFile, readlink, lstat, stat } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import type { Store } from '../store/store.js';
import type { LayerManifest } from '../store/types.js';
import type { ThinImage } from '../format/descriptor.js';
import type { Logger } from '../util/log.js';
import { atomicWrite } from '../util/fsutil.js';
import { digestHex, sha256hex } from '../util/hash.js';
import { BadInputError, errorMessage, NotFoundError } from '../util/errors.js';

const DRIVER = 'overlay';
/** In a layer directory no image uses any more: since when (its mtime). */
const UNUSED_MARKER = '.thinfs-unused';
/** How long a layer directory outlives its last image by default (containers created from it can still start). */
const KEEP_UNUSED_MS = 7 * 24 * 3600_000;
/**
 * An image config or registry manifest is a small JSON document: a stored one claiming more is refused from its header
 * (its size is known to nobody here, and a small hostile zstd frame could otherwise expand to gigabytes).
 */
const BLOB_MAX = 16 << 20;

export interface PodmanStoreOptions {
  store: Store;
  /** Where the thinfs mount is (or will be): the layer symlinks point into MNT/layers/. */
  mountpoint: string;
  /** The generated image store (what storage.conf's additionalimagestores names). */
  dir: string;
  /** A layer directory no image uses any more is kept this long (default 7 days): 0 removes it at once. */
  keepUnusedMs?: number;
  log?: Logger;
}

export interface PodmanStoreResult {
  images: Array<{ name: string; id: string; names: string[] }>;
  layers: number;
  /** Descriptors not (yet) runnable, with why (a layer the publisher has not published yet, bad JSON ...). */
  skipped: Array<{ name: string; reason: string }>;
  /** Whether images.json or layers.json changed on disk. */
  changed: boolean;
}

/** containers/storage's archive.Compression values, as layers.json records them. */
function compressionCode(mediaType: string): number {
  if (/gzip/.test(mediaType)) return 2;
  if (/zstd/.test(mediaType)) return 4;
  return 0;
}

/** Layer ids as podman derives them when it pulls (c/image storage destination): the chain of diff ids. */
function layerIds(diffIds: string[]): string[] {
  const ids: string[] = [];
  for (const d of diffIds) {
    const hex = digestHex(d);
    ids.push(ids.length ? sha256hex(Buffer.from(`${ids[ids.length - 1]}+${hex}`)) : hex);
  }
  return ids;
}

/** The short name c/storage keeps under overlay/l/ (26 upper-case base32 characters), derived from the id so reruns agree. */
function linkName(id: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const h = createHash('sha256').update(`thinfs-link:${id}`).digest();
  let bits = 0; let acc = 0; let out = '';
  for (const b of h) {
    acc = (acc << 8) | b; bits += 8;
    while (bits >= 5 && out.length < 26) { out += alphabet[(acc >> (bits - 5)) & 31]; bits -= 5; }
    if (out.length === 26) break;
  }
  return out;
}

/** c/storage's file name for a big-data key: kept when made of [0-9a-z.], else "=" + base64 of the key. */
function bigDataFileName(key: string): string {
  return /^[0-9a-z.]*$/.test(key) ? key : `=${Buffer.from(key).toString('base64')}`;
}

/**
 * The names podman matches `podman run REF` against: a registry reference as given (qualified as podman
 * qualifies it); an image from an OCI layout or archive gets localhost/<name>, as `podman import` names one.
 */
function imageNames(desc: ThinImage): string[] {
  const ref = desc.reference ?? '';
  if (/^(oci|docker-archive|oci-archive|dir):/.test(ref) || !ref) {
    const n = desc.name.includes(':') ? desc.name : `${desc.name}:latest`;
    return /^[a-z0-9][a-z0-9._\/-]*:[\w][\w.-]{0,127}$/.test(n) ? [`localhost/${n}`] : [];
  }
  // A reference by digest names the image REPO@DIGEST, as a pull by digest does (not a dangling <none> image):
  // `podman images` shows its repository and RepoDigests lists it. A tag given with the digest is dropped, as podman does.
  const at = ref.indexOf('@');
  const digest = at >= 0 ? ref.slice(at + 1) : '';
  if (at >= 0 && !/^sha256:[0-9a-f]{64}$/.test(digest)) return [];
  let repo = at >= 0 ? ref.slice(0, at) : ref;
  const tail = repo.slice(repo.lastIndexOf('/') + 1);
  if (digest && tail.includes(':')) repo = repo.slice(0, repo.length - tail.length + tail.indexOf(':'));
  const withTag = digest || tail.includes(':') ? repo : `${repo}:latest`;
  // An unqualified reference (no registry host) is what docker.io serves.
  const first = withTag.split('/')[0]!;
  const qualified = withTag.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost') ? withTag
    : `docker.io/${withTag.includes('/') ? '' : 'library/'}${withTag}`;
  return [digest ? `${qualified}@${digest}` : qualified];
}

/**
 * The image's creation time as a pull records it (c/image takes the config's "created"): what `podman images`
 * shows as CREATED and what --filter since/before and --sort created compare, not the time of the conversion.
 */
function configCreated(config: Buffer): string | undefined {
  try {
    const c = (JSON.parse(config.toString('utf8')) as { created?: unknown }).created;
    // Go's time.Time reads RFC 3339 only: anything else would make images.json unreadable for every image.
    return typeof c === 'string' && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/.test(c) && !Number.isNaN(Date.parse(c)) ? c : undefined;
  } catch { return undefined; }
}

/** An image manifest podman can read back: the registry's layers and config, in the descriptor's media types. */
function synthManifest(desc: ThinImage, config: { digest: string; size: number }): Buffer {
  const docker = desc.manifestMediaType === 'application/vnd.docker.distribution.manifest.v2+json';
  return Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: docker ? desc.manifestMediaType : 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: docker ? 'application/vnd.docker.container.image.v1+json' : 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.size },
    layers: desc.layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }));
}

interface LayerEntry {
  id: string; parent?: string; created: string;
  'compressed-diff-digest'?: string; 'compressed-size'?: number;
  'diff-digest': string; 'diff-size': number; compression: number;
}
interface ImageEntry {
  id: string; digest: string; names: string[]; layer: string; metadata: string;
  'big-data-names': string[]; 'big-data-sizes': Record<string, number>; 'big-data-digests': Record<string, string>;
  created: string;
}

/**
 * Bring DIR in line with the store's published images: every descriptor whose layers are all published
 * becomes a podman image (id = config digest, named by its reference). Idempotent; layer directories are
 * written before the JSON that names them and the JSON files are replaced atomically, so a podman reading
 * concurrently sees the old set or the new one. Layers and image data no image names any more are removed.
 */
export async function generatePodmanStore(o: PodmanStoreOptions): Promise<PodmanStoreResult> {
  const dir = resolve(o.dir);
  const mnt = resolve(o.mountpoint);
  const ovl = join(dir, DRIVER);
  const layersDir = join(dir, `${DRIVER}-layers`);
  const imagesDir = join(dir, `${DRIVER}-images`);
  for (const d of [join(ovl, 'l'), layersDir, imagesDir]) await mkdir(d, { recursive: true, mode: 0o755 });
  for (const f of [join(layersDir, 'layers.lock'), join(imagesDir, 'images.lock')]) {
    await writeFile(f, '', { flag: 'a', mode: 0o644 });
  }

  const result: PodmanStoreResult = { images: [], layers: 0, skipped: [], changed: false };
  const layers = new Map<string, LayerEntry>();
  const images = new Map<string, ImageEntry>();
  /** Which image each name goes to: the most recently converted descriptor claiming it. */
  const claims = new Map<string, { id: string; at: string }>();
  const bigData = new Map<string, Map<string, Buffer>>();

  for (const name of (await o.store.listImages()).sort()) {
    try {
      const desc = await o.store.getImage(name);
      if (!desc) continue;
      if (!Array.isArray(desc.layers) || !desc.layers.length) throw new BadInputError('descriptor names no layers');
      const manifests: LayerManifest[] = [];
      for (const l of desc.layers) {
        const lm = await o.store.getLayer(l.diffId);
        if (!lm) throw new NotFoundError(`layer ${l.diffId} is not published in the store yet`);
        manifests.push(lm);
      }
      // The config bytes podman hashes: the original (kept by docker2thin as a store object) when present;
      // else the descriptor's copy, serialised (a different image id, same content).
      let config: Buffer;
      let original = true;
      try { config = await o.store.getObject(digestHex(desc.configDigest), undefined, BLOB_MAX); } catch (e) {
        if (!(e instanceof NotFoundError)) o.log?.warn({ image: name, err: e }, 'stored config unusable; serving the descriptor\'s copy');
        config = Buffer.from(JSON.stringify(desc.config));
        original = false;
      }
      // A registry digest podman can parse, or none (the written manifest's digest is used then).
      const registryDigest = /^sha256:[0-9a-f]{64}$/.test(desc.manifestDigest ?? '') ? desc.manifestDigest : '';
      const configDigest = `sha256:${sha256hex(config)}`;
      // The registry's manifest as docker2thin kept it (verified by its hash); written anew when absent.
      let manifest: Buffer | null = null;
      if (original && registryDigest) manifest = await o.store.getObject(digestHex(registryDigest), undefined, BLOB_MAX).catch(() => null);
      manifest ??= synthManifest(desc, { digest: configDigest, size: config.length });
      const imageId = configDigest.slice(7);
      const ids = layerIds(desc.layers.map((l) => l.diffId));
      desc.layers.forEach((l, i) => {
        const lm = manifests[i]!;
        layers.set(ids[i]!, {
          id: ids[i]!, ...(i ? { parent: ids[i - 1]! } : {}), created: lm.created ?? desc.created,
          ...(l.digest ? { 'compressed-diff-digest': l.digest, 'compressed-size': l.size } : {}),
          'diff-digest': l.diffId, 'diff-size': lm.sizes.tar, compression: compressionCode(l.mediaType ?? ''),
        });
      });
      const manifestDigest = `sha256:${sha256hex(manifest)}`;
      const data = bigData.get(imageId) ?? new Map<string, Buffer>();
      data.set(configDigest, config);
      data.set(`manifest-${manifestDigest}`, manifest);
      data.set('manifest', manifest);
      // Also under the registry's manifest digest, so `podman run REF@<that digest>` finds the image.
      if (registryDigest && registryDigest !== manifestDigest) data.set(`manifest-${registryDigest}`, manifest);
      // And under the multi-platform index's digest it was selected from, as a pull keeps the index: RepoDigests
      // lists REPO@<index digest> and `podman run REPO@<index digest>` (the digest a registry shows for a tag) finds
      // the image instead of "image not known" (or a pull). The index bytes are not in the store: the key records
      // the index's digest over the platform manifest's bytes (what c/storage's lookup by digest reads).
      const indexDigest = /^sha256:[0-9a-f]{64}$/.test(desc.indexDigest ?? '') ? desc.indexDigest! : '';
      if (indexDigest && indexDigest !== manifestDigest && indexDigest !== registryDigest) data.set(`manifest-${indexDigest}`, manifest);
      bigData.set(imageId, data);
      const prev = images.get(imageId);
      const names = [...new Set([...(prev?.names ?? []), ...imageNames(desc)])];
      for (const n of imageNames(desc)) {
        const c = claims.get(n);
        if (!c || desc.created > c.at) claims.set(n, { id: imageId, at: desc.created ?? '' });
      }
      const digests: Record<string, string> = {};
      for (const k of data.keys()) digests[k] = k === 'manifest' || k === `manifest-${manifestDigest}` ? manifestDigest : k.startsWith('manifest-') ? k.slice(9) : k;
      images.set(imageId, {
        id: imageId, digest: indexDigest || registryDigest || manifestDigest, names, layer: ids[ids.length - 1]!, metadata: '{}',
        'big-data-names': [...data.keys()],
        'big-data-sizes': Object.fromEntries([...data].map(([k, v]) => [k, v.length])),
        'big-data-digests': digests,
        created: configCreated(config) ?? desc.created,
      });
    } catch (e) {
      result.skipped.push({ name, reason: errorMessage(e) });
      o.log?.warn({ image: name, err: e }, 'image not added to the podman store');
    }
  }

  // One image per name: c/storage refuses a read-only store giving a name to two images ("read-only image
  // store assigns the same name to multiple images": every podman command fails). Two descriptors with one
  // reference (a tag converted again under another store name) leave the older image nameless, as a pull
  // leaves the image a moved tag named before (<none>, still runnable by id or digest).
  for (const img of images.values()) {
    const lost = img.names.filter((n) => claims.get(n)?.id !== img.id);
    if (!lost.length) continue;
    img.names = img.names.filter((n) => !lost.includes(n));
    o.log?.warn({ image: img.id, names: lost }, 'name claimed by several images: given to the most recently converted one');
  }

  // Layer directories first (each made in a temporary directory and renamed into place).
  const diffOf = new Map<string, string>();
  for (const l of layers.values()) diffOf.set(l.id, join(mnt, 'layers', digestHex(l['diff-digest'])));
  for (const l of layers.values()) {
    const chain: string[] = [];
    for (let p = l.parent; p; p = layers.get(p)?.parent) chain.push(`l/${linkName(p)}`);
    await writeLayerDir(ovl, l.id, diffOf.get(l.id)!, linkName(l.id), chain.join(':'));
  }
  for (const [id, data] of bigData) {
    const d = join(imagesDir, id);
    await mkdir(d, { recursive: true, mode: 0o755 });
    for (const [k, v] of data) {
      const f = join(d, bigDataFileName(k));
      const have = await readFile(f).catch(() => null);
      if (!have || !have.equals(v)) await atomicWrite(f, v);
    }
  }

  // At every instant, every image images.json names has its layers in layers.json: layers added are listed
  // before the images that use them, and layers removed are dropped only after images.json stopped naming
  // them (until then layers.json lists old and new layers; their directories are still there).
  const byId = (a: { id: string }, b: { id: string }) => a.id.localeCompare(b.id);
  const layersFile = join(layersDir, 'layers.json');
  const layersJson = JSON.stringify([...layers.values()].sort(byId));
  const imagesJson = JSON.stringify([...images.values()].sort(byId));
  const old = await readFile(layersFile, 'utf8').then((t) => JSON.parse(t) as unknown, () => null);
  const kept = Array.isArray(old) ? (old as LayerEntry[]).filter((l) => l && typeof l.id === 'string' && !layers.has(l.id)) : [];
  if (await replaceIfChanged(layersFile, JSON.stringify([...layers.values(), ...kept].sort(byId)))) {
    result.changed = true; await touchLock(join(layersDir, 'layers.lock'));
  }
  if (await replaceIfChanged(join(imagesDir, 'images.json'), imagesJson)) { result.changed = true; await touchLock(join(imagesDir, 'images.lock')); }
  if (await replaceIfChanged(layersFile, layersJson)) { result.changed = true; await touchLock(join(layersDir, 'layers.lock')); }

  // Only now that the JSON no longer names them: what no image uses any more. A layer's directory (and its l/
  // link) outlives its last image by keepUnusedMs: a container created from a removed or replaced image names it
  // in its own layer's lower file, and podman starts (or restarts) that container only while it is there.
  const keepMs = o.keepUnusedMs ?? KEEP_UNUSED_MS;
  const keptDirs: string[] = [];
  for (const e of await readdir(ovl)) {
    if (e === 'l' || layers.has(e) || e.startsWith('.')) continue;
    const marker = join(ovl, e, UNUSED_MARKER);
    const since = await stat(marker).then((s) => s.mtimeMs, () => null);
    if (keepMs > 0 && /^[0-9a-f]{64}$/.test(e)) {
      if (since === null && await writeFile(marker, '', { mode: 0o644 }).then(() => true, () => false)) { keptDirs.push(e); continue; }
      if (since !== null && Date.now() - since < keepMs) { keptDirs.push(e); continue; }
    }
    await rm(join(ovl, e), { recursive: true, force: true });
  }
  const links = new Set([...layers.keys(), ...keptDirs].map(linkName));
  for (const e of await readdir(join(ovl, 'l'))) if (!links.has(e)) await rm(join(ovl, 'l', e), { force: true });
  for (const e of await readdir(imagesDir, { withFileTypes: true })) {
    if (e.isDirectory() && !images.has(e.name)) await rm(join(imagesDir, e.name), { recursive: true, force: true });
  }

  result.layers = layers.size;
  result.images = [...images.values()].map((i) => ({ name: i.names[0] ?? i.id, id: i.id, names: i.names }));
  return result;
}

async function writeLayerDir(ovl: string, id: string, target: string, link: string, lower: string): Promise<void> {
  const d = join(ovl, id);
  const ok = await readlink(join(d, 'diff')).then((t) => t === target, () => false)
    && await readFile(join(d, 'link'), 'utf8').then((t) => t === link, () => false)
    && await readFile(join(d, 'lower'), 'utf8').then((t) => t === lower, () => lower === '');
  if (ok) await rm(join(d, UNUSED_MARKER), { force: true }); // used again
  else if (await lstat(d).then((s) => s.isDirectory(), () => false)) {
    // Rewritten in place (the mount moved: another diff target), each file replaced by a rename: a podman
    // starting a container meanwhile finds the directory, its diff and its link at every instant.
    await replaceSymlink(join(d, 'diff'), target);
    if (await readFile(join(d, 'link'), 'utf8').catch(() => null) !== link) await atomicWrite(join(d, 'link'), link);
    if (!lower) await rm(join(d, 'lower'), { force: true });
    else if (await readFile(join(d, 'lower'), 'utf8').catch(() => null) !== lower) await atomicWrite(join(d, 'lower'), lower);
    await rm(join(d, UNUSED_MARKER), { force: true });
  } else {
    const tmp = join(ovl, `.${id}.${randomBytes(4).toString('hex')}`);
    await mkdir(tmp, { mode: 0o755 });
    await symlink(target, join(tmp, 'diff'));
    await writeFile(join(tmp, 'link'), link, { mode: 0o644 });
    if (lower) await writeFile(join(tmp, 'lower'), lower, { mode: 0o644 });
    await rm(d, { recursive: true, force: true });
    await rename(tmp, d);
  }
  const l = join(ovl, 'l', link);
  const want = `../${id}/diff`;
  if (await readlink(l).catch(() => null) !== want) await replaceSymlink(l, want);
}

/** PATH becomes a symlink to TARGET by a rename over whatever was there: never absent in between. */
async function replaceSymlink(path: string, target: string): Promise<void> {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  await symlink(target, tmp);
  try { await rename(tmp, path); } catch (e) {
    // A directory in the way (not ours): removed first.
    if ((e as NodeJS.ErrnoException).code !== 'EISDIR' && (e as NodeJS.ErrnoException).code !== 'ENOTEMPTY') { await rm(tmp, { force: true }); throw e; }
    await rm(path, { recursive: true, force: true });
    await rename(tmp, path);
  }
}

async function replaceIfChanged(file: string, text: string): Promise<boolean> {
  if ((await readFile(file, 'utf8').catch(() => null)) === text) return false;
  await atomicWrite(file, text);
  return true;
}

/** c/storage notices a writer by new bytes in the lock file (its "last writer" id): long-lived readers reload. */
async function touchLock(file: string): Promise<void> {
  await writeFile(file, randomBytes(32).toString('hex'), { mode: 0o644 });
}
