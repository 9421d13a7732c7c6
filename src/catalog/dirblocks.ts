// Every directory's listing, encoded once at ingest with each entry's attributes as the kernel sees them, so that a mount
// answers a listing with one indexed read and a native expansion into READDIRPLUS records (thinfuse.c dp_page): no
// per-entry work on its JS thread, which is what a metadata scan of a freshly started daemon spent its time on.
import type Database from 'better-sqlite3';
import { inodeAttr, writeU64 } from '../fuse/kernel.js';
import { DirentKind } from './schema.js';
import type { Inode } from './reader.js';

/**
 * One row per directory: its visible entries (opaque markers hidden) in byte order of name, each a packed little-endian
 * record, 50 bytes + the name:
 *   u64 ino | u64 size | i64 mtime s | u32 mtime ns | u32 mode | u32 uid | u32 gid | u32 nlink | u32 rdev | u16 namelen | name
 * ino is the catalog inode number (a mount adds its base for the layer); size, nlink and rdev are already what stat
 * shows (symlink target length, 2 + subdirectories, kernel device encoding). A record's readdir cookie is 2 + the byte
 * offset of the record after it ("." and ".." are cookies 0 and 1). Empty directories have an empty block.
 */
export const DIRBLOCKS_TABLE = `CREATE TABLE IF NOT EXISTS dirblocks (dir INTEGER PRIMARY KEY, ents BLOB NOT NULL)`;

export const DIRBLOCK_HEADER = 50;
/** Cookie of the first record of a block; a mount serves "." and ".." before it. */
export const DIRBLOCK_OFFSET_BASE = 2;

const PAGE = 4096;

function encodeRecord(r: Inode & { name: Buffer }, subdirs: Map<number, number>): Buffer {
  if (r.name.length > 0xffff) throw new Error(`name of ${r.name.length} bytes`);
  const a = inodeAttr(r, r.ino, r.type === 'dir' ? subdirs.get(r.ino) ?? 0 : null);
  const b = Buffer.allocUnsafe(DIRBLOCK_HEADER + r.name.length);
  writeU64(b, a.ino, 0);
  writeU64(b, a.size, 8);
  writeU64(b, Math.trunc(a.mtime), 16);
  b.writeUInt32LE(a.mtimeNs >>> 0, 24);
  b.writeUInt32LE(a.mode >>> 0, 28);
  b.writeUInt32LE(a.uid >>> 0, 32);
  b.writeUInt32LE(a.gid >>> 0, 36);
  b.writeUInt32LE(a.nlink >>> 0, 40);
  b.writeUInt32LE(a.rdev >>> 0, 44);
  b.writeUInt16LE(r.name.length, 48);
  r.name.copy(b, DIRBLOCK_HEADER);
  return b;
}

/** Fill the dirblocks table from a finished catalog's dirents and inodes. Deterministic: same catalog, same bytes. */
export function buildDirBlocks(db: Database.Database): number {
  db.exec(DIRBLOCKS_TABLE);
  const subdirs = new Map<number, number>();
  for (const r of db.prepare(`SELECT d.parent AS parent, count(*) AS n FROM dirents d JOIN inodes i ON i.ino = d.ino
      WHERE d.kind != ${DirentKind.OpaqueMarker} AND i.type = 'dir' GROUP BY d.parent`).iterate() as IterableIterator<{ parent: number; n: number }>) {
    subdirs.set(r.parent, r.n);
  }
  const insert = db.prepare(`INSERT INTO dirblocks (dir, ents) VALUES (?, ?)`);
  // One pass over the (parent, name) index, in pages (a connection cannot write while it iterates): memory stays a
  // page of rows plus the directory being encoded.
  const cols = `d.parent AS parent, d.name AS name, i.ino AS ino, i.type AS type, i.mode AS mode, i.uid AS uid, i.gid AS gid,
    i.size AS size, i.mtime AS mtime, i.mtime_ns AS mtimeNs, i.rdev_major AS rdevMajor, i.rdev_minor AS rdevMinor,
    i.target AS target, i.nlink AS nlink`;
  const visible = `d.kind != ${DirentKind.OpaqueMarker}`;
  const first = db.prepare(`SELECT ${cols} FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE ${visible}
    ORDER BY d.parent, d.name LIMIT ${PAGE}`);
  const next = db.prepare(`SELECT ${cols} FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE ${visible} AND (d.parent, d.name) > (?, ?)
    ORDER BY d.parent, d.name LIMIT ${PAGE}`);
  const done = new Set<number>();
  let dir = -1;
  let recs: Buffer[] = [];
  const flush = () => {
    if (dir < 0) return;
    insert.run(dir, Buffer.concat(recs));
    done.add(dir);
    recs = [];
  };
  let rows = first.all() as Array<Inode & { parent: number; name: Buffer }>;
  while (rows.length) {
    for (const r of rows) {
      if (r.parent !== dir) { flush(); dir = r.parent; }
      recs.push(encodeRecord(r, subdirs));
    }
    const last = rows[rows.length - 1]!;
    rows = rows.length < PAGE ? [] : next.all(last.parent, last.name) as typeof rows;
  }
  flush();
  // Empty directories get an empty block: every listing is one indexed read.
  const dirs = db.prepare(`SELECT ino FROM inodes WHERE type = 'dir'`).pluck().all() as number[];
  for (const d of dirs) if (!done.has(d)) insert.run(d, Buffer.alloc(0));
  return dirs.length;
}
