import { createReadStream } from 'node:fs';
import { stat, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
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
import { sha256hex } from '../util/hash.js';

const require = createRequire(import.meta.url);
const zstd: { DecompressStream: new () => NodeJS.ReadWriteStream } = require('zstd-napi');

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

type Compression = 'gzip' | 'zstd' | 'none';

function sniff(head: Buffer): Compression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') throw new BadInputError('bzip2-compressed layers are not supported (use gzip, zstd or plain tar)');
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) throw new BadInputError('xz-compressed layers are not supported (use gzip, zstd or plain tar)');
  return 'none';
}

function printable(b: Buffer): string {
  return JSON.stringify(b.toString('utf8'));
}

/** "./a//b/" -> "a/b"; refuses absolute paths and any ".." so nothing can land outside the layer. */
function normalize(raw: Buffer, what: string): string {
  const s = raw.toString('latin1');
  if (s.startsWith('/')) throw new BadInputError(`${what} ${printable(raw)} is an absolute path`);
  const parts = s.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new BadInputError(`${what} ${printable(raw)} contains ".." (escapes the layer root)`);
  return parts.join('/');
}

async function openInput(input: string | NodeJS.ReadableStream): Promise<{ stream: NodeJS.ReadableStream; size?: number }> {
  if (typeof input !== 'string') return { stream: input };
  let st;
  try { st = await stat(input); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`input ${input} does not exist`);
    throw new ThinfsError(`cannot read ${input}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new BadInputError(`input ${input} is not a regular file`);
  const stream = createReadStream(input, { highWaterMark: 1 << 20 });
  await new Promise<void>((res, rej) => { stream.once('open', () => res()); stream.once('error', (e) => rej(new ThinfsError(`cannot read ${input}: ${e.message}`))); });
  return { stream, size: st.size };
}

/**
 * Stream a layer tar (plain, gzip or zstd) into the store in one pass: tar -> chunker -> verified,
 * compressed objects staged in a transaction + one SQLite catalog; then publish the layer manifest
 * atomically. Memory is bounded by MAX_INFLIGHT x max chunk, whatever the layer size.
 */
export async function ingestTar(input: string | NodeJS.ReadableStream, store: WritableStore, opts: IngestOptions = {}): Promise<IngestResult> {
  const t0 = process.hrtime.bigint();
  const { stream: rawStream, size } = await openInput(input);
  const chunking = opts.chunking ?? DEFAULT_CHUNKING;
  const progress = opts.progress ? new Progress(`ingest ${opts.source ?? (typeof input === 'string' ? input : 'layer')}`, size ?? opts.totalBytes) : null;
  const blobHash = createHash('sha256');
  const diffHash = createHash('sha256');
  let blobBytes = 0, tarBytes = 0;

  // Peek the first bytes to pick a decompressor, then replay them.
  const it = (rawStream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let headLen = 0;
  while (headLen < 6) {
    const r = await it.next();
    if (r.done) break;
    head.push(r.value); headLen += r.value.length;
  }
  if (headLen === 0) throw new BadInputError('input is empty (not a tar)');
  const compression = sniff(Buffer.concat([...head, Buffer.alloc(6)]));
  // An uncompressed input is its own tar: one hash serves as both blob digest and diff id.
  const plain = compression === 'none';
  async function* counted(): AsyncGenerator<Buffer> {
    for (const b of head) { if (!plain) blobHash.update(b); blobBytes += b.length; progress?.tick(b.length); yield b; }
    for (let r = await it.next(); !r.done; r = await it.next()) {
      const b = r.value as Buffer;
      if (!plain) blobHash.update(b);
      blobBytes += b.length; progress?.tick(b.length);
      yield b;
    }
  }
  const src = Readable.from(counted(), { objectMode: false });
  let decoded: NodeJS.ReadableStream = src;
  if (compression !== 'none') {
    const d = compression === 'gzip' ? createGunzip({ chunkSize: 1 << 18 }) : new zstd.DecompressStream();
    src.on('error', (e) => (d as unknown as Readable).destroy(e));
    // Until the tar loop iterates it, an error would have no listener and kill the process; the
    // stream keeps it (readable.errored) and the iterator rethrows it as a refusal.
    (d as unknown as Readable).on('error', () => undefined);
    decoded = src.pipe(d as unknown as NodeJS.WritableStream) as unknown as NodeJS.ReadableStream;
  }
  async function* hashed(): AsyncGenerator<Buffer> {
    try {
      for await (const b of decoded as AsyncIterable<Buffer>) { diffHash.update(b); tarBytes += b.length; yield b; }
    } catch (e) {
      if (e instanceof ThinfsError) throw e;
      throw new BadInputError(`corrupt or truncated ${compression} stream: ${(e as Error).message}`);
    }
  }

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

    for await (const { entry: e, data } of readTar(hashed())) {
      stats.entries++;
      if (namePrefix === null) namePrefix = e.path.toString('latin1').startsWith('./') ? './' : '';
      let path = normalize(e.path, 'member');
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
      replace(path, parent, name);

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
      for (const [k, v] of e.xattrs) cat.addXattr(ino, k, v);
      if (kind !== DirentKind.OpaqueMarker) nodes.set(path, { ino, type, kind, parent, name });
      if (isFile) {
        stats.files++;
        stats.bytes += e.size;
        if (!inline) await chunkFile(ino, e, data);
      }
    }
    if (opts.log) opts.log.debug({ entries: stats.entries }, 'tar read');

    function replace(path: string, parent: number, name: Buffer): void {
      const old = nodes.get(path);
      if (!old) return;
      if (old.type === 'dir' && old.kind === DirentKind.Normal) throw new BadInputError(`member ${JSON.stringify(path)} replaces a directory with a non-directory`);
      cat.unlink(parent, name, old.ino);
      nodes.delete(path);
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

    const diffId = `sha256:${diffHash.digest('hex')}`;
    const blobDigest = plain ? diffId : `sha256:${blobHash.digest('hex')}`;
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
    progress?.finish();
    opts.log?.info({ diffId, published: res.published, ...stats }, res.published ? 'layer published' : 'layer was already published');
    return { manifest: res.manifest, published: res.published, stats, blobDigest };
  } catch (e) {
    progress?.finish();
    await Promise.allSettled(inflight);
    try { cat.abort(); } catch { /* already closed */ }
    await txn.abort();
    (rawStream as Readable).destroy?.();
    throw e;
  } finally {
    await pool.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

function meta(e: TarEntry) {
  return { mode: e.mode, uid: e.uid, gid: e.gid, uname: e.uname || null, gname: e.gname || null, mtime: e.mtime, mtimeNs: e.mtimeNs, size: 0 };
}
