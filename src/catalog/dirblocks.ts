// The catalog's dirblocks table: every directory's listing (src/format/listing.ts), encoded once at ingest with each
// entry's attributes as the kernel sees them, so that a mount answers a listing with one indexed read and a native
// expansion into READDIRPLUS records (src/fuse/native/listing.c): no per-entry work on its JS thread, which is what a
// metadata scan of a freshly started daemon spent its time on.
import Database from 'better-sqlite3';
import { encodeListingRecord, inodeAttr, LISTING_RECORD_HEADER } from '../format/listing.js';
import { DirentKind, FLAG_OPAQUE } from './schema.js';
import type { Inode } from './reader.js';

/** One row per directory: its listing (src/format/listing.ts), opaque markers hidden. Empty directories have an empty block. */
const DIRBLOCKS_TABLE = `CREATE TABLE IF NOT EXISTS dirblocks (dir INTEGER PRIMARY KEY, ents BLOB NOT NULL)`;

const PAGE = 4096;
// Columns of the rows read, in this order (raw rows: arrays are cheaper than objects at a million entries).
const COLS = `d.parent, d.name, i.ino, i.type, i.mode, i.uid, i.gid, i.size, i.mtime, i.mtime_ns, i.rdev_major, i.rdev_minor,
  i.target, i.nlink, (i.flags & ${FLAG_OPAQUE}) = 0 AND NOT EXISTS (SELECT 1 FROM xattrs x WHERE x.ino = i.ino)`;
type Row = [number, Buffer, number, Inode['type'], number, number, number, number, number, number, number, number, Buffer | null, number, number];

/** Appends one entry's record to out at off (out has room); returns the new end. */
function encodeRecord(r: Row, subdirs: Map<number, number>, out: Buffer, off: number): number {
  const [, name, ino, type, mode, uid, gid, size, mtime, mtimeNs, rdevMajor, rdevMinor, target, nlink, noXattrs] = r;
  const a = inodeAttr({ type, size, nlink, target, mtime, mtimeNs, mode, uid, gid, rdevMajor, rdevMinor }, ino,
    type === 'dir' ? subdirs.get(ino) ?? 0 : null);
  return encodeListingRecord(a, name, out, off, noXattrs === 1);
}

/**
 * What a listings file was built from and how: a file whose stamp differs (another catalog's, an older layout) is not
 * served. Bump LISTINGS_FORMAT whenever the record format (src/format/listing.ts) or this file's tables change.
 */
// 2: records carry LISTING_NO_XATTRS.
export const LISTINGS_FORMAT = '2';
export interface ListingsStamp { catalog: string; format: string }

/**
 * Builds the listings of a catalog that does not ship them (they are rebuilt, not shipped: ~25% of a catalog) into a
 * new database file holding only the dirblocks table (the same bytes buildDirBlocks gives inside the catalog) and,
 * with `catalog` (the catalog's hash), a stamp binding the file to that catalog and to LISTINGS_FORMAT.
 * `out` may exist empty (a private file the caller created): SQLite takes a 0-byte file as an empty database.
 */
export function buildListingsFile(catalogPath: string, out: string, catalog?: string): number {
  const db = new Database(out);
  try {
    db.pragma('journal_mode = OFF');
    db.pragma('synchronous = OFF');
    // Unqualified dirents/inodes resolve to the attached catalog (this database has only dirblocks).
    db.prepare(`ATTACH DATABASE ? AS cat`).run(catalogPath);
    return db.transaction(() => {
      const n = buildDirBlocks(db);
      if (catalog !== undefined) {
        db.exec(`CREATE TABLE main.listings_stamp (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
        const put = db.prepare(`INSERT INTO main.listings_stamp (key, value) VALUES (?, ?)`);
        put.run('catalog', catalog);
        put.run('format', LISTINGS_FORMAT);
      }
      return n;
    })();
  } finally { db.close(); }
}

/** A listings file's stamp (see buildListingsFile), or null when it has none or is not a database at all. */
export function readListingsStamp(path: string): ListingsStamp | null {
  let db: Database.Database | null = null;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
    const rows = db.prepare(`SELECT key, value FROM listings_stamp`).all() as Array<{ key: string; value: string }>;
    const m = new Map(rows.map((r) => [r.key, r.value]));
    const catalog = m.get('catalog'), format = m.get('format');
    return catalog !== undefined && format !== undefined ? { catalog, format } : null;
  } catch {
    return null;
  } finally { db?.close(); }
}

/** Fill the dirblocks table from a finished catalog's dirents and inodes. Deterministic: same catalog, same bytes. */
export function buildDirBlocks(db: Database.Database): number {
  db.exec(DIRBLOCKS_TABLE.replace('IF NOT EXISTS dirblocks', 'IF NOT EXISTS main.dirblocks'));
  const subdirs = new Map<number, number>();
  for (const r of db.prepare(`SELECT d.parent AS parent, count(*) AS n FROM dirents d JOIN inodes i ON i.ino = d.ino
      WHERE d.kind != ${DirentKind.OpaqueMarker} AND i.type = 'dir' GROUP BY d.parent`).iterate() as IterableIterator<{ parent: number; n: number }>) {
    subdirs.set(r.parent, r.n);
  }
  const insert = db.prepare(`INSERT INTO main.dirblocks (dir, ents) VALUES (?, ?)`);
  // One pass over the (parent, name) index, in pages (a connection cannot write while it iterates): memory stays a
  // page of rows plus the directory being encoded.
  const visible = `d.kind != ${DirentKind.OpaqueMarker}`;
  const first = db.prepare(`SELECT ${COLS} FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE ${visible}
    ORDER BY d.parent, d.name LIMIT ${PAGE}`).raw();
  const next = db.prepare(`SELECT ${COLS} FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE ${visible} AND (d.parent, d.name) > (?, ?)
    ORDER BY d.parent, d.name LIMIT ${PAGE}`).raw();
  const done = new Set<number>();
  let dir = -1;
  let buf = Buffer.allocUnsafe(64 << 10);
  let len = 0;
  const flush = () => {
    if (dir >= 0) { insert.run(dir, buf.subarray(0, len)); done.add(dir); }
    len = 0;
  };
  let rows = first.all() as Row[];
  while (rows.length) {
    for (const r of rows) {
      if (r[0] !== dir) { flush(); dir = r[0]; }
      const need = len + LISTING_RECORD_HEADER + r[1].length;
      if (need > buf.length) { const b = Buffer.allocUnsafe(Math.max(need, buf.length * 2)); buf.copy(b, 0, 0, len); buf = b; }
      len = encodeRecord(r, subdirs, buf, len);
    }
    const last = rows[rows.length - 1]!;
    rows = rows.length < PAGE ? [] : next.all(last[0], last[1]) as Row[];
  }
  flush();
  // Empty directories get an empty block: every listing is one indexed read.
  const dirs = db.prepare(`SELECT ino FROM inodes WHERE type = 'dir'`).pluck().all() as number[];
  for (const d of dirs) if (!done.has(d)) insert.run(d, Buffer.alloc(0));
  return dirs.length;
}
