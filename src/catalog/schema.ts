// One SQLite database per layer. Names and targets are BLOBs: Linux paths are bytes, not UTF-8.
export const CATALOG_VERSION = 1;
export const ROOT_INO = 1;

export type EntryType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo';

export const TYPE_BITS: Record<EntryType, number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, chardev: 0o020000, blockdev: 0o060000, fifo: 0o010000,
};

/** How a directory entry relates to the OCI tar it came from. */
export enum DirentKind {
  Normal = 0,
  /** Was `.wh.NAME`: shown as a 0/0 char device NAME, the overlayfs whiteout. */
  Whiteout = 1,
  /** Was `.wh..wh..opq`: hidden; the parent carries trusted.overlay.opaque=y instead. */
  OpaqueMarker = 2,
}

export const FLAG_IMPLICIT = 1;   // directory the tar never listed (parent of a listed path)
export const FLAG_OPAQUE = 2;     // directory with an opaque marker
/** Directory made afresh after a whiteout of its name in its own layer: nothing of a lower one shows, attributes included. */
export const FLAG_FRESH = 4;
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

export const SCHEMA = `
CREATE TABLE props (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE inodes (
  ino INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  mode INTEGER NOT NULL,          -- full st_mode, type bits included
  uid INTEGER NOT NULL, gid INTEGER NOT NULL,
  uname TEXT, gname TEXT,
  size INTEGER NOT NULL,          -- apparent size (sparse files: real size)
  mtime INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  rdev_major INTEGER NOT NULL DEFAULT 0, rdev_minor INTEGER NOT NULL DEFAULT 0,
  target BLOB,                    -- symlink target
  inline BLOB,                    -- whole content of tiny files
  nlink INTEGER NOT NULL DEFAULT 1,
  flags INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE dirents (
  seq INTEGER PRIMARY KEY,        -- order in the source tar, for faithful export
  parent INTEGER NOT NULL,
  name BLOB NOT NULL,
  ino INTEGER NOT NULL,
  kind INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE chunks (
  ino INTEGER NOT NULL, idx INTEGER NOT NULL,
  offset INTEGER NOT NULL, size INTEGER NOT NULL,
  hash BLOB NOT NULL,             -- sha256 of the uncompressed chunk: the object name
  PRIMARY KEY (ino, idx)
) WITHOUT ROWID;
CREATE TABLE xattrs (ino INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (ino, name)) WITHOUT ROWID;
`;

/**
 * Packs (src/store/pack.ts): several small chunks that also travel together in one request. A pack is named by its
 * membership (name = sha256 over its members' hashes and sizes); bytes = its members' plain bytes (bounds its download);
 * chunks.pack = the id of a pack that also carries the chunk. Catalogs written before packs have neither.
 */
export const PACK_SCHEMA = `
ALTER TABLE chunks ADD COLUMN pack INTEGER;
CREATE TABLE packs (id INTEGER PRIMARY KEY, name BLOB NOT NULL, members INTEGER NOT NULL, bytes INTEGER NOT NULL);
`;

/** Built after the bulk load: lookup by (parent, name) and readdir in name order. */
export const INDEXES = `
CREATE UNIQUE INDEX dirents_by_name ON dirents (parent, name);
CREATE INDEX dirents_by_ino ON dirents (ino);
`;
