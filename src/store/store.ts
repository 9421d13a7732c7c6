import { mkdir, stat, writeFile, rename, rm, readdir, readFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Backend } from './backend.js';
import { FsBackend } from './fs-backend.js';
import { HttpBackend, type HttpOptions } from './http-backend.js';
import { decodeObject, encodeObject, Codec, HEADER_LEN } from './codec.js';
import { DATA_DIR, IMAGES_DIR, LAYERS_DIR, STORE_MARKER, TXN_DIR, imageNameFromFile, imagePath, layerPath, objectPath } from './layout.js';
import type { LayerManifest } from './types.js';
import type { ThinImage } from '../image/descriptor.js';
import { IntegrityError, NotFoundError, ThinfsError, TrustError, EXIT } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { atomicWrite, fsyncDir } from '../util/fsutil.js';
import { digestHex } from '../util/hash.js';
import { withLayerLock } from './lock.js';
import { TrustAnchor, RevisionLog, loadPublicKeys, republishManifest, writerSigningOptions } from './trust.js';
import { REPO_MANIFEST_FILE, REPO_MANIFEST_MAX } from '../format/repo-manifest.js';
import type { ObjectWriterPool } from './writer-pool.js';

const execFileP = promisify(execFile);
export const TXN_OWNER = 'owner.json';

export interface StoreInfo { version: 1; created: string; codec: string }

/** A content-addressed store: verified objects, published layer manifests and thin image descriptors. */
export class Store {
  /** With public keys: the signed repository manifest everything read is checked against (nothing else is trusted). */
  trust: TrustAnchor | null = null;
  private manifestEtag: string | null = null;
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
    let file: Buffer | null;
    if (this.backend instanceof HttpBackend) {
      const r = await this.backend.readConditional(REPO_MANIFEST_FILE, this.trust.current ? this.manifestEtag : null, { maxBytes: REPO_MANIFEST_MAX });
      if (r.notModified) return false;
      file = r.data;
      this.manifestEtag = r.etag;
    } else {
      file = await this.backend.read(REPO_MANIFEST_FILE, { maxBytes: REPO_MANIFEST_MAX });
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
   * mirror serving wrong bytes counts as a failed mirror and the next one is asked.
   */
  async fetchObject(hash: string, size?: number): Promise<{ data: Buffer; rawBytes: number }> {
    let data: Buffer | null = null;
    const raw = await this.backend.read(objectPath(hash), {
      maxBytes: size === undefined ? undefined : size + HEADER_LEN,
      verify: (b) => {
        data = decodeObject(hash, b);
        if (size !== undefined && data.length !== size) throw new IntegrityError(hash, `object ${hash}: ${data.length} bytes, the catalog says ${size}`);
      },
    });
    if (!raw) throw new NotFoundError(`object ${hash} not found in store ${this.location}`);
    return { data: data!, rawBytes: raw.length };
  }

  /** Decompressed, hash-verified object content. */
  async getObject(hash: string, size?: number): Promise<Buffer> {
    return (await this.fetchObject(hash, size)).data;
  }

  hasObject(hash: string): Promise<boolean> { return this.backend.exists(objectPath(hash)); }

  /** A layer manifest, refused unless it is the one asked for (a mirror may serve another layer's under this name). */
  async getLayer(diffId: string): Promise<LayerManifest | null> {
    let m: LayerManifest | null = null;
    const hex = digestHex(diffId);
    const named = this.trust ? this.trust.layer(hex) : undefined;
    if (named === null) throw new TrustError('not-named', `layer ${diffId} is not named by the signed repository manifest (revision ${this.trust!.current!.revision})`);
    const raw = await this.backend.read(layerPath(hex), {
      maxBytes: named?.size ?? META_MAX,
      verify: (b) => {
        if (named) TrustAnchor.check(`layer manifest ${diffId}`, named, b);
        m = parseJson<LayerManifest>(b, `layer manifest ${diffId}`);
        if (m?.diffId !== diffId) throw new IntegrityError(diffId, `layer manifest ${diffId}: names layer ${String(m?.diffId)}: refused`);
        if (typeof m.catalog !== 'string' || !/^[0-9a-f]{64}$/.test(m.catalog)) throw new IntegrityError(diffId, `layer manifest ${diffId}: bad catalog hash`);
      },
    });
    if (!raw && named) throw new TrustError('not-named', `layer ${diffId} is named by the signed manifest but missing from store ${this.location}`);
    return raw ? m : null;
  }

  async listLayers(): Promise<string[]> {
    if (this.trust?.current) return Object.keys(this.trust.current.layers).sort().map((h) => `sha256:${h}`);
    return (await this.backend.list(LAYERS_DIR)).filter((n) => n.endsWith('.json')).map((n) => `sha256:${n.slice(0, -5)}`);
  }

  /** An image descriptor, refused unless it describes the image asked for. */
  async getImage(name: string): Promise<ThinImage | null> {
    let d: ThinImage | null = null;
    const named = this.trust ? this.trust.image(name) : undefined;
    if (named === null) throw new TrustError('not-named', `image ${name} is not named by the signed repository manifest (revision ${this.trust!.current!.revision})`);
    const raw = await this.backend.read(imagePath(name), {
      maxBytes: named?.size ?? META_MAX,
      verify: (b) => {
        if (named) TrustAnchor.check(`image descriptor ${name}`, named, b);
        d = parseJson<ThinImage>(b, `image ${name}`);
        if (d?.name !== name) throw new IntegrityError(name, `image descriptor ${name}: describes image ${JSON.stringify(d?.name)}: refused`);
        if (!Array.isArray(d.layers)) throw new IntegrityError(name, `image descriptor ${name}: no layer list`);
      },
    });
    if (!raw && named) throw new TrustError('not-named', `image ${name} is named by the signed manifest but missing from store ${this.location}`);
    return raw ? d : null;
  }

  /** Which version of an image descriptor is current (its hash in the signed manifest), or null without one. */
  imageTag(name: string): string | null {
    return this.trust?.current?.images[name]?.sha256 ?? null;
  }

  async listImages(): Promise<string[]> {
    if (this.trust?.current) return Object.keys(this.trust.current.images).sort();
    return (await this.backend.list(IMAGES_DIR)).map(imageNameFromFile).filter((n): n is string => n !== null);
  }
}

/** Layer manifests and descriptors are small: a mirror answering more is refused. */
const META_MAX = 16 << 20;

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

  beginTxn(label = 'txn', codec: Codec = Codec.Zstd): Txn {
    return new Txn(this, `${Date.now()}-${process.pid}-${label.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40)}-${randomBytes(4).toString('hex')}`, codec);
  }

  /** Thin image descriptors are small and replaced whole; last writer wins, never a torn file. */
  async putImage(desc: ThinImage): Promise<void> {
    const signing = await writerSigningOptions();
    await atomicWrite(join(this.root, imagePath(desc.name)), JSON.stringify(desc, null, 2) + '\n', join(this.root, TXN_DIR));
    await republishManifest(this.root, { ...signing, log: writerLog });
  }

  withLayerLock<T>(diffId: string, fn: () => Promise<T>): Promise<T> {
    return withLayerLock(this.root, `layer-${digestHex(diffId)}`, fn);
  }
}

async function parallel<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}

/** flush everything written so far on that filesystem in one call (syncfs), instead of one fsync per object. */
async function syncFs(path: string): Promise<void> {
  try { await execFileP('sync', ['-f', path]); } catch { await execFileP('sync'); }
}

/**
 * A publishing transaction. New objects are staged under txn/<id>/ and only renamed into data/
 * at commit, so a refused or crashed ingest leaves data/ exactly as it was; the manifest is
 * written last, under the layer lock, so nobody ever sees a half-written layer.
 */
export class Txn {
  readonly dir: string;
  private readonly staged = new Set<string>();
  private existing = new Set<string>();
  private ready: Promise<void>;
  newObjects = 0;
  newBytes = 0;

  /** Optional worker pool for compression + writing (ingest uses one; tiny transactions do not need it). */
  pool: ObjectWriterPool | null = null;

  constructor(readonly store: WritableStore, readonly id: string, readonly codec: Codec) {
    this.dir = join(store.root, TXN_DIR, id);
    // owner.json lets gc tell a live transaction from one whose process died (same host) or went silent.
    this.ready = mkdir(this.dir, { recursive: true })
      .then(() => writeFile(join(this.dir, TXN_OWNER), JSON.stringify({ pid: process.pid, host: hostname(), started: new Date().toISOString() })));
  }

  /** Store `data` under its hash unless the store (or this txn) already has it. Returns true if new. */
  async put(hash: string, data: Uint8Array): Promise<boolean> {
    if (this.staged.has(hash) || this.existing.has(hash)) return false;
    this.staged.add(hash);
    await this.ready;
    let size: number;
    try {
      if (this.pool) {
        size = await this.pool.write(join(this.store.root, objectPath(hash)), join(this.dir, hash), data, this.codec);
      } else if (await this.store.hasObject(hash)) {
        size = -1;
      } else {
        const framed = encodeObject(data, this.codec);
        await writeFile(join(this.dir, hash), framed, { flag: 'wx' });
        size = framed.length;
      }
    } catch (e) {
      this.staged.delete(hash);
      throw e;
    }
    if (size < 0) { this.staged.delete(hash); this.existing.add(hash); return false; }
    this.newObjects++;
    this.newBytes += size;
    return true;
  }

  /**
   * Make staged objects durable and visible, then publish the manifest. If another node published
   * the same layer meanwhile, ours is discarded and theirs returned (exactly once).
   */
  async commit(manifest: LayerManifest): Promise<{ manifest: LayerManifest; published: boolean }> {
    await this.ready;
    const root = this.store.root;
    // The signing key is loaded first: a bad key refuses the commit before anything is published.
    const signing = await writerSigningOptions();
    const res = await this.store.withLayerLock(manifest.diffId, async () => {
      const existing = await this.store.getLayer(manifest.diffId);
      if (existing) { await this.abort(); return { manifest: existing, published: false }; }
      await syncFs(this.dir);
      const touched = new Set<string>();
      const hashes = [...this.staged];
      // Renames are independent metadata operations: a few in parallel hide NFS round trips.
      await parallel(hashes, 16, async (hash) => {
        await rename(join(this.dir, hash), join(root, objectPath(hash)));
        touched.add(hash.slice(0, 2));
      });
      await parallel([...touched], 16, (d) => fsyncDir(join(root, DATA_DIR, d)));
      // Every object the manifest names must be present before it becomes visible.
      await this.verifyPresent(manifest);
      await atomicWrite(join(root, layerPath(digestHex(manifest.diffId))), JSON.stringify(manifest, null, 2) + '\n', this.dir);
      await rm(this.dir, { recursive: true, force: true });
      return { manifest, published: true };
    });
    // The repository manifest names the new layer (its own lock serializes writers).
    if (res.published) await republishManifest(root, { ...signing, log: writerLog });
    return res;
  }

  private async verifyPresent(m: LayerManifest): Promise<void> {
    if (!(await this.store.hasObject(m.catalog))) throw new ThinfsError(`commit: catalog object ${m.catalog} missing`);
  }

  async abort(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Transactions whose process is gone (crash, SIGKILL on this host) or silent for longer than the grace period. */
export async function staleTxns(root: string, graceMs: number): Promise<string[]> {
  const dir = join(root, TXN_DIR);
  const out: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const path = join(dir, name);
    const st = await stat(path).catch(() => null);
    if (!st) continue;
    let owner: { pid?: number; host?: string } = {};
    try { owner = JSON.parse(await readFile(join(path, TXN_OWNER), 'utf8')); } catch { /* not yet written or damaged */ }
    const deadHere = owner.host === hostname() && typeof owner.pid === 'number' && !isAlive(owner.pid);
    if (deadHere || Date.now() - st.mtimeMs > graceMs) out.push(path);
  }
  return out;
}

function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}
