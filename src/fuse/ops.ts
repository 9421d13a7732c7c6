import Fuse, { type FuseOps, type FuseStat, type FuseStatfs } from 'fuse-native';
import type { Inode, ChunkRef } from '../catalog/reader.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { Logger } from '../util/log.js';
import { ROOT_INO, TYPE_BITS } from '../catalog/schema.js';
import { Namespace, type Node, type Layer } from './namespace.js';
import { encodeImageDirName } from './names.js';

const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const XATTR_HIDDEN_IN_IMAGES = 'trusted.overlay.';
const SEQ_WINDOW = 8 << 20;

export interface OpCounters {
  lookups: number; getattrs: number; readdirs: number; reads: number; readBytes: number;
  /** Reads answered with EIO because a chunk was missing or corrupt. */
  eio: number;
  /** Slowest read seen, ms (includes fetches). */
  maxReadMs: number;
}

/**
 * libfuse2's high-level API hands us paths; the kernel gets our st_ino only with `use_ino`, and
 * fuse-native carries 32 bits of it. Numbers are therefore handed out densely, once per
 * (layer slot, catalog inode) — hardlinks share a catalog inode, so they share st_ino — and
 * stay stable for the life of the mount. Merged image directories get their own numbers.
 */
class InoTable {
  private readonly map = new Map<number | string, number>();
  private next = 2;
  forEntry(slot: number, ino: number): number { return this.get(slot * 2 ** 32 + ino); }
  get(key: number | string): number {
    let v = this.map.get(key);
    if (v === undefined) { v = this.next++ >>> 0; this.map.set(key, v); }
    return v;
  }
}

/** Linux dev_t as glibc's makedev builds it, limited to the 32 bits fuse-native carries. */
function makedev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xfff00) << 12)) >>> 0;
}

/** Per-file read state, kept with the (immutable, path-cached) node: chunk map and how far a sequential reader got. */
interface ReadState { chunks: ChunkRef[] | null; nextPos: number }

export interface ThinFsOptions { statsFile: string | null; mountedAt: number; /** chunks loaded ahead from the cache dir for sequential readers */ localReadahead: number }

export class ThinFs {
  readonly counters: OpCounters = { lookups: 0, getattrs: 0, readdirs: 0, reads: 0, readBytes: 0, eio: 0, maxReadMs: 0 };
  private readonly inos = new InoTable();
  private readonly readState = new WeakMap<Node, ReadState>();
  private readonly synthMs: number;

  constructor(readonly ns: Namespace, private readonly cache: ChunkCache, private readonly log: Logger, private readonly opts: ThinFsOptions) {
    this.synthMs = opts.mountedAt;
  }

  private inoOf(n: Node): number {
    switch (n.k) {
      case 'synth': return n.what === 'root' ? ROOT_INO : this.inos.get(`synth:${n.what}`);
      case 'statsLink': return this.inos.get('synth:stats');
      case 'imageDir': return this.inos.get(`imagedir:${encodeImageDirName(n.image.name)}`);
      case 'entry': return this.inos.forEntry(n.layer.slot, n.inode.ino);
      case 'merged': return n.path.endsWith('/rootfs') && n.path.split('/').length === 4
        ? this.inos.get(`rootfs:${n.image.idx}`) : this.inos.get(`merged:${n.image.idx}:${n.path}`);
    }
  }

  /** A layer directory listed before its catalog is loaded still gets the number its root will have. */
  private layerRootIno(hex: string): number {
    const l = this.ns.knownLayer(hex);
    return l ? this.inos.forEntry(l.slot, ROOT_INO) : this.inos.get(`layerdir:${hex}`);
  }

  private synthDir(ino: number): FuseStat {
    const t = this.synthMs;
    return { mode: S_IFDIR | 0o755, uid: 0, gid: 0, size: 4096, nlink: 2, ino, rdev: 0, blksize: 4096, blocks: 8, atime: t, mtime: t, ctime: t };
  }

  private inodeStat(i: Inode, ino: number, layer: Layer | null): FuseStat {
    // fuse-native carries milliseconds: the nanosecond remainder is lost (see native-notes/fuse-native.md).
    const ms = Math.max(0, i.mtime * 1000 + Math.floor(i.mtimeNs / 1e6));
    let size = i.size;
    let nlink = i.nlink;
    if (i.type === 'symlink') size = i.target?.length ?? size;
    if (i.type === 'dir') {
      if (!size) size = 4096;
      // 2 + subdirectories, as on a disk filesystem (find's leaf optimisation relies on it).
      nlink = layer ? 2 + layer.catalog!.readdir(i.ino).filter((d) => d.type === 'dir').length : 1;
    }
    return {
      mode: i.mode, uid: i.uid, gid: i.gid, size, nlink, ino, rdev: makedev(i.rdevMajor, i.rdevMinor),
      blksize: 4096, blocks: Math.ceil(size / 512), atime: ms, mtime: ms, ctime: ms,
    };
  }

  /** Nodes are immutable and cached by path, so their stat is computed once. */
  statOf(n: Node): FuseStat {
    const c = (n as { st?: FuseStat }).st;
    if (c) return c;
    const st = this.computeStat(n);
    (n as { st?: FuseStat }).st = st;
    return st;
  }

  private computeStat(n: Node): FuseStat {
    const ino = this.inoOf(n);
    switch (n.k) {
      case 'synth': case 'imageDir': return this.synthDir(ino);
      case 'statsLink': {
        const size = Buffer.byteLength(this.opts.statsFile ?? '');
        const t = this.synthMs;
        return { mode: S_IFLNK | 0o777, uid: 0, gid: 0, size, nlink: 1, ino, rdev: 0, atime: t, mtime: t, ctime: t };
      }
      case 'entry': return this.inodeStat(n.inode, ino, n.layer);
      case 'merged': {
        const top = n.members[0]!;
        const st = this.inodeStat(top.inode, ino, null);
        return st;
      }
    }
  }

  /** Runs an async op and maps failures to errnos (EIO for anything unexpected, logged). */
  private guard<T>(op: string, path: string, fn: () => Promise<T> | T, reply: (code: number, v?: T) => void): void {
    let r: Promise<T> | T;
    try { r = fn(); } catch (e) { this.fail(op, path, e, reply); return; }
    if (r instanceof Promise) r.then((v) => reply(0, v), (e) => this.fail(op, path, e, reply));
    else reply(0, r);
  }

  private fail(op: string, path: string, e: unknown, reply: (code: number) => void): void {
    const errno = (e as { fuseErrno?: number }).fuseErrno;
    if (typeof errno === 'number') { reply(errno); return; }
    this.log.error({ op, path, err: (e as Error).message, object: (e as { object?: string }).object }, 'operation failed: EIO');
    reply(Fuse.EIO);
  }

  private async need(path: string): Promise<Node> {
    this.counters.lookups++;
    const n = await this.ns.resolve(path);
    if (!n) throw Object.assign(new Error('ENOENT'), { fuseErrno: Fuse.ENOENT });
    return n;
  }

  private dirent(mode: number, ino: number, t: number): FuseStat {
    return { mode, ino, uid: 0, gid: 0, size: 0, nlink: 1, rdev: 0, atime: t, mtime: t, ctime: t };
  }

  private readonly erofs = (...args: unknown[]): void => { (args[args.length - 1] as (c: number) => void)(Fuse.EROFS); };

  ops(): FuseOps {
    const self = this;
    return {
      init(cb) { cb(0); },
      getattr(path, cb) {
        self.counters.getattrs++;
        const hit = self.ns.cached(path);
        if (hit) {
          let st: FuseStat;
          try { st = self.statOf(hit); } catch (e) { self.fail('getattr', path, e, cb); return; }
          cb(0, st);
          return;
        }
        self.guard('getattr', path, async () => self.statOf(await self.need(path)), cb);
      },
      fgetattr(path, _fd, cb) { this.getattr!(path, cb); },
      access(path, mode, cb) {
        // W_OK on a read-only filesystem; everything else is decided by default_permissions in the kernel.
        if (mode & 2) { cb(Fuse.EROFS); return; }
        self.guard('access', path, async () => { await self.need(path); }, (c) => cb(c));
      },
      readdir(path, cb) {
        self.counters.readdirs++;
        self.guard('readdir', path, async () => {
          const n = await self.need(path);
          const ents = await self.readdirEntries(n);
          const t = self.synthMs;
          const names = ['.', '..'];
          const stats: FuseStat[] = [self.dirent(S_IFDIR, 0, t), self.dirent(S_IFDIR, 0, t)];
          for (const e of ents) { names.push(e.name); stats.push(self.dirent(e.mode, e.ino, t)); }
          return { names, stats };
        }, (c, v) => (c ? cb(c) : cb(0, v!.names, v!.stats)));
      },
      readlink(path, cb) {
        self.guard('readlink', path, async () => {
          const n = await self.need(path);
          if (n.k === 'statsLink') return self.opts.statsFile ?? '';
          if (n.k !== 'entry' || n.inode.type !== 'symlink') throw Object.assign(new Error('EINVAL'), { fuseErrno: Fuse.EINVAL });
          return (n.inode.target ?? Buffer.alloc(0)).toString('utf8');
        }, (c, v) => (c ? cb(c) : cb(0, v)));
      },
      // No open/release handlers: each would cost a round trip to this thread per file. The mount is `ro`, so
      // the kernel refuses write opens itself, libfuse still sets keep_cache (kernel_cache), and reads come with
      // their path, whose node is already cached from the lookup.
      read(path, _fd, buf, len, pos, cb) { self.read(path, buf, len, pos).then(cb, (e) => self.fail('read', path, e, cb)); },
      getxattr(path, name, _pos, cb) {
        self.guard('getxattr', path, async () => (await self.xattrs(path)).get(name) ?? null, (c, v) => (c ? cb(c) : cb(0, v)));
      },
      listxattr(path, cb) {
        self.guard('listxattr', path, async () => [...(await self.xattrs(path)).keys()], (c, v) => (c ? cb(c) : cb(0, v)));
      },
      statfs(_path, cb) { cb(0, self.statfs()); },
      // Read-only filesystem: every modification fails with EROFS (the mount is also `ro`).
      write: (_p, _fd, _b, _l, _pos, cb) => cb(Fuse.EROFS),
      create: this.erofs, truncate: this.erofs, ftruncate: this.erofs, utimens: this.erofs, chown: this.erofs,
      chmod: this.erofs, mknod: this.erofs, setxattr: this.erofs, removexattr: this.erofs, unlink: this.erofs,
      rename: this.erofs, link: this.erofs, symlink: this.erofs, mkdir: this.erofs, rmdir: this.erofs,
    };
  }

  /**
   * Names with their types and inode numbers: libfuse turns the mode into d_type, which overlayfs
   * needs to spot whiteouts (DT_CHR) in a lower layer without a lookup per name.
   */
  private async readdirEntries(n: Node): Promise<Array<{ name: string; mode: number; ino: number }>> {
    const dir = (name: string, key: string) => ({ name, mode: S_IFDIR, ino: this.inos.get(key) });
    switch (n.k) {
      case 'synth':
        if (n.what === 'root') return [dir('layers', 'synth:layers'), dir('images', 'synth:images'), dir('.thinfs', 'synth:meta')];
        if (n.what === 'layers') return (await this.ns.listLayerDirs()).map((h) => ({ name: h, mode: S_IFDIR, ino: this.layerRootIno(h) }));
        if (n.what === 'images') return (await this.ns.listImageDirs()).map((h) => ({ name: h, mode: S_IFDIR, ino: this.inos.get(`imagedir:${h}`) }));
        return [{ name: 'stats', mode: S_IFLNK, ino: this.inos.get('synth:stats') }];
      case 'imageDir': return [{ name: 'rootfs', mode: S_IFDIR, ino: this.inos.get(`rootfs:${n.image.idx}`) }];
      case 'entry': {
        if (n.inode.type !== 'dir') throw Object.assign(new Error('ENOTDIR'), { fuseErrno: Fuse.ENOTDIR });
        const slot = n.layer.slot;
        return n.layer.catalog!.readdir(n.inode.ino).map((d) => ({ name: d.name.toString('utf8'), mode: TYPE_BITS[d.type], ino: this.inos.forEntry(slot, d.ino) }));
      }
      case 'merged':
        return this.ns.mergedReaddir(n).map((e) => ({
          name: e.name.toString('utf8'), mode: TYPE_BITS[e.type],
          ino: e.type === 'dir' ? this.inos.get(`merged:${n.image.idx}:${n.path}/${e.name.toString('utf8')}`) : this.inos.forEntry(e.layer.slot, e.ino),
        }));
      default: throw Object.assign(new Error('ENOTDIR'), { fuseErrno: Fuse.ENOTDIR });
    }
  }

  private async xattrs(path: string): Promise<Map<string, Buffer>> {
    const n = await this.need(path);
    let m: Map<string, Buffer>;
    if (n.k === 'entry') m = n.layer.catalog!.xattrs(n.inode.ino, n.inode.flags);
    else if (n.k === 'merged') m = n.members[0]!.layer.catalog!.xattrs(n.members[0]!.inode.ino, n.members[0]!.inode.flags);
    else return new Map();
    // overlayfs hides its own trusted.overlay.* attributes in a merged view; so do we in images/.
    if ((n.k === 'entry' && n.inImage) || n.k === 'merged') {
      for (const k of [...m.keys()]) if (k.startsWith(XATTR_HIDDEN_IN_IMAGES)) m.delete(k);
    }
    return m;
  }

  private statfs(): FuseStatfs {
    let bytes = 0;
    let files = 0;
    for (const l of this.ns.knownLayers()) { bytes += l.manifest.sizes?.files ?? 0; files += l.manifest.counts?.entries ?? 0; }
    const bsize = 4096;
    const blocks = Math.min(0xffffffff, Math.ceil(bytes / bsize));
    return { bsize, frsize: bsize, blocks, bfree: 0, bavail: 0, files: Math.min(0xffffffff, files), ffree: 0, favail: 0, fsid: 0x7468696e, flag: 1, namemax: 255 };
  }

  /** Serve a read by slicing verified chunks; the chunks a read spans are fetched concurrently; holes read as zeros. */
  async read(path: string, buf: Buffer, len: number, pos: number): Promise<number> {
    const t0 = performance.now();
    this.counters.reads++;
    const node = this.ns.cached(path) ?? (await this.need(path));
    if (node.k !== 'entry') return Fuse.EISDIR;
    let h = this.readState.get(node);
    if (!h) { h = { chunks: null, nextPos: 0 }; this.readState.set(node, h); }
    const i = node.inode;
    if (pos >= i.size) return 0;
    const end = Math.min(i.size, pos + len);
    const n = end - pos;
    if (i.inline) {
      i.inline.copy(buf, 0, pos, end);
      if (end > i.inline.length) buf.fill(0, Math.max(0, i.inline.length - pos), n);
      this.counters.readBytes += n;
      return n;
    }
    const chunks = h.chunks ??= node.layer.catalog!.chunks(i.ino);
    // First chunk ending after pos (chunks are sorted by offset and do not overlap).
    let lo = 0, hi = chunks.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; const c = chunks[mid]!; if (c.offset + c.size <= pos) lo = mid + 1; else hi = mid; }
    const span: ChunkRef[] = [];
    let k = lo;
    for (; k < chunks.length && chunks[k]!.offset < end; k++) span.push(chunks[k]!);
    // A sequential reader waits on one chunk at a time (the kernel keeps only ~1.5 MiB of readahead in flight):
    // load the next few from the local cache directory meanwhile, so disk latency overlaps. Never from the store.
    // Readahead requests arrive out of order (several libfuse threads), so "sequential" means near the furthest end seen.
    if (this.opts.localReadahead > 0 && pos >= h.nextPos - SEQ_WINDOW && pos <= h.nextPos + SEQ_WINDOW) {
      for (let j = k; j < Math.min(chunks.length, k + this.opts.localReadahead); j++) this.cache.warm(chunks[j]!.hash, chunks[j]!.size);
    }
    if (end > h.nextPos) h.nextPos = end;
    let datas: Buffer[];
    try {
      datas = await Promise.all(span.map((c) => this.cache.get(c.hash, c.size)));
    } catch (e) {
      this.counters.eio++;
      this.log.error({ path, layer: node.layer.hex, object: (e as { object?: string }).object, err: (e as Error).message }, 'read failed: object missing or corrupt, returning EIO');
      return Fuse.EIO;
    }
    let filled = pos;
    for (let k = 0; k < span.length; k++) {
      const c = span[k]!, d = datas[k]!;
      if (d.length !== c.size) {
        this.counters.eio++;
        this.log.error({ path, object: c.hash, want: c.size, got: d.length }, 'chunk size does not match the catalog: EIO');
        return Fuse.EIO;
      }
      if (c.offset > filled) buf.fill(0, filled - pos, c.offset - pos);
      const from = Math.max(pos, c.offset), to = Math.min(end, c.offset + c.size);
      d.copy(buf, from - pos, from - c.offset, to - c.offset);
      filled = to;
    }
    if (filled < end) buf.fill(0, filled - pos, n);
    this.counters.readBytes += n;
    const ms = performance.now() - t0;
    if (ms > this.counters.maxReadMs) this.counters.maxReadMs = ms;
    return n;
  }

  /** Fetch every chunk of the named files now (a prefetch list), without blocking readers. */
  async prefetch(paths: string[]): Promise<{ files: number; chunks: number; missing: string[] }> {
    let files = 0, chunks = 0;
    const missing: string[] = [];
    for (const p of paths) {
      const n = await this.ns.resolve(p.startsWith('/') ? p : `/${p}`).catch(() => null);
      if (!n || n.k !== 'entry' || n.inode.type !== 'file') { missing.push(p); continue; }
      files++;
      const cs = n.layer.catalog!.chunks(n.inode.ino);
      chunks += cs.length;
      await Promise.allSettled(cs.map((c) => this.cache.get(c.hash, c.size)));
    }
    return { files, chunks, missing };
  }
}

/**
 * fuse-native with the options it cannot express (use_ino, ro, negative_timeout, suid/dev) and
 * correct xattr size probes: its own getxattr copies into a too-small buffer instead of ERANGE,
 * and its listxattr pads the probe answer.
 */
export class ThinFuse extends Fuse {
  constructor(mnt: string, ops: FuseOps, opts: ConstructorParameters<typeof Fuse>[2], private readonly extra: string[]) {
    super(mnt, ops, opts);
  }

  protected override _fuseOptions(): string {
    const base = super._fuseOptions();
    return (base ? base + ',' : '-o') + this.extra.join(',');
  }
}

type Signal = (code: number, ...rest: unknown[]) => void;
const proto = ThinFuse.prototype as unknown as Record<string, unknown>;
proto._op_getxattr = function (this: { ops: FuseOps }, signal: Signal, path: string, name: string, valueBuf: Buffer) {
  this.ops.getxattr!(path, name, 0, (err, value) => {
    if (err) return signal(err, valueBuf.buffer);
    if (!value) return signal(Fuse.ENODATA, valueBuf.buffer);
    if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
    if (valueBuf.length < value.length) return signal(Fuse.ERANGE, valueBuf.buffer);
    value.copy(valueBuf);
    return signal(value.length, valueBuf.buffer);
  });
};
proto._op_listxattr = function (this: { ops: FuseOps }, signal: Signal, path: string, listBuf: Buffer) {
  this.ops.listxattr!(path, (err, list) => {
    if (err) return signal(err, listBuf.buffer);
    const packed = Buffer.concat((list ?? []).map((n) => Buffer.from(n + '\0', 'utf8')));
    if (listBuf.length === 0) return signal(packed.length, listBuf.buffer);
    if (listBuf.length < packed.length) return signal(Fuse.ERANGE, listBuf.buffer);
    packed.copy(listBuf);
    return signal(packed.length, listBuf.buffer);
  });
};
