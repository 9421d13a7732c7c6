// Issue 11, listing pages (src/fuse/native/listing.c) as a pure function, called through the addon's dirPage: a
// listing encoded by src/format/listing.ts expanded into READDIR / READDIRPLUS pages, read back here by a parser of
// linux/fuse.h's struct fuse_dirent / fuse_direntplus. Page boundaries, cookies as byte offsets, the two reply kinds
// continuing each other, a name longer than the space left on a page, malformed blocks.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../src/fuse/kernel.js';
import { encodeListingRecord, inodeAttr, LISTING_FIRST_COOKIE, LISTING_NO_XATTRS, LISTING_RECORD_HEADER, type Attr } from '../src/format/listing.js';

const k = native();
const BASE = 1000, TTL = 86400, SELF = 77;

interface Rec { name: Buffer; attr: Attr; at: number }

/** A listing block of the given names (a mix of types), and where each record starts. */
function block(names: Buffer[], noXattrs = false): { blk: Buffer; recs: Rec[] } {
  const recs: Rec[] = [];
  const out = Buffer.alloc(names.reduce((n, x) => n + LISTING_RECORD_HEADER + x.length, 0));
  let off = 0;
  names.forEach((name, i) => {
    const type = ['file', 'dir', 'symlink', 'chardev'][i % 4]!;
    const mode = { file: 0o100644, dir: 0o040755, symlink: 0o120777, chardev: 0o020600 }[type]!;
    const attr = inodeAttr({
      type, size: 1000 * i + 1, nlink: 1, target: type === 'symlink' ? Buffer.from('x'.repeat(i + 1)) : null,
      mtime: 1_700_000_000 + i, mtimeNs: 1000 * i + 7, mode, uid: 1000 + i, gid: 2000 + i, rdevMajor: type === 'chardev' ? 4 : 0, rdevMinor: i,
    }, i + 2, type === 'dir' ? i % 3 : null);
    recs.push({ name, attr, at: off });
    off = encodeListingRecord(attr, name, out, off, noXattrs && i % 2 === 0);
  });
  return { blk: out, recs };
}

interface Ent { ino: number; off: number; type: number; name: Buffer; nodeid?: number; entryValid?: number; attr?: Record<string, number> }

const u64 = (b: Buffer, o: number) => Number(b.readBigUInt64LE(o));

/** Parses a READDIR (plain) or READDIRPLUS reply. */
function parse(buf: Buffer, plus: boolean): Ent[] {
  const out: Ent[] = [];
  let o = 0;
  while (o < buf.length) {
    let e: Partial<Ent> = {};
    if (plus) {
      // struct fuse_entry_out: nodeid, generation, entry_valid, attr_valid, 2 x u32 nsec, struct fuse_attr (88)
      const a = o + 40;
      e = {
        nodeid: u64(buf, o), entryValid: u64(buf, o + 16),
        attr: {
          ino: u64(buf, a), size: u64(buf, a + 8), blocks: u64(buf, a + 16), atime: u64(buf, a + 24), mtime: u64(buf, a + 32), ctime: u64(buf, a + 40),
          mtimeNs: buf.readUInt32LE(a + 52), mode: buf.readUInt32LE(a + 60), nlink: buf.readUInt32LE(a + 64), uid: buf.readUInt32LE(a + 68),
          gid: buf.readUInt32LE(a + 72), rdev: buf.readUInt32LE(a + 76), blksize: buf.readUInt32LE(a + 80),
        },
      };
      o += 128;
    }
    const namelen = buf.readUInt32LE(o + 16);
    out.push({ ...e, ino: u64(buf, o), off: u64(buf, o + 8), type: buf.readUInt32LE(o + 20), name: buf.subarray(o + 24, o + 24 + namelen) });
    const end = o + 24 + namelen;
    const aligned = (end + 7) & ~7;
    assert.ok(buf.subarray(end, aligned).every((x) => x === 0), 'a name is padded with zeros to 8 bytes');
    o = aligned;
  }
  assert.equal(o, buf.length, 'the reply ends on a whole entry');
  return out;
}

function page(blk: Buffer, cookie: number, size: number, plus: boolean): { ents: Ent[]; next: number } {
  const out = Buffer.alloc(size, 0xaa);
  const r = k.dirPage(blk, cookie, out, plus, BASE, TTL, SELF);
  assert.ok(r, 'a well-formed block');
  return { ents: parse(out.subarray(0, r[0]), plus), next: r[1] };
}

/** Reads a whole listing a page at a time, following each page's last cookie, as the kernel does. */
function readAll(blk: Buffer, size: number, plusOf: (pageNo: number) => boolean): Ent[] {
  const all: Ent[] = [];
  let cookie = 0;
  for (let n = 0; n < 10_000; n++) {
    const { ents } = page(blk, cookie, size, plusOf(n));
    if (!ents.length) return all;
    all.push(...ents);
    cookie = ents[ents.length - 1]!.off;
  }
  throw new Error('the listing never ended');
}

const names = Array.from({ length: 40 }, (_, i) => Buffer.from(`entry-${String(i).padStart(2, '0')}-${'n'.repeat(i * 3)}`));

describe('listing pages', () => {
  it('READDIRPLUS: "." and "..", then every record with its attributes, ids offset by the layer base, cookies = 2 + byte offset of the next record', () => {
    const { blk, recs } = block(names);
    const { ents, next } = page(blk, 0, 1 << 20, true);
    assert.equal(next, blk.length);
    assert.equal(ents.length, recs.length + 2);
    assert.deepEqual(ents.slice(0, 2).map((e) => [e.name.toString(), e.ino, e.off, e.type, e.nodeid]), [['.', SELF, 1, 4, 0], ['..', 1, 2, 4, 0]]);
    recs.forEach((r, i) => {
      const e = ents[i + 2]!;
      const after = i + 1 < recs.length ? recs[i + 1]!.at : blk.length;
      assert.deepEqual(e.name, r.name);
      assert.equal(e.off, LISTING_FIRST_COOKIE + after);
      assert.equal(e.ino, BASE + r.attr.ino);
      assert.equal(e.nodeid, BASE + r.attr.ino);
      assert.equal(e.entryValid, TTL);
      assert.equal(e.type, r.attr.mode >>> 12);
      assert.deepEqual(e.attr, {
        ino: BASE + r.attr.ino, size: r.attr.size, blocks: Math.ceil(r.attr.size / 512), atime: r.attr.mtime, mtime: r.attr.mtime, ctime: r.attr.mtime,
        mtimeNs: r.attr.mtimeNs, mode: r.attr.mode, nlink: r.attr.nlink, uid: r.attr.uid, gid: r.attr.gid, rdev: r.attr.rdev, blksize: 4096,
      });
    });
  });

  it('READDIR gives the same names, inode numbers and cookies without attributes', () => {
    const { blk } = block(names);
    const plus = page(blk, 0, 1 << 20, true).ents, plain = page(blk, 0, 1 << 20, false).ents;
    assert.deepEqual(plain.map((e) => [e.name, e.ino, e.off, e.type]), plus.map((e) => [e.name, e.ino, e.off, e.type]));
    assert.ok(plain.every((e) => e.nodeid === undefined));
  });

  it('page by page, at every page size, in either kind or alternating: each entry exactly once, in order', () => {
    const { blk } = block(names);
    const whole = page(blk, 0, 1 << 20, true).ents.map((e) => e.name.toString('latin1'));
    for (const size of [200, 256, 333, 512, 1000, 4096]) {
      for (const [label, plusOf] of [['plus', () => true], ['plain', () => false], ['alternating', (n: number) => n % 2 === 0]] as const) {
        if (label !== 'plain' && size < 128 + 24 + 130) continue; // a page must hold the longest entry
        const got = readAll(blk, size, plusOf).map((e) => e.name.toString('latin1'));
        assert.deepEqual(got, whole, `${label} pages of ${size} bytes`);
      }
    }
  });

  it('a cookie is a byte offset: one at a record starts there, one inside a record resumes at the next', () => {
    const { blk, recs } = block(names);
    const at = recs[10]!.at;
    assert.deepEqual(page(blk, LISTING_FIRST_COOKIE + at, 1 << 20, false).ents[0]!.name, recs[10]!.name);
    for (const d of [1, 3, LISTING_RECORD_HEADER, recs[11]!.at - at - 1]) {
      assert.deepEqual(page(blk, LISTING_FIRST_COOKIE + at + d, 1 << 20, false).ents[0]!.name, recs[11]!.name, `${d} bytes into a record`);
    }
    assert.equal(page(blk, 1, 1 << 20, false).ents[0]!.name.toString(), '..', 'cookie 1: ".." next');
    assert.deepEqual(page(blk, LISTING_FIRST_COOKIE, 1 << 20, false).ents[0]!.name, recs[0]!.name);
    const end = page(blk, LISTING_FIRST_COOKIE + blk.length, 1 << 20, true);
    assert.deepEqual([end.ents.length, end.next], [0, blk.length], 'past the last record: an empty page, the end of the listing');
  });

  it('a name longer than the space left ends the page before it, whole; it opens the next page', () => {
    const long = Buffer.alloc(255, 0xe9); // the longest name, not UTF-8
    const { blk, recs } = block([Buffer.from('a'), long, Buffer.from('b')]);
    const dots = 2 * (128 + 32), first = 128 + 32; // ".", ".." and "a" as READDIRPLUS entries
    const p1 = page(blk, 0, dots + first + 128 + 280 - 1, true); // one byte short of the long entry (128 + 24 + 255, aligned)
    assert.deepEqual(p1.ents.map((e) => e.name.toString()), ['.', '..', 'a']);
    assert.equal(p1.next, recs[1]!.at);
    const p2 = page(blk, p1.ents[2]!.off, 128 + 24 + 256, true);
    assert.deepEqual(p2.ents.map((e) => e.name), [long]);
    // A page too small for the entry at the cookie holds nothing: no progress, nothing cut.
    const none = page(blk, p1.ents[2]!.off, 100, false);
    assert.deepEqual([none.ents.length, none.next], [0, recs[1]!.at]);
    const tiny = page(blk, 0, 16, false);
    assert.deepEqual([tiny.ents.length, tiny.next], [0, 0], 'not even "." fits');
  });

  it('records flagged as having no xattrs give the same pages: the flag never reaches st_mode', () => {
    const names = Array.from({ length: 12 }, (_, i) => Buffer.from(`n${i}`));
    const plain = block(names), flagged = block(names, true);
    assert.notDeepEqual(flagged.blk, plain.blk, 'the flag is in the records');
    assert.equal((flagged.blk.readUInt32LE(28) & LISTING_NO_XATTRS) >>> 0, LISTING_NO_XATTRS);
    for (const plus of [true, false]) assert.deepEqual(page(flagged.blk, 0, 1 << 16, plus), page(plain.blk, 0, 1 << 16, plus));
  });

  it('an empty directory lists "." and ".." only; a malformed block is refused, not read past its end', () => {
    assert.deepEqual(page(Buffer.alloc(0), 0, 4096, true).ents.map((e) => e.name.toString()), ['.', '..']);
    const { blk } = block(names.slice(0, 3));
    const out = Buffer.alloc(4096);
    assert.equal(k.dirPage(blk.subarray(0, blk.length - 1), 0, out, true, BASE, TTL, SELF), undefined, 'last name cut short');
    assert.equal(k.dirPage(blk.subarray(0, 20), 0, out, false, BASE, TTL, SELF), undefined, 'a header cut short');
    const bad = Buffer.from(blk);
    bad.writeUInt16LE(0xffff, 48); // the first name's length runs past the block
    assert.equal(k.dirPage(bad, LISTING_FIRST_COOKIE + blk.length - 1, out, false, BASE, TTL, SELF), undefined, 'checked even when skipped to a later cookie');
  });
});
