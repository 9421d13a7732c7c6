// Every directory's listing, encoded once at ingest in the kernel's READDIRPLUS format, so that a mount answers a
// listing with one indexed read and a native copy (thinfuse.c dirPage): no per-entry work on its JS thread, which is
// what a metadata scan of a freshly started daemon spends its time on.
import type Database from 'better-sqlite3';
import { ATTR_SIZE, direntSize, encodeAttr, inodeAttr, writeDirent, writeEntryHeader } from '../fuse/kernel.js';
import { DirentKind } from './schema.js';
import type { Inode } from './reader.js';

/**
 * One row per directory: struct fuse_direntplus records of its visible entries (opaque markers hidden) in byte order of
 * name. Node ids and st_ino are catalog inode numbers (a mount adds its base for the layer), lifetimes are zero (a
 * mount sets its own), d_off is 2 + the byte offset of the next record ("." and ".." are offsets 0 and 1).
 */
export const DIRBLOCKS_TABLE = `CREATE TABLE IF NOT EXISTS dirblocks (dir INTEGER PRIMARY KEY, ents BLOB NOT NULL)`;

/** d_off of the record ending at byte end of a block; a mount serves "." and ".." before it. */
export const DIRBLOCK_OFFSET_BASE = 2;

/** Fill the dirblocks table from a finished catalog's dirents and inodes. Deterministic: same catalog, same bytes. */
export function buildDirBlocks(db: Database.Database): number {
  db.exec(DIRBLOCKS_TABLE);
  const subdirs = new Map<number, number>();
  for (const r of db.prepare(`SELECT d.parent AS parent, count(*) AS n FROM dirents d JOIN inodes i ON i.ino = d.ino
      WHERE d.kind != ${DirentKind.OpaqueMarker} AND i.type = 'dir' GROUP BY d.parent`).iterate() as IterableIterator<{ parent: number; n: number }>) {
    subdirs.set(r.parent, r.n);
  }
  const insert = db.prepare(`INSERT INTO dirblocks (dir, ents) VALUES (?, ?)`);
  const list = db.prepare(`SELECT d.name AS name, i.ino AS ino, i.type AS type, i.mode AS mode, i.uid AS uid,
      i.gid AS gid, i.size AS size, i.mtime AS mtime, i.mtime_ns AS mtimeNs, i.rdev_major AS rdevMajor, i.rdev_minor AS rdevMinor,
      i.target AS target, i.nlink AS nlink
    FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.kind != ${DirentKind.OpaqueMarker} ORDER BY d.name`);
  // One directory at a time (a connection cannot write while it iterates): memory stays one listing, not the layer.
  const dirs = db.prepare(`SELECT ino FROM inodes WHERE type = 'dir' ORDER BY ino`).pluck().all() as number[];
  for (const dir of dirs) {
    const parts: Buffer[] = [];
    let len = 0;
    for (const r of list.all(dir) as Array<Inode & { name: Buffer }>) {
      const rec = Buffer.alloc(direntSize(r.name.length, true));
      writeEntryHeader(rec, 0, r.ino, 0, 0);
      encodeAttr(inodeAttr(r, r.ino, r.type === 'dir' ? subdirs.get(r.ino) ?? 0 : null)).copy(rec, 40);
      len += rec.length;
      writeDirent(rec, 40 + ATTR_SIZE, r.ino, DIRBLOCK_OFFSET_BASE + len, r.name, (r.mode >>> 12) & 0xf);
      parts.push(rec);
    }
    // Empty directories get an empty block: every listing is one indexed read.
    insert.run(dir, Buffer.concat(parts, len));
  }
  return dirs.length;
}
