// Owns the store as readers and writers see it: verified objects, layer manifests, image descriptors
// (Store, any backend), and the writable POSIX store (WritableStore) that hands out transactions.
import { mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Backend } from './backend.js';
import { FsBackend } from './fs-backend.js';
import { HttpBackend, type HttpOptions } from './http-backend.js';
import { decodeObject, Codec, HEADER_LEN } from './codec.js';
import { DATA_DIR, IMAGES_DIR, LAYERS_DIR, STORE_MARKER, TXN_DIR, imageNameFromFile, imagePath, layerPath, objectPath } from './layout.js';
import { Txn, listTxns, removeDeadTxns, removeTxn, type TxnInfo } from './txn.js';
import type { LayerManifest } from './types.js';
import type { ThinImage } from '../format/descriptor.js';
import { IntegrityError, NotFoundError, ThinfsError, EXIT } from '../util/errors.js';
import { atomicWrite } from '../util/fsutil.js';
import { digestHex } from '../util/hash.js';
import { withLayerLock } from './lock.js';

export interface StoreInfo { version: 1; created: string; codec: string }

/** A content-addressed store: verified objects, published layer manifests and thin image descriptors. */
export class Store {
  protected constructor(readonly backend: Backend) {}

  static async open(location: string, opts: StoreOpenOptions = {}): Promise<Store> {
    if (/^https?:\/\//.test(location)) {
      const s = new Store(new HttpBackend(location.split(','), opts.http));
      if (!(await s.backend.exists(STORE_MARKER))) throw new NotFoundError(`no thinfs store at ${location} (missing ${STORE_MARKER})`);
      return s;
    }
    return WritableStore.openDir(location);
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
    const raw = await this.backend.read(layerPath(digestHex(diffId)), {
      maxBytes: META_MAX,
      verify: (b) => {
        m = parseJson<LayerManifest>(b, `layer manifest ${diffId}`);
        if (m?.diffId !== diffId) throw new IntegrityError(diffId, `layer manifest ${diffId}: names layer ${String(m?.diffId)}: refused`);
        if (typeof m.catalog !== 'string' || !/^[0-9a-f]{64}$/.test(m.catalog)) throw new IntegrityError(diffId, `layer manifest ${diffId}: bad catalog hash`);
      },
    });
    return raw ? m : null;
  }

  async listLayers(): Promise<string[]> {
    return (await this.backend.list(LAYERS_DIR)).filter((n) => n.endsWith('.json')).map((n) => `sha256:${n.slice(0, -5)}`);
  }

  /** An image descriptor, refused unless it describes the image asked for. */
  async getImage(name: string): Promise<ThinImage | null> {
    let d: ThinImage | null = null;
    const raw = await this.backend.read(imagePath(name), {
      maxBytes: META_MAX,
      verify: (b) => {
        d = parseJson<ThinImage>(b, `image ${name}`);
        if (d?.name !== name) throw new IntegrityError(name, `image descriptor ${name}: describes image ${JSON.stringify(d?.name)}: refused`);
        if (!Array.isArray(d.layers)) throw new IntegrityError(name, `image descriptor ${name}: no layer list`);
      },
    });
    return raw ? d : null;
  }

  async listImages(): Promise<string[]> {
    return (await this.backend.list(IMAGES_DIR)).map(imageNameFromFile).filter((n): n is string => n !== null);
  }
}

/** Layer manifests and descriptors are small: a mirror answering more is refused. */
const META_MAX = 16 << 20;

export interface StoreOpenOptions { http?: HttpOptions }

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

  /** Held while a layer is committed (txn.ts): one publication per layer across every node. */
  withLayerLock<T>(diffId: string, fn: () => Promise<T>): Promise<T> {
    return withLayerLock(this.root, `layer-${digestHex(diffId)}`, fn);
  }

  /** Held by a converter from before downloading a layer until it is published: one download per layer (Wharf). */
  withFetchLock<T>(diffId: string, fn: () => Promise<T>): Promise<T> {
    return withLayerLock(this.root, `fetch-${digestHex(diffId)}`, fn);
  }
}

