import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readTar, type TarEntry } from '../tar/reader.js';
import { Chunker, DEFAULT_CHUNKING, type ChunkParams } from '../chunker/fastcdc.js';
import { CatalogWriter } from '../catalog/writer.js';
import { DirentKind, FLAG_IMPLICIT, FLAG_OPAQUE, ROOT_INO, type EntryType } from '../catalog/schema.js';
import type { WritableStore } from '../store/store.js';
import { Codec } from '../store/codec.js';
import { ObjectWriterPool } from '../store/writer-pool.js';
import type { LayerManifest } from '../store/types.js';
import { BadInputError, IntegrityError, NotFoundError, ThinfsError } from '../util/errors.js';
import { Progress } from '../util/progress.js';
import type { Logger } from '../util/log.js';
import { isDigest, sha256hex } from '../util/hash.js';
import { openLayerSource } from './source.js';


/** Files up to this size live inside the catalog: no object, no extra round trip on first read. */
export const INLINE_MAX = 1024;
/** Chunk writes in flight: enough to overlap hashing/compression with store I/O, bounded memory (x max chunk). */
const MAX_INFLIGHT = 16;

export interface IngestOptions {
  /** Registry blob digest the input must hash to (verified, not trusted). */
  blobDigest?: string;
  blobMediaType?: string;
  /** diff id the uncompressed tar must hash to (from an image config). */
  expectDiffId?: string;
  source?: string;
  progress?: boolean;
  /** Total input size, for the progress bar when reading a stream. */
  totalBytes?: number;
  log?: Logger;
  codec?: Codec;
  chunking?: ChunkParams;
  /** Where the catalog is built before it becomes an object (default: the OS temp dir). */
  scratchDir?: string;
  /** Called after the catalog is built, before commit: test hook for crash-safety checks. */
  beforeCommit?: () => Promise<void>;
}

export interface IngestStats {
  entries: number; files: number; bytes: number; chunks: number; inlined: number;
  tarBytes: number; blobBytes: number; newObjects: number; newBytes: number; seconds: number;
}

// blobDigest is the digest of *this* input; manifest.blobDigest is whichever blob published the layer first.
export interface IngestResult { manifest: LayerManifest; published: boolean; stats: IngestStats; blobDigest: string }

interface Node { ino: number; type: EntryType; kind: DirentKind; parent: number; name: Buffer }

/** A name for an error message: escaped (no raw control bytes to a terminal), long ones cut. */
function printable(b: Buffer): string {
  return b.length > 200 ? JSON.stringify(b.subarray(0, 200).toString('utf8')) + `... (${b.length} bytes)` : JSON.stringify(b.toString('utf8'));
}

/** "./a//b/" -> "a/b"; refuses absolute paths and any ".." so nothing can land outside the layer. */
function normalize(raw: Buffer, what: string): string {
  const s = raw.toString('latin1');
  if (s.startsWith('/')) throw new BadInputError(`${what} ${printable(raw)} is an absolute path`);
  const parts = s.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new BadInputError(`${what} ${printable(raw)} contains ".." (escapes the layer root)`);
  return parts.join('/');
}

/** Linux limits (limits.h): a name component of NAME_MAX bytes, a symlink target under PATH_MAX with its NUL. */
const NAME_MAX = 255;
const PATH_MAX = 4096;
/** uid_t/gid_t are 32 bits and (uid_t)-1 means "no id": a larger id would be cut to its low bits when served. */
const ID_MAX = 0xfffffffe;

/** What the kernel cannot represent is refused here, not stored to be served wrong (EIO, truncated, id 0). */
function checkLimits(e: TarEntry): void {
  for (const part of e.path.toString('latin1').split('/')) {
    if (part.length > NAME_MAX) throw new BadInputError(`member ${printable(e.path)}: a name component is ${part.length} bytes (the limit is ${NAME_MAX})`);
  }
  if (e.type === 'symlink' && e.linkpath!.length >= PATH_MAX) {
    throw new BadInputError(`symlink ${printable(e.path)}: target of ${e.linkpath!.length} bytes (the limit is ${PATH_MAX - 1})`);
  }
  for (const [what, id] of [['uid', e.uid], ['gid', e.gid]] as const) {
    if (!(id >= 0 && id <= ID_MAX)) throw new BadInputError(`member ${printable(e.path)}: ${what} ${id} is not a valid Linux id (0..${ID_MAX})`);
  }
}

/**
 * Stream a layer tar (plain, gzip or zstd) into the store in one pass: tar -> chunker -> verified,
 * compressed objects staged in a transaction + one SQLite catalog; then publish the layer manifest
 * atomically. Memory is bounded by MAX_INFLIGHT x max chunk, whatever the layer size.
 */
export async function ingestTar(input: string | NodeJS.ReadableStream, store: WritableStore, opts: IngestOptions = {}): Promise<IngestResult> {
  const t0 = process.hrtime.bigint();
  const chunking = opts.chunking ?? DEFAULT_CHUNKING;
  for (const [what, v] of [['diff id', opts.expectDiffId], ['blob digest', opts.blobDigest]] as const) {
    if (v !== undefined && !isDigest(v)) throw new BadInputError(`expected ${what} ${JSON.stringify(v)} is not a sha256 digest`);
  }
  const bar: { p: Progress | null } = { p: null };
  const source = await openLayerSource(input, (size) => (bar.p = opts.progress
    ? new Progress(`ingest ${opts.source ?? (typeof input === 'string' ? input : 'layer')}`, size ?? opts.totalBytes) : null));

  const txn = store.beginTxn(opts.source ? opts.source.split('/').pop()! : 'ingest', opts.codec ?? Codec.Zstd);
  const pool = new ObjectWriterPool();
  txn.pool = pool;
  const tmp = await mkdtemp(join(opts.scratchDir ?? tmpdir(), 'thinfs-catalog-'));
  const catalogPath = join(tmp, 'catalog.db');
  const cat = new CatalogWriter(catalogPath);
  const stats: IngestStats = { entries: 0, files: 0, bytes: 0, chunks: 0, inlined: 0, tarBytes: 0, blobBytes: 0, newObjects: 0, newBytes: 0, seconds: 0 };

  // Bounded set of object writes in flight; the first failure aborts the whole ingest.
  const inflight = new Set<Promise<void>>();
  let writeError: unknown = null;
  const schedule = async (hash: string, data: Buffer) => {
    const p: Promise<void> = txn.put(hash, data).then(() => undefined, (e) => { writeError ??= e; });
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
    if (inflight.size >= MAX_INFLIGHT) await Promise.race(inflight);
    if (writeError) throw writeError;
  };

  try {
    const nodes = new Map<string, Node>();
    const rootIno = cat.addInode({ type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, mtimeNs: 0, flags: FLAG_IMPLICIT });
    if (rootIno !== ROOT_INO) throw new Error('catalog root inode mismatch');
    nodes.set('', { ino: ROOT_INO, type: 'dir', kind: DirentKind.Normal, parent: 0, name: Buffer.alloc(0) });
    let rootFlags = FLAG_IMPLICIT;
    let namePrefix: string | null = null;
    /** Hidden whiteouts (see hideWhiteout) by parent and name. */
    const hiddenWhiteouts = new Map<string, number>();

    /** Parent directory of `path`, created implicitly if the tar never listed it; refuses paths through symlinks. */
    const parentOf = (path: string, raw: Buffer): number => {
      const slash = path.lastIndexOf('/');
      const pp = slash < 0 ? '' : path.slice(0, slash);
      const n = nodes.get(pp);
      if (n) {
        if (n.type === 'dir' && n.kind === DirentKind.Normal) return n.ino;
        if (n.type === 'symlink') throw new BadInputError(`entry ${printable(raw)} would be written through symlink ${JSON.stringify(pp)}`);
        throw new BadInputError(`entry ${printable(raw)}: parent ${JSON.stringify(pp)} is not a directory`);
      }
      const gp = parentOf(pp, raw);
      const name = Buffer.from(pp.slice(pp.lastIndexOf('/') + 1), 'latin1');
      const ino = cat.addInode({ type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, mtimeNs: 0, flags: FLAG_IMPLICIT });
      cat.link(gp, name, ino);
      nodes.set(pp, { ino, type: 'dir', kind: DirentKind.Normal, parent: gp, name });
      return ino;
    };

    for await (const { entry: e, data } of readTar(source.tar)) {
      stats.entries++;
      if (namePrefix === null) namePrefix = e.path.toString('latin1').startsWith('./') ? './' : '';
      let path = normalize(e.path, 'member');
      checkLimits(e);
      const base = path.slice(path.lastIndexOf('/') + 1);
      let kind = DirentKind.Normal;
      let type: EntryType = e.type === 'hardlink' ? 'file' : e.type;
      let rdev = [e.devmajor, e.devminor];

      if (path === '') {
        if (e.type !== 'dir') throw new BadInputError(`member ${printable(e.path)} names the layer root but is not a directory`);
        cat.updateDir(ROOT_INO, { ...meta(e), type: 'dir' }, rootFlags &= ~FLAG_IMPLICIT);
        continue;
      }
      // OCI whiteouts become what overlayfs understands: a 0/0 char device, or an opaque xattr on the dir.
      if (base === '.wh..wh..opq') {
        kind = DirentKind.OpaqueMarker;
      } else if (base.startsWith('.wh.')) {
        if (e.type !== 'file' || base.length === 4) throw new BadInputError(`whiteout ${printable(e.path)} is not a plain empty file`);
        // ".wh.." and ".wh..." would hide "." or "..": not names a directory can hold.
        if (base === '.wh..' || base === '.wh...') throw new BadInputError(`whiteout ${printable(e.path)} names ${JSON.stringify(base.slice(4))}, which cannot be deleted`);
        kind = DirentKind.Whiteout;
        path = path.slice(0, path.length - base.length) + base.slice(4);
        type = 'chardev'; rdev = [0, 0];
      }
      const parent = parentOf(path, e.path);
      const name = Buffer.from(path.slice(path.lastIndexOf('/') + 1), 'latin1');

      if (e.type === 'hardlink') {
        const target = normalize(e.linkpath!, `hardlink target of ${printable(e.path)}`);
        const t = nodes.get(target);
        if (!t) throw new BadInputError(`hardlink ${printable(e.path)} points to ${printable(e.linkpath!)}, which is not in the layer before it`);
        if (t.type === 'dir') throw new BadInputError(`hardlink ${printable(e.path)} points to a directory`);
        if (t.kind !== DirentKind.Normal) throw new BadInputError(`hardlink ${printable(e.path)} points to a whiteout`);
        if (target === path) continue;
        replace(path, parent, name);
        cat.link(parent, name, t.ino, DirentKind.Normal, false);
        nodes.set(path, { ino: t.ino, type: t.type, kind: DirentKind.Normal, parent, name });
        continue;
      }

      const existing = nodes.get(path);
      if (existing && existing.type === 'dir' && e.type === 'dir' && kind === DirentKind.Normal) {
        cat.updateDir(existing.ino, { ...meta(e), type: 'dir' }, 0);
        continue;
      }
      // OCI: a whiteout applies to lower layers only (umoci applies it so). After an entry of its own layer with the
      // same name it leaves that entry visible; a directory becomes opaque (only its lower contents go). The whiteout
      // itself is kept as a hidden dirent so that export writes it back.
      if (kind === DirentKind.Whiteout && existing?.kind === DirentKind.Normal) {
        if (existing.type === 'dir') cat.setFlags(existing.ino, FLAG_OPAQUE);
        hideWhiteout(parent, name, cat.addInode({ ...meta(e), type: 'chardev' }), true);
        continue;
      }
      const afterWhiteout = replace(path, parent, name);

      let inline: Buffer | null = null;
      const isFile = type === 'file' && kind === DirentKind.Normal;
      if (isFile && !e.sparse && e.size <= INLINE_MAX) {
        const parts: Buffer[] = [];
        for await (const b of data) parts.push(b);
        inline = Buffer.concat(parts);
        if (inline.length !== e.size) throw new BadInputError(`member ${printable(e.path)}: size mismatch`);
        stats.inlined++;
      }
      const ino = cat.addInode({
        ...meta(e), type, size: isFile ? e.size : 0,
        rdevMajor: rdev[0], rdevMinor: rdev[1],
        target: type === 'symlink' ? e.linkpath : null,
        inline,
      });
      cat.link(parent, kind === DirentKind.OpaqueMarker ? Buffer.from('.wh..wh..opq') : name, ino, kind);
      if (kind === DirentKind.OpaqueMarker) cat.setFlags(parent, FLAG_OPAQUE);
      // A directory after a whiteout of its name in the same layer: fresh, nothing of the lower ones shows through.
      if (afterWhiteout && type === 'dir') cat.setFlags(ino, FLAG_OPAQUE);
      for (const [k, v] of e.xattrs) cat.addXattr(ino, k, v);
      if (kind !== DirentKind.OpaqueMarker) nodes.set(path, { ino, type, kind, parent, name });
      if (isFile) {
        stats.files++;
        stats.bytes += e.size;
        if (!inline) await chunkFile(ino, e, data);
      }
    }
    if (opts.log) opts.log.debug({ entries: stats.entries }, 'tar read');

    /** An earlier entry of this layer with this path gives way to a new one; true when it was a whiteout (kept hidden). */
    function replace(path: string, parent: number, name: Buffer): boolean {
      const old = nodes.get(path);
      if (!old) return false;
      if (old.type === 'dir' && old.kind === DirentKind.Normal) throw new BadInputError(`member ${JSON.stringify(path)} replaces a directory with a non-directory`);
      nodes.delete(path);
      if (old.kind === DirentKind.Whiteout) {
        // Still deletes the name from lower layers: moved to a hidden dirent before its own name is unlinked.
        hideWhiteout(parent, name, old.ino, false);
        cat.unlink(parent, name, old.ino);
        return true;
      }
      cat.unlink(parent, name, old.ino);
      return false;
    }

    /**
     * A whiteout sharing its name with an entry of its own layer, stored as a hidden dirent (`.wh.NAME`, kind 2: never
     * listed or looked up, written back as is by export). A repeated one replaces the previous.
     */
    function hideWhiteout(parent: number, name: Buffer, ino: number, isNewInode: boolean): void {
      const hidden = Buffer.concat([Buffer.from('.wh.'), name]);
      const key = `${parent}/${hidden.toString('latin1')}`;
      const prev = hiddenWhiteouts.get(key);
      if (prev !== undefined) cat.unlink(parent, hidden, prev);
      cat.link(parent, hidden, ino, DirentKind.OpaqueMarker, isNewInode);
      hiddenWhiteouts.set(key, ino);
    }

    async function chunkFile(ino: number, e: TarEntry, data: AsyncIterable<Buffer>): Promise<void> {
      const segs = e.sparse ?? [{ offset: 0, size: e.size }];
      let si = 0, left = segs[0]?.size ?? 0, offset = segs[0]?.offset ?? 0, idx = 0;
      const chunker = new Chunker(chunking);
      const emit = async (c: Buffer) => {
        const hash = sha256hex(c);
        cat.addChunk(ino, idx++, offset, c.length, Buffer.from(hash, 'hex'));
        offset += c.length;
        stats.chunks++;
        await schedule(hash, c);
      };
      const nextSeg = async () => {
        const last = chunker.flush();
        if (last) await emit(last);
        si++;
        while (si < segs.length && segs[si]!.size === 0) si++;
        if (si < segs.length) { left = segs[si]!.size; offset = segs[si]!.offset; }
      };
      if (left === 0 && segs.length > 1) { si = -1; await nextSeg(); }
      for await (let b of data) {
        while (b.length) {
          if (si >= segs.length) throw new BadInputError(`member ${printable(e.path)}: more data than its sparse map`);
          const k = Math.min(left, b.length);
          for (const c of chunker.push(b.subarray(0, k))) await emit(c);
          b = b.subarray(k);
          left -= k;
          if (left === 0) await nextSeg();
        }
      }
      const last = chunker.flush();
      if (last) await emit(last);
    }

    await Promise.all(inflight);
    if (writeError) throw writeError;

    const { diffId, blobDigest, tarBytes, blobBytes } = source.digests();
    if (opts.expectDiffId && opts.expectDiffId !== diffId) throw new IntegrityError(opts.expectDiffId, `layer content hashes to ${diffId}, expected diff id ${opts.expectDiffId}`);
    if (opts.blobDigest && opts.blobDigest !== blobDigest) throw new IntegrityError(opts.blobDigest, `layer blob hashes to ${blobDigest}, expected ${opts.blobDigest}`);

    // No timestamps or blob digests in the catalog: the same layer gives the same catalog object on every node.
    cat.finish({ diff_id: diffId, name_prefix: namePrefix ?? '', root_explicit: rootFlags & FLAG_IMPLICIT ? 0 : 1,
      chunk_min: chunking.min, chunk_avg: chunking.avg, chunk_max: chunking.max, inline_max: INLINE_MAX });
    const catalogData = await readFile(catalogPath);
    const catalogHash = sha256hex(catalogData);
    const catalogSize = catalogData.length; // put() may hand the buffer's memory to a worker
    await txn.put(catalogHash, catalogData);
    stats.tarBytes = tarBytes; stats.blobBytes = blobBytes;
    const manifest: LayerManifest = {
      schemaVersion: 1, mediaType: 'application/vnd.thinfs.layer.v1+json',
      diffId, blobDigest, ...(opts.blobMediaType ? { blobMediaType: opts.blobMediaType } : {}),
      catalog: catalogHash, catalogSize,
      sizes: { tar: tarBytes, blob: blobBytes, files: stats.bytes, stored: txn.newBytes },
      counts: { entries: stats.entries, files: stats.files, chunks: stats.chunks, objects: txn.newObjects, inlined: stats.inlined },
      chunking: { ...chunking, inlineMax: INLINE_MAX },
      created: new Date().toISOString(),
      ...(opts.source ? { source: opts.source } : {}),
    };
    if (opts.beforeCommit) await opts.beforeCommit();
    const res = await txn.commit(manifest);
    stats.newObjects = res.published ? txn.newObjects : 0;
    stats.newBytes = res.published ? txn.newBytes : 0;
    stats.seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    bar.p?.finish();
    opts.log?.info({ diffId, published: res.published, ...stats }, res.published ? 'layer published' : 'layer was already published');
    return { manifest: res.manifest, published: res.published, stats, blobDigest };
  } catch (e) {
    bar.p?.finish();
    await Promise.allSettled(inflight);
    try { cat.abort(); } catch { /* already closed */ }
    await txn.abort();
    source.destroy();
    throw e;
  } finally {
    await pool.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

function meta(e: TarEntry) {
  return { mode: e.mode, uid: e.uid, gid: e.gid, uname: e.uname || null, gname: e.gname || null, mtime: e.mtime, mtimeNs: e.mtimeNs, size: 0 };
}
