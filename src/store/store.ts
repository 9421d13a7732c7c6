// Owns the store as readers and writers see it: verified objects, layer manifests, image descriptors
// (Store, any backend), and the writable POSIX store (WritableStore) that hands out transactions.
import { mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Backend } from './backend.js';
import { FsBackend } from './fs-backend.js';
import { HttpBackend } from './http-backend.js';
import { decodeObject, Codec } from './codec.js';
import { DATA_DIR, IMAGES_DIR, LAYERS_DIR, STORE_MARKER, TXN_DIR, imageNameFromFile, imagePath, layerPath, objectPath } from './layout.js';
import { Txn, listTxns, removeDeadTxns, removeTxn, type TxnInfo } from './txn.js';
import type { LayerManifest } from './types.js';
import type { ThinImage } from '../image/descriptor.js';
import { NotFoundError, ThinfsError, EXIT } from '../util/errors.js';
import { atomicWrite } from '../util/fsutil.js';
import { digestHex } from '../util/hash.js';
import { withLayerLock } from './lock.js';

export interface StoreInfo { version: 1; created: string; codec: string }

/** A content-addressed store: verified objects, published layer manifests and thin image descriptors. */
export class Store {
  protected constructor(readonly backend: Backend) {}

  static async open(location: string): Promise<Store> {
    if (/^https?:\/\//.test(location)) {
      const s = new Store(new HttpBackend(location.split(',')));
      if (!(await s.backend.exists(STORE_MARKER))) throw new NotFoundError(`no thinfs store at ${location} (missing ${STORE_MARKER})`);
      return s;
    }
    return WritableStore.openDir(location);
  }

  get location(): string { return this.backend.location; }

  /** Raw framed bytes, unverified: for caches that verify on their own read path. */
  async getRaw(hash: string): Promise<Buffer> {
    const raw = await this.backend.read(objectPath(hash));
    if (!raw) throw new NotFoundError(`object ${hash} not found in store ${this.location}`);
    return raw;
  }

  /** Decompressed, hash-verified object content. */
  async getObject(hash: string): Promise<Buffer> {
    return decodeObject(hash, await this.getRaw(hash));
  }

  hasObject(hash: string): Promise<boolean> { return this.backend.exists(objectPath(hash)); }

  async getLayer(diffId: string): Promise<LayerManifest | null> {
    const raw = await this.backend.read(layerPath(digestHex(diffId)));
    return raw ? parseJson<LayerManifest>(raw, `layer manifest ${diffId}`) : null;
  }

  async listLayers(): Promise<string[]> {
    return (await this.backend.list(LAYERS_DIR)).filter((n) => n.endsWith('.json')).map((n) => `sha256:${n.slice(0, -5)}`);
  }

  async getImage(name: string): Promise<ThinImage | null> {
    const raw = await this.backend.read(imagePath(name));
    return raw ? parseJson<ThinImage>(raw, `image ${name}`) : null;
  }

  async listImages(): Promise<string[]> {
    return (await this.backend.list(IMAGES_DIR)).map(imageNameFromFile).filter((n): n is string => n !== null);
  }
}

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
  async putImage(desc: ThinImage, config?: { hex: string; data: Buffer }): Promise<void> {
    const txn = this.beginTxn('image');
    try {
      if (config) await txn.put(config.hex, config.data);
      await txn.commitObjects(() => atomicWrite(join(this.root, imagePath(desc.name)), JSON.stringify(desc, null, 2) + '\n', txn.dir));
    } catch (e) { await txn.abort(); throw e; }
  }

  /** Staging dirs under txn/ with their owners' state (live, dead, remote, silent). */
  listTxns(): Promise<TxnInfo[]> { return listTxns(this.root); }
  removeTxn(id: string): Promise<void> { return removeTxn(this.root, id); }
  /** Crash recovery: remove the staging of every transaction whose owner died on this host. */
  removeDeadTxns(): Promise<TxnInfo[]> { return removeDeadTxns(this.root); }

  withLayerLock<T>(diffId: string, fn: () => Promise<T>): Promise<T> {
    return withLayerLock(this.root, `layer-${digestHex(diffId)}`, fn);
  }
}

