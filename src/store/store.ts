// Owns the store as readers and writers see it: verified objects, layer manifests, image descriptors
// (Store, any backend), and the writable POSIX store (WritableStore) that hands out transactions.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Backend } from './backend.js';
import { FsBackend } from './fs-backend.js';
import { HttpBackend, type HttpOptions } from './http-backend.js';
import { decodeObject, decodeObjectAsync, readObjectFile, encodeObject, Codec, HEADER_LEN } from './codec.js';
import { DATA_DIR, IMAGES_DIR, LAYERS_DIR, STORE_MARKER, TXN_DIR, imageIndexPath, imageNameFromFile, imageNameProblem, imagePath, layerPath, objectPath, packPath } from './layout.js';
import { encodePack, packMaxBytes, parsePack, type PackEntry, type PackRef } from './pack.js';
import { Txn, listTxns, removeDeadTxns, removeTxnsOfDeadPid, removeTxn, type TxnInfo } from './txn.js';
import type { LayerManifest } from './types.js';
import type { ThinImage } from '../format/descriptor.js';
import { BadInputError, IntegrityError, NotFoundError, ThinfsError, TrustError, EXIT } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { atomicWrite } from '../util/fsutil.js';
import { digestHex, isDigest } from '../util/hash.js';
import { layerLockHeld, withLayerLock } from './lock.js';
import { TrustAnchor, RevisionLog, loadPublicKeys, republishManifest, writerSigningOptions } from './trust.js';
import { REPO_MANIFEST_FILE, REPO_MANIFEST_MAX, decodeManifestFile, parseRepoManifest, type NamedEntry, type RepoManifest } from '../format/repo-manifest.js';
import { IMAGE_INDEX_MAX, parseImageIndex, type ImageIndex } from '../format/image-index.js';

export interface StoreInfo { version: 1; created: string; codec: string }

/** A content-addressed store: verified objects, published layer manifests and thin image descriptors. */
export class Store {
  /** With public keys: the signed repository manifest everything read is checked against (nothing else is trusted). */
  trust: TrustAnchor | null = null;
  private manifestEtag: string | null = null;
  /** The image index last read, by the hash the manifest named it with. */
  private imageIndexRead: { index: ImageIndex; entry: NamedEntry } | null = null;
  private imageIndexRefused: { sha256: string; err: unknown } | null = null;
  /** The manifest as served to a reader without keys, and its ETag (for a conditional GET). */
  private servedManifest: { etag: string | null; manifest: RepoManifest | null } | null = null;
  protected constructor(readonly backend: Backend) {}

  /** Options every open without its own takes (set once by a CLI command from its flags). */
  static openDefaults: StoreOpenOptions = {};

  static async open(location: string, opts: StoreOpenOptions = Store.openDefaults): Promise<Store> {
    let s: Store;
    if (/^https?:\/\//.test(location)) {
      s = new Store(new HttpBackend(location.split(','), opts.http));
      if (!(await s.backend.exists(STORE_MARKER))) throw new NotFoundError(`no thinfs store at ${location} (missing ${STORE_MARKER})`);
    } else {
      s = await WritableStore.openDir(location);
    }
    if (opts.publicKeys?.length) {
      s.trust = new TrustAnchor(await loadPublicKeys(opts.publicKeys), opts.trustDir ? new RevisionLog(opts.trustDir) : null);
      await s.refreshManifest();
    }
    return s;
  }

  /**
   * Fetch the repository manifest again (conditional GET over HTTP) and trust it if it verifies; a refused one
   * leaves the current one in place and throws (TrustError). True when a new revision became current.
   */
  async refreshManifest(): Promise<boolean> {
    if (!this.trust) return false;
    const trust = this.trust;
    // Checked inside the read: a mirror serving a damaged, foreign-key, expired or older manifest is that mirror's
    // failure, and the next mirror is asked (the current file again is no news, checked below).
    const opts = { maxBytes: REPO_MANIFEST_MAX, verify: async (b: Buffer) => { if (!trust.currentFile?.equals(b)) await trust.check(b); } };
    let file: Buffer | null;
    if (this.backend instanceof HttpBackend) {
      const r = await this.backend.readConditional(REPO_MANIFEST_FILE, this.trust.current ? this.manifestEtag : null, opts);
      if (r.notModified) return false;
      file = r.data;
      this.manifestEtag = r.etag;
    } else {
      file = await this.backend.read(REPO_MANIFEST_FILE, opts);
    }
    if (!file) throw new TrustError('unsigned', `store ${this.location} has no repository manifest (${REPO_MANIFEST_FILE}): sign it with thinfs sign`);
    if (this.trust.currentFile?.equals(file)) return false;
    const before = this.trust.current?.revision;
    await this.trust.accept(file);
    return this.trust.current!.revision !== before || !before;
  }

  get location(): string { return this.backend.location; }

  /**
   * Decompressed, hash-verified object content, and the framed size moved. With its size known (catalog,
   * manifest), no more than size + frame header is ever read. Verified inside the backend's read, so a
   * mirror serving wrong bytes counts as a failed mirror and the next one is asked. `atMost`: its size is not known,
   * but it is no bigger than this (an image config): a larger object is refused from its frame header, before anything
   * is decoded (a small zstd frame can expand to gigabytes). `startedAt`: see ReadOptions.
   */
  async fetchObject(hash: string, size?: number, o: { startedAt?: number; atMost?: number } = {}): Promise<{ data: Buffer; rawBytes: number }> {
    const atMost = size === undefined ? o.atMost : undefined;
    // A store on a filesystem: read, decoded and verified in one threadpool job (cold reads), when the addon is built.
    if (this.backend.localPath && atMost === undefined) {
      const got = await readObjectFile(this.backend.localPath(objectPath(hash)), hash, size);
      if (got === null) throw new NotFoundError(`object ${hash} not found in store ${this.location}`);
      if (got) return got;
    }
    let data: Buffer | null = null;
    const raw = await this.backend.read(objectPath(hash), {
      maxBytes: (size ?? atMost) === undefined ? undefined : (size ?? atMost)! + HEADER_LEN,
      startedAt: o.startedAt,
      // Decoded and hashed on the threadpool (codec.ts).
      verify: async (b) => {
        if (atMost !== undefined && b.length >= HEADER_LEN && b.readBigUInt64LE(8) > BigInt(atMost)) {
          throw new IntegrityError(hash, `object ${hash}: its header says ${b.readBigUInt64LE(8)} bytes, more than the ${atMost} expected: refused`);
        }
        data = await decodeObjectAsync(hash, b, size);
      },
    });
    if (!raw) throw new NotFoundError(`object ${hash} not found in store ${this.location}`);
    return { data: data!, rawBytes: raw.length };
  }

  /**
   * The file of an object in a store on a filesystem (read, decoded and verified by the caller's native job, e.g. the
   * cache's landObject), or null for a store reached over the network.
   */
  objectFile(hash: string): string | null {
    return this.backend.localPath && /^[0-9a-f]{64}$/.test(hash) ? this.backend.localPath(objectPath(hash)) : null;
  }

  /** Decompressed, hash-verified object content (`atMost`: its size is unknown but bounded, see fetchObject). */
  async getObject(hash: string, size?: number, atMost?: number): Promise<Buffer> {
    return (await this.fetchObject(hash, size, { atMost })).data;
  }

  hasObject(hash: string): Promise<boolean> { return this.backend.exists(objectPath(hash)); }

  /**
   * A pack's members (pack.ts), its shape and membership checked against its name inside the backend's read (a mirror
   * serving another pack or garbage is a failed mirror); members are not decoded yet. Null when the store has no such
   * pack (older stores, or a pack gc or fsck took): the caller fetches the member's own object.
   */
  async fetchPack(ref: PackRef): Promise<{ entries: PackEntry[]; rawBytes: number } | null> {
    let entries: PackEntry[] = [];
    const raw = await this.backend.read(packPath(ref.name), { maxBytes: packMaxBytes(ref), verify: (b) => { entries = parsePack(ref.name, b); } });
    return raw ? { entries, rawBytes: raw.length } : null;
  }

  /** A layer manifest, refused unless it is the one asked for (a mirror may serve another layer's under this name). */
  getLayer(diffId: string): Promise<LayerManifest | null> {
    const hex = digestHex(diffId);
    return this.readNamed<LayerManifest>(`layer ${diffId}`, `layer manifest ${diffId}`, `layer manifest ${diffId}`,
      this.trust ? this.trust.layer(hex) : undefined, layerPath(hex), (m) => {
        if (m?.diffId !== diffId) throw new IntegrityError(diffId, `layer manifest ${diffId}: names layer ${String(m?.diffId)}: refused`);
        if (typeof m.catalog !== 'string' || !/^[0-9a-f]{64}$/.test(m.catalog)) throw new IntegrityError(diffId, `layer manifest ${diffId}: bad catalog hash`);
        // The catalog's size bounds its download: a manifest claiming an absurd one is refused, not believed.
        if (!Number.isSafeInteger(m.catalogSize) || m.catalogSize < 0 || m.catalogSize > CATALOG_MAX) throw new IntegrityError(diffId, `layer manifest ${diffId}: bad catalog size ${String(m.catalogSize)}`);
      });
  }

  async listLayers(): Promise<string[]> {
    if (this.trust?.current) return Object.keys(this.trust.current.layers).sort().map((h) => `sha256:${h}`);
    // A file there whose name is not a digest is no layer (and its name, untrusted bytes, must not reach a report).
    return (await this.backend.list(LAYERS_DIR)).filter((n) => n.endsWith('.json') && isDigest(`sha256:${n.slice(0, -5)}`)).map((n) => `sha256:${n.slice(0, -5)}`);
  }

  /** An image descriptor, refused unless it describes the image asked for. */
  getImage(name: string): Promise<ThinImage | null> {
    return this.readNamed<ThinImage>(`image ${name}`, `image descriptor ${name}`, `image ${name}`,
      this.trust ? this.trust.image(name) : undefined, imagePath(name), (d) => {
        if (d?.name !== name) throw new IntegrityError(name, `image descriptor ${name}: describes image ${JSON.stringify(d?.name)}: refused`);
        if (!Array.isArray(d.layers)) throw new IntegrityError(name, `image descriptor ${name}: no layer list`);
      });
  }

  /**
   * The one read of a small JSON file the signed manifest names (layer manifest, image descriptor): refused when
   * the manifest does not name it (`named` null), bounded by the size it names, its hash checked, parsed, then
   * `check`ed against what was asked for. Null when absent and nothing names it.
   */
  private async readNamed<T>(what: string, checked: string, parsed: string, named: NamedEntry | null | undefined,
    path: string, check: (v: T) => void): Promise<T | null> {
    if (named === null) throw new TrustError('not-named', `${what} is not named by the signed repository manifest (revision ${this.trust!.current!.revision})`);
    let v: T | null = null;
    const raw = await this.backend.read(path, {
      maxBytes: named?.size ?? META_MAX,
      verify: (b) => {
        if (named) TrustAnchor.check(checked, named, b);
        v = parseJson<T>(b, parsed);
        check(v);
      },
    });
    if (!raw && named) throw new TrustError('not-named', `${what} is named by the signed manifest but missing from store ${this.location}`);
    return raw ? v : null;
  }

  /** Which version of an image descriptor is current (its hash in the signed manifest), or null without one. */
  imageTag(name: string): string | null {
    return this.trust?.current?.images[name]?.sha256 ?? null;
  }

  /**
   * Which version of each image descriptor the repository manifest names (name -> descriptor hash): the trusted one
   * with public keys, else as served (one conditional GET over HTTP). What a descriptor replaced under its name
   * changes, where the listing does not; null without a manifest (or with one that does not parse).
   */
  async imageVersions(): Promise<Record<string, string> | null> {
    const m = this.trust ? this.trust.current : await this.manifestAsServed().catch(() => null);
    return m ? Object.fromEntries(Object.entries(m.images).map(([n, e]) => [n, e.sha256])) : null;
  }

  async listImages(): Promise<string[]> {
    if (this.trust?.current) return Object.keys(this.trust.current.images).sort();
    return (await this.backend.list(IMAGES_DIR)).map(imageNameFromFile).filter((n): n is string => n !== null);
  }

  /**
   * The published image index (src/format/image-index.ts) the repository manifest names: with public keys, the
   * manifest already verified (no request for it); without, the manifest as served (a conditional GET over HTTP:
   * nothing in an unsigned store is verified, and the index is only a hint). The object is fetched once per hash,
   * verified by it. Null when the manifest names none (a store published before the index) or there is no manifest;
   * throws when the object named is missing, does not hash to its name or does not parse (the caller falls back).
   */
  async publishedImageIndex(): Promise<{ index: ImageIndex; entry: NamedEntry } | null> {
    const m = this.trust ? this.trust.current : await this.manifestAsServed();
    const entry = m?.imageIndex;
    if (!entry) return null;
    if (this.imageIndexRead?.entry.sha256 === entry.sha256) return this.imageIndexRead;
    // One refused is not fetched again (the same error again) until the manifest names another.
    if (this.imageIndexRefused?.sha256 === entry.sha256) throw this.imageIndexRefused.err;
    try {
      if (entry.size > IMAGE_INDEX_MAX) throw new IntegrityError(entry.sha256, `image index ${entry.sha256}: named with ${entry.size} bytes, more than ${IMAGE_INDEX_MAX}`);
      // Framed as objects are: decoded and checked against its name inside the read (a mirror serving other bytes fails).
      const decoded: { data: Buffer | null } = { data: null };
      const got = await this.backend.read(imageIndexPath(entry.sha256), {
        maxBytes: entry.size + HEADER_LEN,
        verify: async (b) => { decoded.data = await decodeObjectAsync(entry.sha256, b, entry.size); },
      });
      const raw = decoded.data;
      if (!got || !raw) throw new NotFoundError(`image index ${entry.sha256} (named by the repository manifest) is not in store ${this.location}`);
      if (raw.length !== entry.size) throw new IntegrityError(entry.sha256, `image index ${entry.sha256}: ${raw.length} bytes, the manifest names ${entry.size}`);
      this.imageIndexRead = { entry, index: parseImageIndex(raw, `image index ${entry.sha256}`) };
    } catch (e) {
      // Refused (wrong bytes, not an index); a network failure or a missing file may pass: asked again next time.
      if (e instanceof IntegrityError || e instanceof BadInputError) this.imageIndexRefused = { sha256: entry.sha256, err: e };
      throw e;
    }
    return this.imageIndexRead;
  }

  /** The repository manifest as the store serves it, unverified (a store read without public keys); null without one. */
  private async manifestAsServed(): Promise<RepoManifest | null> {
    let file: Buffer | null;
    if (this.backend instanceof HttpBackend) {
      const r = await this.backend.readConditional(REPO_MANIFEST_FILE, this.servedManifest?.etag ?? null, { maxBytes: REPO_MANIFEST_MAX });
      if (r.notModified && this.servedManifest) return this.servedManifest.manifest;
      file = r.data;
      this.servedManifest = { etag: r.etag, manifest: file ? parseRepoManifest(decodeManifestFile(file).payload) : null };
      return this.servedManifest.manifest;
    }
    file = await this.backend.read(REPO_MANIFEST_FILE, { maxBytes: REPO_MANIFEST_MAX });
    return file ? parseRepoManifest(decodeManifestFile(file).payload) : null;
  }
}

/** Layer manifests and descriptors are small: a mirror answering more is refused. */
const META_MAX = 16 << 20;
/** ~10 million entries: far beyond any real layer, still a bound on what a mirror can make a node hold. */
const CATALOG_MAX = 2 ** 31;

export interface StoreOpenOptions {
  http?: HttpOptions;
  /** Public key files (PEM, Ed25519): the store is read through its signed repository manifest only. */
  publicKeys?: string[];
  /** Where the highest manifest revision seen is kept (replay protection across restarts). */
  trustDir?: string | null;
}

const writerLog = createLogger('thinfs-store');

function parseJson<T>(raw: Buffer, what: string): T {
  try { return JSON.parse(raw.toString('utf8')) as T; } catch (e) {
    throw new ThinfsError(`${what}: invalid JSON (${(e as Error).message})`, EXIT.INTEGRITY);
  }
}

/** A store on a POSIX filesystem, which this node may write to. */
export class WritableStore extends Store {
  private constructor(readonly root: string) { super(new FsBackend(root)); }

  static async openDir(dir: string): Promise<WritableStore> {
    const root = resolve(dir);
    try { await stat(join(root, STORE_MARKER)); } catch {
      throw new NotFoundError(`no thinfs store at ${root} (create one with: thinfs init ${dir})`);
    }
    return new WritableStore(root);
  }

  /** Create the layout (idempotent); fan-out directories up front so writers never race on mkdir. */
  static async init(dir: string, codec = 'zstd'): Promise<WritableStore> {
    const root = resolve(dir);
    await mkdir(root, { recursive: true });
    await Promise.all([TXN_DIR, LAYERS_DIR, IMAGES_DIR].map((d) => mkdir(join(root, d), { recursive: true })));
    const fan = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
    await Promise.all(fan.map((f) => mkdir(join(root, DATA_DIR, f), { recursive: true })));
    try { await stat(join(root, STORE_MARKER)); } catch {
      const info: StoreInfo = { version: 1, created: new Date().toISOString(), codec };
      await atomicWrite(join(root, STORE_MARKER), JSON.stringify(info, null, 2) + '\n');
    }
    return new WritableStore(root);
  }

  /** A new transaction (txn.ts): the only way anything enters data/ or layers/. */
  beginTxn(label = 'txn', codec: Codec = Codec.Zstd): Txn {
    return new Txn(this, label, codec);
  }

  /**
   * Publish a thin image descriptor, with its config blob stored as an object in the same transaction (so a
   * re-conversion needs no download, and a concurrent gc cannot take the config between the two writes).
   * Descriptors are small and replaced whole; last writer wins, never a torn file.
   */
  /**
   * The descriptor with the objects it names: the image config, (when known) the registry's manifest bytes, and others
   * (a prefetch trace).
   */
  async putImage(desc: ThinImage, config?: { hex: string; data: Buffer }, manifest?: { hex: string; data: Buffer },
    objects: Array<{ hex: string; data: Buffer; level?: number }> = []): Promise<void> {
    const bad = imageNameProblem(desc.name);
    if (bad) throw new BadInputError(`image name ${JSON.stringify(desc.name)} refused: ${bad}`);
    // The signing key is loaded first: a bad key refuses the write before anything is published.
    const signing = await writerSigningOptions();
    const txn = this.beginTxn('image');
    try {
      if (config) await txn.put(config.hex, config.data);
      if (manifest) await txn.put(manifest.hex, manifest.data);
      // Other objects the descriptor names (a prefetch trace): in place before it is.
      for (const o of objects) await txn.put(o.hex, o.data, o.level);
      await txn.commitObjects(() => atomicWrite(join(this.root, imagePath(desc.name)), JSON.stringify(desc, null, 2) + '\n', txn.dir));
    } catch (e) { await txn.abort(); throw e; }
    await republishManifest(this.root, { ...signing, log: writerLog });
  }

  /**
   * Store these objects (those stored loose in data/) at zstd `level` where that is smaller: the chunks every cold start
   * of an image fetches (its prefetch trace) are worth compressing harder than ingest can afford. Same bytes, same
   * names. `packs` (those that may carry them: catalogs name them) get the new frames of their rewritten members too, so
   * a start that fetches through packs gets them as small. Every object and pack replaced atomically, in one
   * transaction. Returns the stored bytes before and after, objects and packs apart.
   */
  async recompress(hashes: Iterable<string>, level: number, packs: Iterable<string> = []): Promise<{
    objects: number; changed: number; before: number; after: number; packs: number; packsBefore: number; packsAfter: number;
  }> {
    const txn = this.beginTxn('recompress');
    const r = { objects: 0, changed: 0, before: 0, after: 0, packs: 0, packsBefore: 0, packsAfter: 0 };
    const frames = new Map<string, Buffer>();
    try {
      for (const hash of new Set(hashes)) {
        const raw = await readFile(join(this.root, objectPath(hash))).catch(() => null);
        if (!raw) continue; // not a loose object here (packed, or gone): left as it is
        r.objects++;
        r.before += raw.length;
        const data = decodeObject(hash, raw);
        const again = encodeObject(data, Codec.Zstd, level);
        // Worth a rewrite only when it saves more than a little.
        if (again.length < raw.length - (raw.length >> 6)) { await txn.restage(hash, again); frames.set(hash, again); r.changed++; r.after += again.length; } else {
          frames.set(hash, raw); // recompressed before (a trace attached again): packs may still carry a bigger frame
          r.after += raw.length;
        }
      }
      for (const name of new Set(packs)) {
        const raw = await readFile(join(this.root, packPath(name))).catch(() => null);
        if (!raw) continue; // gc or fsck took it: readers fetch the members' own objects
        const members = parsePack(name, raw);
        if (!members.some((m) => frames.has(m.hash) && frames.get(m.hash)!.length < m.frame.length)) continue;
        const again = encodePack(members.map((m) => { const f = frames.get(m.hash); return f && f.length < m.frame.length ? { ...m, frame: f } : m; }));
        await txn.restagePack(name, again);
        r.packs++;
        r.packsBefore += raw.length;
        r.packsAfter += again.length;
      }
      await txn.commitObjects();
    } catch (e) { await txn.abort(); throw e; }
    return r;
  }

  /** Staging dirs under txn/ with their owners' state (live, dead, remote, silent). */
  listTxns(): Promise<TxnInfo[]> { return listTxns(this.root); }
  removeTxn(id: string): Promise<void> { return removeTxn(this.root, id); }
  /** Crash recovery: remove the staging of every transaction whose owner died on this host. */
  removeDeadTxns(): Promise<TxnInfo[]> { return removeDeadTxns(this.root); }
  /** Crash recovery of a caller that knows `pid` ran on this host (the publisher's queue): its dead transactions' staging. */
  removeTxnsOfDeadPid(pid: number): Promise<TxnInfo[]> { return removeTxnsOfDeadPid(this.root, pid); }

  /** Held while a layer is committed (txn.ts): one publication per layer across every node. */
  withLayerLock<T>(diffId: string, fn: () => Promise<T>): Promise<T> {
    return withLayerLock(this.root, `layer-${digestHex(diffId)}`, fn);
  }

  /**
   * Held by a converter from before downloading a layer until it is published: one download per layer (Wharf).
   * `signal` ends the wait for it (InterruptedError).
   */
  withFetchLock<T>(diffId: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return withLayerLock(this.root, `fetch-${digestHex(diffId)}`, fn, { signal });
  }

  /** Someone holds the fetch lock of this layer right now: a scheduling hint (converters do other layers first). */
  fetchLockHeld(diffId: string): Promise<boolean> {
    return layerLockHeld(this.root, `fetch-${digestHex(diffId)}`);
  }
}

