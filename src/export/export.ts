// Export: a published layer back to a tar stream, byte for byte what was ingested (verified reads). Small files come
// through their packs (one request for a directory's small files, over HTTP), each member verified by its own hash.
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { encodeEntry, padding, sparseArchived, END_OF_ARCHIVE, type OutEntry } from '../tar/writer.js';
import type { CatalogReader, Inode } from '../catalog/reader.js';
import { DirentKind, FLAG_IMPLICIT } from '../catalog/schema.js';
import type { Store } from '../store/store.js';
import { decodePackMembers, type PackRef } from '../store/pack.js';
import type { SparseSegment, TarType } from '../tar/reader.js';

/**
 * The members of the last few packs a walk needed: an export walks in tar order, in which packs were made, so a
 * directory's small files are one pack request. A pack that cannot give a member leaves it to its own object.
 */
class PackMemo {
  private readonly packs = new Map<string, Promise<Map<string, Buffer>>>();
  constructor(private readonly store: Store, private readonly keep = 8) {}

  async get(hash: string, size: number, ref: PackRef | undefined): Promise<Buffer> {
    if (ref) {
      let p = this.packs.get(ref.name);
      if (!p) {
        p = this.store.fetchPack(ref).then((got) => new Map((got ? decodePackMembers(ref.name, got.entries) : [])
          .flatMap((m) => ('data' in m ? [[m.hash, m.data] as const] : []))), () => new Map<string, Buffer>());
        this.packs.set(ref.name, p);
        if (this.packs.size > this.keep) this.packs.delete(this.packs.keys().next().value!);
      }
      const data = (await p).get(hash);
      if (data && data.length === size) return data;
    }
    return this.store.getObject(hash, size);
  }
}

/**
 * Read a file's bytes from the store, chunk by chunk (verified), with sparse holes as zeros. Through packs only in an
 * export (`packs`): one file alone is cheaper as its own object than as its directory's pack.
 */
export async function* fileContent(store: Store, catalog: CatalogReader, inode: Inode, packs: PackMemo | null = null): AsyncGenerator<Buffer> {
  if (inode.inline) { yield inode.inline; return; }
  let pos = 0;
  const chunks = catalog.chunks(inode.ino);
  // Fetch one chunk ahead so store latency overlaps with writing. Its failure is seen at its await; until then
  // (the consumer writing the previous chunk, or gone) it must not count as an unhandled rejection.
  const ahead = (k: number): Promise<Buffer> | null => {
    if (k >= chunks.length) return null;
    const p = packs ? packs.get(chunks[k]!.hash, chunks[k]!.size, chunks[k]!.pack) : store.getObject(chunks[k]!.hash, chunks[k]!.size);
    p.catch(() => {});
    return p;
  };
  let next = ahead(0);
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i]!;
    const data = await next!;
    next = ahead(i + 1);
    for (; pos < c.offset;) { const n = Math.min(1 << 20, c.offset - pos); yield Buffer.alloc(n); pos += n; }
    yield data;
    pos += data.length;
  }
  for (; pos < inode.size;) { const n = Math.min(1 << 20, inode.size - pos); yield Buffer.alloc(n); pos += n; }
}

/**
 * The data segments of a file with holes (its chunks do not cover it end to end: a sparse file of the tar), adjacent
 * chunks joined, and a last empty segment at its end when it ends in a hole (as GNU tar writes the map); null when the
 * file has no hole.
 */
function holesOf(size: number, chunks: ReadonlyArray<{ offset: number; size: number }>): SparseSegment[] | null {
  const segs: SparseSegment[] = [];
  for (const c of chunks) {
    const last = segs[segs.length - 1];
    if (last && last.offset + last.size === c.offset) last.size += c.size;
    else segs.push({ offset: c.offset, size: c.size });
  }
  const end = segs.length ? segs[segs.length - 1]!.offset + segs[segs.length - 1]!.size : 0;
  if (size === 0 || (segs.length === 1 && segs[0]!.offset === 0 && end === size)) return null;
  if (end < size) segs.push({ offset: size, size: 0 });
  return segs;
}

async function write(out: Writable, b: Buffer): Promise<void> {
  if (!out.write(b)) await once(out, 'drain');
}

/**
 * Write a layer back out as an OCI layer tar: the original order, names, metadata and xattrs, with
 * overlay-form whiteouts turned back into `.wh.` files. The round trip is what the oracle tests check.
 */
export async function exportLayer(store: Store, catalog: CatalogReader, out: Writable): Promise<{ entries: number; bytes: number }> {
  const props = catalog.props();
  const prefix = Buffer.from(props.name_prefix ?? '', 'latin1');
  const firstPath = new Map<number, Buffer>();
  let entries = 0, bytes = 0;
  const packs = new PackMemo(store);
  const root = catalog.root();
  if (props.root_explicit === '1' || !(root.flags & FLAG_IMPLICIT)) {
    await write(out, encodeEntry(toOut(Buffer.from('./'), 'dir', root, catalog.storedXattrs(root.ino))));
    entries++;
  }
  for (const w of catalog.walk()) {
    const inode = w.inode;
    if (inode.type === 'dir' && inode.flags & FLAG_IMPLICIT) continue;
    let path = w.path;
    let type: TarType = inode.type;
    if (w.kind === DirentKind.Whiteout) {
      const slash = path.lastIndexOf(0x2f);
      path = Buffer.concat([path.subarray(0, slash + 1), Buffer.from('.wh.'), path.subarray(slash + 1)]);
      type = 'file';
    } else if (w.kind === DirentKind.OpaqueMarker) {
      type = 'file';
    }
    const full = Buffer.concat([prefix, path]);
    // Any non-directory inode with several names (symlinks too: `ln -P`) is written once, then as hardlinks to it.
    const linkable = inode.nlink > 1 && w.kind === DirentKind.Normal && type !== 'dir';
    const seen = linkable ? firstPath.get(inode.ino) : undefined;
    if (seen) {
      await write(out, encodeEntry({ ...toOut(full, 'hardlink', inode, new Map()), linkpath: seen, size: 0 }));
      entries++;
      continue;
    }
    if (linkable) firstPath.set(inode.ino, full);
    const isData = type === 'file' && w.kind === DirentKind.Normal;
    const e = toOut(full, type, { ...inode, size: isData ? inode.size : 0 }, catalog.storedXattrs(inode.ino));
    const sparse = isData && !inode.inline ? holesOf(inode.size, catalog.chunks(inode.ino)) : null;
    await write(out, encodeEntry({ ...e, sparse }));
    entries++;
    if (sparse) {
      // Only the data segments' bytes (the map went with the header): a file with holes costs what the layer holds.
      for (const c of catalog.chunks(inode.ino)) { const b = await packs.get(c.hash, c.size, c.pack); await write(out, b); bytes += b.length; }
      const pad = padding(sparseArchived(sparse));
      if (pad) await write(out, Buffer.alloc(pad));
    } else if (isData && inode.size > 0) {
      for await (const b of fileContent(store, catalog, inode, packs)) { await write(out, b); bytes += b.length; }
      const pad = padding(inode.size);
      if (pad) await write(out, Buffer.alloc(pad));
    }
  }
  await write(out, END_OF_ARCHIVE);
  return { entries, bytes };
}

function toOut(path: Buffer, type: TarType, i: Inode, xattrs: Map<string, Buffer>): OutEntry {
  return {
    path, type, mode: i.mode & 0o7777, uid: i.uid, gid: i.gid, uname: i.uname ?? '', gname: i.gname ?? '',
    size: i.size, mtime: i.mtime, mtimeNs: i.mtimeNs, linkpath: type === 'symlink' ? i.target : null,
    devmajor: type === 'chardev' || type === 'blockdev' ? i.rdevMajor : 0, devminor: type === 'chardev' || type === 'blockdev' ? i.rdevMinor : 0,
    xattrs,
  };
}
