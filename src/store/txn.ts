// Owns the store's transactions: txn/<id>/ staging directories, their ids, owner records and heartbeats,
// liveness of their owners (the one `isAlive`), commit into data/ + layers/, abort, and crash cleanup.
// Nothing outside src/store/ makes, parses or removes a txn/ entry.
import { mkdir, writeFile, rename, rm, readdir, readFile, stat, access, utimes, open } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Codec, decodeObject } from './codec.js';
import { stageObject, PUT_PINNED } from './stage.js';
import { DATA_DIR, PACKS_DIR, TXN_DIR, layerPath, objectPath, packPath } from './layout.js';
import type { LayerManifest } from './types.js';
import { decodePackMembers, parsePack } from './pack.js';
import type { ObjectWriterPool } from './writer-pool.js';
import { heldLocks, withCommitLock, type HeldLock } from './lock.js';
import { manifestNamesLayer, republishManifest, writerSigningOptions } from './trust.js';
import { createLogger } from '../util/log.js';
import { currentOwner, isOwnerAlive, isPidAlive, type Owner } from './owner.js';
import { IntegrityError, ThinfsError } from '../util/errors.js';
import { atomicWrite, fsyncDir } from '../util/fsutil.js';
import { digestHex } from '../util/hash.js';

const execFileP = promisify(execFile);
export const TXN_OWNER = 'owner.json';
/** The owner record's mtime is refreshed this often while the transaction lives (its heartbeat). */
const TXN_HEARTBEAT_MS = 10_000;
/** A transaction owned elsewhere is presumed dead only after this long without a heartbeat, whatever the grace. */
const TXN_SILENT_MIN_MS = 60_000;

/**
 * - live: owner on this host, its process still running
 * - dead: owner on this host, process gone (crash, SIGKILL): its staging is garbage now
 * - remote: owner on another host (or unknown), heartbeat within the silence limit
 * - silent: owner elsewhere and no heartbeat for longer than the limit: presumed dead
 */
export type TxnState = 'live' | 'dead' | 'remote' | 'silent';

export interface TxnInfo {
  id: string;
  dir: string;
  owner: Owner | null;
  /** Creation time and label encoded in the id, when it is one of ours. */
  createdMs: number | null;
  label: string | null;
  /** ms since the owner record (or the dir) was last touched. */
  silentMs: number;
  state: TxnState;
}

/** Ids sort by creation time and say who made them: `<ms>-<pid>-<label>-<8 hex>`. Only this module builds or reads them. */
export function newTxnId(label: string): string {
  return `${Date.now()}-${process.pid}-${label.replace(/[^A-Za-z0-9_.]/g, '_').slice(0, 40)}-${randomBytes(4).toString('hex')}`;
}

export function parseTxnId(id: string): { createdMs: number; pid: number; label: string } | null {
  const m = /^(\d+)-(\d+)-([A-Za-z0-9_.-]*)-([0-9a-f]{8})$/.exec(id);
  return m ? { createdMs: Number(m[1]), pid: Number(m[2]), label: m[3]! } : null;
}

/** Every staging dir under txn/, with its owner and state; `silentLimitMs` decides remote vs silent. */
export async function listTxns(root: string, silentLimitMs = TXN_SILENT_MIN_MS): Promise<TxnInfo[]> {
  const dir = join(root, TXN_DIR);
  const out: TxnInfo[] = [];
  for (const id of await readdir(dir).catch(() => [] as string[])) {
    if (id.startsWith('.')) continue; // atomicWrite temp files of image descriptors
    const path = join(dir, id);
    const st = await stat(path).catch(() => null);
    if (!st?.isDirectory()) continue;
    let owner: Owner | null = null;
    let beat = st.mtimeMs;
    try {
      const ownerFile = join(path, TXN_OWNER);
      owner = JSON.parse(await readFile(ownerFile, 'utf8')) as Owner;
      beat = Math.max(beat, (await stat(ownerFile)).mtimeMs);
    } catch { /* not yet written, or damaged: judged by the dir's age alone */ }
    const parsed = parseTxnId(id);
    const silentMs = Date.now() - beat;
    const alive = owner ? isOwnerAlive(owner) : null;
    const state: TxnState = alive === true ? 'live' : alive === false ? 'dead' : silentMs > silentLimitMs ? 'silent' : 'remote';
    out.push({ id, dir: path, owner, createdMs: parsed?.createdMs ?? null, label: parsed?.label ?? null, silentMs, state });
  }
  return out;
}

/** Remove one transaction's staging (nothing in it is visible: objects reach data/ only at commit). */
export async function removeTxn(root: string, id: string): Promise<void> {
  if (!id || id.includes('/') || id.startsWith('.')) throw new ThinfsError(`not a transaction id: ${id}`);
  await rm(join(root, TXN_DIR, id), { recursive: true, force: true });
}

/**
 * Staging that can go: owners dead on this host at once; owners elsewhere once silent for longer than
 * max(graceMs, TXN_SILENT_MIN_MS). A live owner on this host is never reclaimed, whatever the grace.
 */
export async function reclaimableTxns(root: string, graceMs: number): Promise<TxnInfo[]> {
  return (await listTxns(root, Math.max(graceMs, TXN_SILENT_MIN_MS))).filter((t) => t.state === 'dead' || t.state === 'silent');
}

/**
 * Remove the staging of the transactions process `pid` of this host made, once it is dead: crash recovery by a
 * caller that knows the pid ran here (its own state says so). A transaction killed in its first moments has no
 * owner record yet, and only its id names the process.
 */
export async function removeTxnsOfDeadPid(root: string, pid: number): Promise<TxnInfo[]> {
  if (isPidAlive(pid)) return [];
  const gone = (await listTxns(root)).filter((t) => parseTxnId(t.id)?.pid === pid && (t.owner === null || t.state === 'dead'));
  for (const t of gone) await removeTxn(root, t.id);
  return gone;
}

/** Remove the staging of every transaction whose owner died on this host (crash recovery at start). */
export async function removeDeadTxns(root: string): Promise<TxnInfo[]> {
  const dead = (await listTxns(root)).filter((t) => t.state === 'dead');
  for (const t of dead) await removeTxn(root, t.id);
  return dead;
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

/** Up to this many new objects are flushed one fsync each; more by one syncfs. */
const FSYNC_EACH_MAX = 64;

/**
 * Make the staged files' contents durable before they are renamed into data/. syncfs flushes the whole
 * filesystem, other writers' dirty data included (on a shared node, seconds under write load), and costs a
 * `sync` process: worth it for a layer's thousands of objects, not for an image's config and manifest.
 * Pinned objects need nothing: they are links to files made durable by the transaction that wrote them.
 */
async function flushStaged(dir: string, names: string[]): Promise<void> {
  if (names.length === 0) return;
  if (names.length > FSYNC_EACH_MAX) { await syncFs(dir); return; }
  await parallel(names, 16, async (n) => {
    const fh = await open(join(dir, n), 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  });
}

const writerLog = createLogger('thinfs-store');

export interface TxnStore { readonly root: string; getLayer(diffId: string): Promise<LayerManifest | null>; withLayerLock<T>(diffId: string, fn: () => Promise<T>): Promise<T> }

/**
 * A publishing transaction. New objects are staged under txn/<id>/ and objects already in data/ are pinned
 * there by hard link; at commit, under the layer lock and the shared side of the store's sweep lock, both are
 * renamed into data/ (made durable first), and the manifest is written last: nobody ever sees a half-written
 * layer, and a concurrent gc can never leave a published layer without its objects (ARCHITECTURE.md, Store).
 */
export class Txn {
  readonly dir: string;
  readonly id: string;
  private readonly staged = new Set<string>();
  private readonly pinned = new Set<string>();
  private readonly unpinned = new Set<string>();
  /** Packs (pack.ts) staged or pinned here, by name; they go to packs/ at commit like objects to data/. */
  private readonly packs = new Set<string>();
  private readonly ready: Promise<void>;
  private heartbeat: NodeJS.Timeout | null = null;
  private done = false;
  /** The layer/fetch locks this transaction was started under: lost, and nothing more is staged or published. */
  private readonly locks: HeldLock[] = heldLocks();
  newObjects = 0;
  newBytes = 0;

  /** Optional worker pool for compression + writing (ingest uses one; tiny transactions do not need it). */
  pool: ObjectWriterPool | null = null;

  constructor(readonly store: TxnStore, label: string, readonly codec: Codec = Codec.Zstd) {
    this.id = newTxnId(label);
    this.dir = join(store.root, TXN_DIR, this.id);
    // owner.json lets gc tell a live transaction from one whose process died (same host) or went silent.
    const ownerFile = join(this.dir, TXN_OWNER);
    this.ready = mkdir(this.dir, { recursive: true })
      .then(() => writeFile(ownerFile, JSON.stringify(currentOwner())))
      .then(() => {
        if (this.done) return;
        this.heartbeat = setInterval(() => { const t = new Date(); utimes(ownerFile, t, t).catch(() => undefined); }, TXN_HEARTBEAT_MS);
        this.heartbeat.unref();
      });
    this.ready.catch(() => undefined);
  }

  /**
   * Store `data` under its hash unless the store (or this txn) already has it. Returns true if new. `level`: a zstd
   * level of its own (catalogs), written here rather than by the pool.
   */
  async put(hash: string, data: Uint8Array, level?: number): Promise<boolean> {
    if (this.staged.has(hash) || this.pinned.has(hash) || this.unpinned.has(hash)) return false;
    this.checkLocks();
    this.staged.add(hash);
    await this.ready;
    let size: number;
    try {
      // With a pool, the catalog (its own zstd level, ~0.2-0.5 s at 19) is compressed off this thread too.
      size = this.pool
        ? await this.pool.write(this.store.root, this.dir, hash, data, this.codec, level)
        : await stageObject(join(this.store.root, objectPath(hash)), join(this.dir, hash), data, this.codec, level);
    } catch (e) {
      this.staged.delete(hash);
      throw e;
    }
    if (size < 0) {
      this.staged.delete(hash);
      (size === PUT_PINNED ? this.pinned : this.unpinned).add(hash);
      return false;
    }
    this.newObjects++;
    this.newBytes += size;
    return true;
  }

  /** Send the writes put() queued for the writer pool now (its caller is about to wait for them). */
  flushWrites(): void { this.pool?.flush(this.dir); }

  /**
   * The framed bytes of an object this transaction put (staged or pinned here, or, where links are refused, in data/):
   * what a pack carries for it.
   */
  async frameOf(hash: string): Promise<Buffer> {
    if (!this.has(hash)) throw new ThinfsError(`object ${hash} was not put in this transaction`);
    await this.ready;
    return readFile(this.unpinned.has(hash) ? join(this.store.root, objectPath(hash)) : join(this.dir, hash));
  }

  /**
   * Stage a pack (already encoded, pack.ts) unless the store has it: pinned by hard link like an object (same
   * membership, same name: its members are the same whoever framed them). Packs are never written where hard links
   * are refused and the pack exists already: it is left as it is (a pack is a redundant copy; readers fall back).
   */
  async putPack(name: string, data: Buffer): Promise<boolean> {
    if (this.packs.has(name)) return false;
    this.packs.add(name);
    await this.ready;
    const staged = join(this.dir, `pack-${name}`);
    let size: number;
    try {
      size = await stageObject(join(this.store.root, packPath(name)), staged, data, Codec.None, undefined, true);
    } catch (e) { this.packs.delete(name); throw e; }
    if (size < 0) { if (size !== PUT_PINNED) this.packs.delete(name); return false; }
    this.newBytes += size;
    return true;
  }

  /**
   * A new encoding of a pack already in packs/ (the same members, some framed smaller: `restage`d here): checked to be
   * that pack, every member decoding to its hash, and renamed over the old file at commit like a restaged object.
   */
  async restagePack(name: string, data: Buffer): Promise<void> {
    if (this.packs.has(name)) return;
    for (const m of decodePackMembers(name, parsePack(name, data))) if ('error' in m) throw m.error;
    await this.ready;
    await writeFile(join(this.dir, `pack-${name}`), data, { flag: 'wx' });
    this.packs.add(name);
    this.newBytes += data.length;
  }

  /**
   * A new encoding of an object already in data/ (the same bytes, compressed harder), checked to decode to its hash:
   * staged here and renamed over the old file at commit, so a reader gets the old or the new file, never a torn one.
   */
  async restage(hash: string, framed: Buffer): Promise<void> {
    if (this.has(hash)) return;
    decodeObject(hash, framed);
    await this.ready;
    await writeFile(join(this.dir, hash), framed, { flag: 'wx' });
    this.staged.add(hash);
    this.newBytes += framed.length;
  }

  /**
   * Make staged and pinned objects durable and visible, then publish the manifest. If another node published
   * the same layer meanwhile, ours is discarded and theirs returned (exactly once).
   */
  async commit(manifest: LayerManifest, opts: { repair?: boolean } = {}): Promise<{ manifest: LayerManifest; published: boolean; restored: number }> {
    await this.ready;
    if (!this.has(manifest.catalog)) throw new ThinfsError(`commit: catalog object ${manifest.catalog} was not put in this transaction`);
    const root = this.store.root;
    // The signing key is loaded first: a bad key refuses the commit before anything is published.
    const signing = await writerSigningOptions();
    const res = await this.store.withLayerLock(manifest.diffId, async () => {
      const existing = await this.store.getLayer(manifest.diffId);
      if (existing && opts.repair) {
        // fsck --repair re-ingested a published layer: the same layer gives the same catalog, so the objects
        // regenerated (staged because they were missing) are exactly the ones the published manifest names.
        if (existing.catalog !== manifest.catalog) {
          await this.abort();
          throw new IntegrityError(existing.catalog, `repair of ${manifest.diffId}: re-ingest gives catalog ${manifest.catalog}, the published manifest names ${existing.catalog} (different chunking?); nothing restored`);
        }
        const restored = this.newObjects;
        await this.publish(async () => {});
        return { manifest: existing, published: false, restored };
      }
      if (existing) { await this.abort(); return { manifest: existing, published: false, restored: 0 }; }
      await this.publish(async () => {
        await atomicWrite(join(root, layerPath(digestHex(manifest.diffId))), JSON.stringify(manifest, null, 2) + '\n', this.dir);
      });
      return { manifest, published: true, restored: 0 };
    });
    // The repository manifest names the new layer (its own lock serializes writers). A layer found published already
    // is named too: a writer that died between its layer manifest and the republish left it out (this re-run heals it).
    if (res.published || !(await manifestNamesLayer(root, digestHex(manifest.diffId)))) await republishManifest(root, { ...signing, log: writerLog });
    return res;
  }

  /** Commit objects only, then run `then` (e.g. write an image descriptor) while gc is still held off. */
  async commitObjects(then: () => Promise<void> = async () => {}): Promise<void> {
    await this.ready;
    await this.publish(then);
  }

  /** Throws LockLostError when a lock this work runs under was lost (taken over after a stall). */
  private checkLocks(): void {
    for (const l of this.locks) l.check();
    for (const l of heldLocks()) l.check();
  }

  private has(hash: string): boolean { return this.staged.has(hash) || this.pinned.has(hash) || this.unpinned.has(hash); }

  private async publish(write: () => Promise<void>): Promise<void> {
    const root = this.store.root;
    this.checkLocks();
    await withCommitLock(root, this.id, async () => {
      // New pack files are flushed with the objects (pinned ones cost an fsync of a file already durable).
      await flushStaged(this.dir, [...this.staged, ...[...this.packs].map((n) => `pack-${n}`)]);
      const touched = new Set<string>();
      // Pinned objects are renamed back too: a no-op when data/<hash> is still the same inode, a restore
      // when a sweep unlinked it meanwhile. Renames are independent metadata operations: a few in parallel
      // hide NFS round trips.
      await parallel([...this.staged, ...this.pinned], 16, async (hash) => {
        try { await rename(join(this.dir, hash), join(root, objectPath(hash))); } catch (e) {
          throw new ThinfsError(`commit: staged object ${hash} is gone (${(e as Error).message}); was the transaction's staging removed?`);
        }
        touched.add(hash.slice(0, 2));
      });
      // Packs after the objects they copy, so a pack never names an object not yet in place.
      const packFans = new Set<string>();
      if (this.packs.size) {
        // A store made before packs has no packs/ yet: made here, durably (its entry in the root, then the fan-out's).
        const made = await mkdir(join(root, PACKS_DIR), { recursive: true });
        await parallel([...new Set([...this.packs].map((n) => n.slice(0, 2)))], 16, (f) => mkdir(join(root, PACKS_DIR, f), { recursive: true }).then(() => undefined));
        await fsyncDir(join(root, PACKS_DIR));
        if (made) await fsyncDir(root);
      }
      await parallel([...this.packs], 16, async (name) => {
        try { await rename(join(this.dir, `pack-${name}`), join(root, packPath(name))); } catch (e) {
          throw new ThinfsError(`commit: staged pack ${name} is gone (${(e as Error).message}); was the transaction's staging removed?`);
        }
        packFans.add(name.slice(0, 2));
      });
      await parallel([...packFans], 16, (d) => fsyncDir(join(root, PACKS_DIR, d)));
      await parallel([...touched], 16, (d) => fsyncDir(join(root, DATA_DIR, d)));
      // Only where hard links were refused: objects deduplicated without a pin must still be there.
      for (const hash of this.unpinned) {
        try { await access(join(root, objectPath(hash))); } catch {
          throw new IntegrityError(hash, `commit: object ${hash} this transaction deduplicated against was removed meanwhile; retry`);
        }
      }
      // Last moment to refuse: the objects are in data/ (harmless, gc's to take), the manifest is not written.
      this.checkLocks();
      await write();
    });
    await this.finish();
  }

  async abort(): Promise<void> { await this.finish(); }

  private async finish(): Promise<void> {
    this.done = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    await this.ready.catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }
}
