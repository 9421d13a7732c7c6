// Catalog building: owns writing one layer's SQLite catalog (inodes, dirents, chunks, xattrs,
// props) in a private temp file, then sealing it (indexes, pre-encoded listings, VACUUM) for storing.
import Database from 'better-sqlite3';
import { buildDirBlocks } from './dirblocks.js';
import { CATALOG_VERSION, FLAG_OPAQUE, INDEXES, PACK_SCHEMA, ROOT_INO, SCHEMA, TYPE_BITS, type EntryType, DirentKind } from './schema.js';

export interface InodeRow {
  type: EntryType; mode: number; uid: number; gid: number; uname?: string | null; gname?: string | null;
  size: number; mtime: number; mtimeNs: number; rdevMajor?: number; rdevMinor?: number;
  target?: Buffer | null; inline?: Buffer | null; flags?: number;
}

/** Bulk-builds one layer's catalog in a private temp file; durability comes from storing it as an object. */
export class CatalogWriter {
  private readonly db: Database.Database;
  private nextIno = ROOT_INO;
  private readonly st;
  /** Pre-encode listings into the catalog (older catalogs did; kept for measuring and for tests of those catalogs). */
  dirBlocks = process.env.THINFS_CATALOG_DIRBLOCKS === '1';
  /** `packs`: the catalog can name packs (false: the format before packs, for tests and benches of older catalogs). */
  constructor(readonly path: string, opts: { packs?: boolean } = {}) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = OFF');
    this.db.pragma('synchronous = OFF');
    this.db.pragma('page_size = 4096');
    this.db.exec(SCHEMA);
    if (opts.packs ?? true) this.db.exec(PACK_SCHEMA);
    this.st = {
      inode: this.db.prepare(`INSERT INTO inodes (ino,type,mode,uid,gid,uname,gname,size,mtime,mtime_ns,rdev_major,rdev_minor,target,inline,nlink,flags)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?)`),
      // An opaque directory stays opaque: its marker (or the whiteout of its name) may come before its own entry.
      update: this.db.prepare(`UPDATE inodes SET mode=?,uid=?,gid=?,uname=?,gname=?,mtime=?,mtime_ns=?,flags=(flags & ${FLAG_OPAQUE}) | ? WHERE ino=?`),
      setFlags: this.db.prepare(`UPDATE inodes SET flags = flags | ? WHERE ino=?`),
      dirent: this.db.prepare(`INSERT INTO dirents (parent,name,ino,kind) VALUES (?,?,?,?)`),
      unlink: this.db.prepare(`DELETE FROM dirents WHERE parent=? AND name=?`),
      nlink: this.db.prepare(`UPDATE inodes SET nlink = nlink + ? WHERE ino=?`),
      dropInode: this.db.prepare(`DELETE FROM inodes WHERE ino=? AND nlink <= 0`),
      dropChunks: this.db.prepare(`DELETE FROM chunks WHERE ino=? AND NOT EXISTS (SELECT 1 FROM inodes WHERE ino=?)`),
      chunk: this.db.prepare(`INSERT INTO chunks (ino,idx,offset,size,hash) VALUES (?,?,?,?,?)`),
      xattr: this.db.prepare(`INSERT OR REPLACE INTO xattrs (ino,name,value) VALUES (?,?,?)`),
      setSize: this.db.prepare(`UPDATE inodes SET size=? WHERE ino=?`),
      prop: this.db.prepare(`INSERT OR REPLACE INTO props (key,value) VALUES (?,?)`),
    };
    this.db.exec('BEGIN');
  }

  addInode(r: InodeRow): number {
    const ino = this.nextIno++;
    this.st.inode.run(ino, r.type, (r.mode & 0o7777) | TYPE_BITS[r.type], r.uid, r.gid, r.uname ?? null, r.gname ?? null,
      r.size, r.mtime, r.mtimeNs, r.rdevMajor ?? 0, r.rdevMinor ?? 0, r.target ?? null, r.inline ?? null, r.flags ?? 0);
    return ino;
  }

  /** A directory listed again (or an implicit one finally listed): its metadata is replaced, `flags` too but for FLAG_OPAQUE, which stays. */
  updateDir(ino: number, r: InodeRow, flags: number): void {
    this.st.update.run((r.mode & 0o7777) | TYPE_BITS.dir, r.uid, r.gid, r.uname ?? null, r.gname ?? null, r.mtime, r.mtimeNs, flags, ino);
  }

  setFlags(ino: number, flags: number): void { this.st.setFlags.run(flags, ino); }
  setSize(ino: number, size: number): void { this.st.setSize.run(size, ino); }

  link(parent: number, name: Buffer, ino: number, kind = DirentKind.Normal, isNewInode = true): void {
    this.st.dirent.run(parent, name, ino, kind);
    if (!isNewInode) this.st.nlink.run(1, ino);
  }

  /** Remove a name (a later tar entry replaces it); the inode goes when its last link does. */
  unlink(parent: number, name: Buffer, ino: number): void {
    this.st.unlink.run(parent, name);
    this.st.nlink.run(-1, ino);
    this.st.dropInode.run(ino);
    this.st.dropChunks.run(ino, ino);
  }

  addChunk(ino: number, idx: number, offset: number, size: number, hash: Buffer): void {
    this.st.chunk.run(ino, idx, offset, size, hash);
  }

  /** A pack (src/store/pack.ts) and the one-chunk files whose chunk it carries. */
  addPack(name: string, members: Array<{ hash: string; size: number }>, inos: number[]): void {
    const id = Number(this.db.prepare(`INSERT INTO packs (name,members,bytes) VALUES (?,?,?)`)
      .run(Buffer.from(name, 'hex'), members.length, members.reduce((a, m) => a + m.size, 0)).lastInsertRowid);
    const st = this.db.prepare(`UPDATE chunks SET pack=? WHERE ino=? AND idx=0`);
    for (const ino of inos) st.run(id, ino);
  }

  addXattr(ino: number, name: string, value: Buffer): void { this.st.xattr.run(ino, name, value); }

  finish(props: Record<string, string | number>): void {
    this.st.prop.run('version', String(CATALOG_VERSION));
    for (const [k, v] of Object.entries(props)) this.st.prop.run(k, String(v));
    this.db.exec('COMMIT');
    this.db.exec(INDEXES);
    // Listings are not shipped: a mount rebuilds them (CatalogReader listings), the same bytes, from these tables.
    if (this.dirBlocks) this.db.transaction(() => buildDirBlocks(this.db))();
    this.db.exec('ANALYZE');
    this.db.pragma('journal_mode = DELETE');
    this.db.exec('VACUUM');
    this.db.close();
  }

  abort(): void {
    try { if (this.db.inTransaction) this.db.exec('ROLLBACK'); } finally { this.db.close(); }
  }
}
