// The node-local cache directory on disk: its layout, its permissions (private to the daemon), atomic writes through
// tmp/, and the scan that rebuilds the index after a restart. Shared safely by several mounts on one node:
//   <dir>/chunks/<2 hex>/<62 hex>   decoded chunk bytes; the name is their SHA-256, re-checked on every disk read
//   <dir>/files/<2 hex>/<62 hex>    whole files assembled from verified chunks, for FUSE passthrough; named by
//                                   the SHA-256 of the file's chunk map (same layout, same file, in any layer)
//   <dir>/verified/<2 hex>/<62 hex> the verified identity of the whole-file copy of the same name (copy-trust.ts)
//   <dir>/catalogs/<hash>.sqlite    decoded layer catalogs (verified when fetched and when reopened)
//   <dir>/catalogs/<hash>.<sha>.listings  that catalog's listings, rebuilt here once (catalogs do not ship them); <sha>
//                                   is the SHA-256 of the file, re-checked whenever a layer loads it; indexed and
//                                   evicted with its catalog (one entry, both sizes)
//   <dir>/tmp/                      in-flight writes, renamed into place (readers see whole files or none)
import { chmod, mkdir, readdir, readFile, rename, rm, stat, unlink, writeFile, open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ThinfsError, UsageError } from '../util/errors.js';
import type { CacheKey } from './quota.js';

/**
 * The cache holds the content of every file read through the mount, whatever its mode in the image (a 0600 file's
 * chunks, small files inlined in catalogs): only the daemon's user may enter it, as on a multi-user node anyone could
 * otherwise read what the mount's permissions keep from them.
 */
const PRIVATE_DIR = 0o700, PRIVATE_FILE = 0o600;

/** What a cache directory may hold (stats/: the mount's default stats file). */
// verified/: see above. trust/: the highest signed manifest revision seen (src/store/trust.ts), kept with the cache for replay protection.
const OWN_ENTRIES = new Set(['chunks', 'files', 'verified', 'catalogs', 'tmp', 'stats', 'trust']);

/** chmod for the start-up repair of an older cache; a file gone meanwhile (another mount evicted it) is fine. */
async function makePrivate(p: string, mode: number): Promise<void> {
  await chmod(p, mode).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
}

const LISTINGS_NAME = /^([0-9a-f]{64})\.([0-9a-f]{64})\.listings$/;

export interface FoundEntry { key: CacheKey; size: number; lastUsedMs: number }

export class CacheDir {
  readonly chunks: string;
  readonly files: string;
  /** Trust records of whole-file copies (not trust/, the store's signed-manifest state). */
  readonly trust: string;
  readonly catalogs: string;
  readonly tmp: string;

  constructor(readonly root: string) {
    this.chunks = join(root, 'chunks');
    this.files = join(root, 'files');
    this.trust = join(root, 'verified');
    this.catalogs = join(root, 'catalogs');
    this.tmp = join(root, 'tmp');
  }

  chunkPath(hash: string): string { return join(this.chunks, hash.slice(0, 2), hash.slice(2)); }
  filePath(fileId: string): string { return join(this.files, fileId.slice(0, 2), fileId.slice(2)); }
  trustPath(fileId: string): string { return join(this.trust, fileId.slice(0, 2), fileId.slice(2)); }
  catalogPath(hash: string): string { return join(this.catalogs, `${hash}.sqlite`); }
  listingsPath(catalog: string, sha: string): string { return join(this.catalogs, `${catalog}.${sha}.listings`); }

  /** The listings files kept for a catalog (normally one): their SHA-256s (from their names) and paths. */
  async listingsOf(catalog: string): Promise<Array<{ sha: string; path: string }>> {
    const out: Array<{ sha: string; path: string }> = [];
    for (const n of await readdir(this.catalogs).catch(() => [] as string[])) {
      const m = LISTINGS_NAME.exec(n);
      if (m && m[1] === catalog) out.push({ sha: m[2]!, path: join(this.catalogs, n) });
    }
    return out;
  }
  /** The file of an index key (see CacheKey). */
  pathOf(key: CacheKey): string {
    if (key.startsWith('f:')) return this.filePath(key.slice(2));
    if (key.startsWith('c:')) return this.catalogPath(key.slice(2));
    return this.chunkPath(key);
  }

  /** Create the layout, private; an existing cache is repaired, since older versions made it 0755 with 0644 files. */
  async create(): Promise<void> {
    // Made private below, so it must be ours alone: --cache-dir /var/cache would otherwise lock others out of it.
    const foreign = (await readdir(this.root).catch(() => [] as string[])).filter((n) => !OWN_ENTRIES.has(n));
    if (foreign.length) {
      throw new UsageError(`cache directory ${this.root} holds files thinfs did not make (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', ...' : ''}): give --cache-dir a directory of its own`);
    }
    await mkdir(this.root, { recursive: true, mode: PRIVATE_DIR });
    // Another user's directory (or a symlink to one) stays theirs after our chmod: they could open it again, or
    // swap our subdirectories for their own. Only a directory this user owns can be made private.
    const st = await stat(this.root);
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) {
      throw new UsageError(`cache directory ${this.root} is owned by uid ${st.uid}, not by this user (uid ${uid}): give --cache-dir a directory of your own`);
    }
    for (const d of [this.root, this.chunks, this.files, this.trust, this.tmp, this.catalogs]) {
      await mkdir(d, { recursive: true, mode: PRIVATE_DIR });
      await chmod(d, PRIVATE_DIR).catch((e: NodeJS.ErrnoException) => {
        throw new ThinfsError(`cache directory ${d}: cannot make it private (${e.code ?? e.message}); use a --cache-dir this user owns`);
      });
    }
    await this.cleanTmp();
  }

  /** What a previous run left: every chunk, whole-file copy and catalog, oldest use first (files made private on the way). */
  async scan(): Promise<FoundEntry[]> {
    const found: FoundEntry[] = [];
    const add = async (p: string, key: CacheKey): Promise<FoundEntry | null> => {
      const st = await stat(p).catch(() => null);
      if (!st) return null;
      if (st.mode & 0o077) await makePrivate(p, PRIVATE_FILE);
      const e = { key, size: st.size, lastUsedMs: Math.max(st.atimeMs, st.mtimeMs) };
      found.push(e);
      return e;
    };
    for (const [dir, prefix] of [[this.chunks, ''], [this.files, 'f:']] as const) {
      const fans = await readdir(dir).catch(() => [] as string[]);
      await Promise.all(fans.filter((f) => /^[0-9a-f]{2}$/.test(f)).map(async (fan) => {
        await makePrivate(join(dir, fan), PRIVATE_DIR);
        for (const n of await readdir(join(dir, fan)).catch(() => [] as string[])) {
          if (/^[0-9a-f]{62}$/.test(n)) await add(join(dir, fan, n), prefix + fan + n);
        }
      }));
    }
    // Trust records: private like the rest; one whose copy is gone is removed (a crash between the two unlinks).
    for (const fan of (await readdir(this.trust).catch(() => [] as string[])).filter((f) => /^[0-9a-f]{2}$/.test(f))) {
      await makePrivate(join(this.trust, fan), PRIVATE_DIR);
      for (const n of await readdir(join(this.trust, fan)).catch(() => [] as string[])) {
        const p = join(this.trust, fan, n);
        if (!/^[0-9a-f]{62}$/.test(n) || !(await stat(this.filePath(fan + n)).catch(() => null))) await unlink(p).catch(() => {});
        else await makePrivate(p, PRIVATE_FILE);
      }
    }
    // A catalog's listings count in its entry; listings whose catalog is gone (a crash between the two unlinks) go.
    const names = await readdir(this.catalogs).catch(() => [] as string[]);
    const catalogs = new Map<string, FoundEntry>();
    for (const n of names) {
      const m = /^([0-9a-f]{64})\.sqlite$/.exec(n);
      const e = m ? await add(join(this.catalogs, n), `c:${m[1]}`) : null;
      if (e) catalogs.set(m![1]!, e);
      else if (!m && !LISTINGS_NAME.test(n)) await makePrivate(join(this.catalogs, n), PRIVATE_FILE);
    }
    for (const n of names) {
      const m = LISTINGS_NAME.exec(n);
      if (!m) continue;
      const p = join(this.catalogs, n);
      const cat = catalogs.get(m[1]!);
      if (!cat) { await unlink(p).catch(() => {}); continue; }
      const st = await stat(p).catch(() => null);
      if (!st) continue;
      if (st.mode & 0o077) await makePrivate(p, PRIVATE_FILE);
      cat.size += st.size;
    }
    return found.sort((a, b) => a.lastUsedMs - b.lastUsedMs);
  }

  private async cleanTmp(): Promise<void> {
    const cutoff = Date.now() - 10 * 60_000;
    for (const n of await readdir(this.tmp).catch(() => [] as string[])) {
      const p = join(this.tmp, n);
      const st = await stat(p).catch(() => null);
      if (st && st.mtimeMs < cutoff) await rm(p, { force: true, recursive: true });
      else if (st) await makePrivate(p, st.isDirectory() ? PRIVATE_DIR : PRIVATE_FILE);
    }
  }

  /** A fresh name in tmp/ (not created). */
  tmpName(what: string): string { return join(this.tmp, `${what}.${process.pid}.${randomBytes(4).toString('hex')}`); }

  /** Write bytes under a key's name atomically (tmp + rename): readers see the whole file or none. */
  async write(key: CacheKey, data: Buffer): Promise<void> {
    const tmp = this.tmpName(key.replace(':', '-'));
    try {
      await writeFile(tmp, data, { mode: PRIVATE_FILE });
      await this.place(tmp, key);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** A private temp file to fill, then place() or discard(). */
  async createTmp(what: string): Promise<{ path: string; fh: FileHandle }> {
    const path = this.tmpName(what);
    return { path, fh: await open(path, 'w', PRIVATE_FILE) };
  }

  /** Rename a finished temp file into a key's place. */
  async place(tmp: string, key: CacheKey): Promise<void> {
    const dest = this.pathOf(key);
    if (!key.startsWith('c:')) await mkdir(join(dest, '..'), { recursive: true, mode: PRIVATE_DIR });
    await rename(tmp, dest);
  }

  /** Rename a finished listings file into its place next to its catalog; its path. */
  async placeListings(tmp: string, catalog: string, sha: string): Promise<string> {
    const dest = this.listingsPath(catalog, sha);
    await rename(tmp, dest);
    return dest;
  }

  async discard(tmp: string): Promise<void> { await rm(tmp, { force: true }); }

  /**
   * Remove a key's file (already gone is fine: another mount sharing the directory may have evicted it), and a
   * whole-file copy's trust record with it (first: a record never outlives its copy's verified bytes).
   */
  async remove(key: CacheKey): Promise<void> {
    if (key.startsWith('f:')) await this.removeTrust(key.slice(2));
    await unlink(this.pathOf(key)).catch(() => {});
    // A catalog's listings go with it (after it: a crash in between leaves an orphan the next scan removes).
    if (key.startsWith('c:')) for (const l of await this.listingsOf(key.slice(2))) await unlink(l.path).catch(() => {});
  }

  /** Write a whole-file copy's trust record atomically and durably (tmp, fsync, rename): a crash leaves the old one or the new. */
  async writeTrust(fileId: string, data: Buffer): Promise<void> {
    const { path: tmp, fh } = await this.createTmp(`trust-${fileId}`);
    try {
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally { await fh.close(); }
      const dest = this.trustPath(fileId);
      await mkdir(join(dest, '..'), { recursive: true, mode: PRIVATE_DIR });
      await rename(tmp, dest);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** A whole-file copy's trust record, or null. */
  async readTrust(fileId: string): Promise<Buffer | null> { return readFile(this.trustPath(fileId)).catch(() => null); }

  async removeTrust(fileId: string): Promise<void> { await unlink(this.trustPath(fileId)).catch(() => {}); }
}
