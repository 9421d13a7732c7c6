// Listing pages: a pre-encoded listing (src/format/listing.ts) expanded into the READDIR / READDIRPLUS reply the kernel
// asked for. Pure functions of their arguments (no session, no I/O): the reader thread uses them for listings handed
// ahead, JS for the rest (dirPage), and test/fuse-listing-pages.test.ts checks them directly.
//
// A block holds packed records in name order, 50 bytes + the name: u64 ino, u64 size, i64 mtime, u32 mtime ns, u32 mode,
// u32 uid, u32 gid, u32 nlink, u32 rdev, u16 namelen, name. Cookie 2 + p names the record at byte p; "." and ".." are
// cookies 0 and 1.
#include "thinfuse.h"
#include <linux/fuse.h>
#include <string.h>

#define DP_ENTRY 128u  // sizeof(struct fuse_entry_out)
#define DP_DIRENT 24u  // sizeof(struct fuse_dirent) without the name
_Static_assert(sizeof(struct fuse_entry_out) == DP_ENTRY, "struct fuse_entry_out");
_Static_assert(offsetof(struct fuse_dirent, name) == DP_DIRENT, "struct fuse_dirent");

static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline size_t align8(size_t n) { return (n + 7u) & ~(size_t)7u; }

// struct fuse_dirent at d (name padded with zeros to 8 bytes).
static void put_dirent(uint8_t *d, uint64_t ino, uint64_t off, const uint8_t *name, uint32_t namelen, uint32_t type) {
  size_t len = align8(DP_DIRENT + namelen);
  st64(d, ino);
  st64(d + 8, off);
  st32(d + 16, namelen);
  st32(d + 20, type);
  memcpy(d + DP_DIRENT, name, namelen);
  memset(d + DP_DIRENT + namelen, 0, len - DP_DIRENT - namelen);
}

// A record's lookup answer: node id = st_ino = base + catalog inode, lifetimes ttl, atime = ctime = mtime (like
// encodeAttr in kernel.ts). Returns the record's LISTING_NO_XATTRS flag.
uint32_t listing_entry(const uint8_t *r, uint64_t base, uint64_t ttl, struct fuse_entry_out *e) {
  uint64_t ino = ld64(r) + base, size = ld64(r + 8), mtime = ld64(r + 16);
  uint32_t nsec = ld32(r + 24), mode = ld32(r + 28);
  memset(e, 0, sizeof(*e));
  e->nodeid = ino;
  e->entry_valid = e->attr_valid = ttl;
  e->attr.ino = ino;
  e->attr.size = size;
  e->attr.blocks = (size + 511) / 512;
  e->attr.atime = e->attr.mtime = e->attr.ctime = mtime;
  e->attr.atimensec = e->attr.mtimensec = e->attr.ctimensec = nsec;
  e->attr.mode = mode & 0xffffu;
  e->attr.uid = ld32(r + 32);
  e->attr.gid = ld32(r + 36);
  e->attr.nlink = ld32(r + 40);
  e->attr.rdev = ld32(r + 44);
  e->attr.blksize = 4096;
  return mode & LISTING_NO_XATTRS;
}

// The record named name in a listing (records in byte order of name, shorter first on a common prefix): its offset,
// -1 when absent, -2 when the block is malformed.
long listing_find(const uint8_t *blk, size_t blen, const uint8_t *name, size_t nl) {
  size_t p = 0;
  while (p < blen) {
    if (blen - p < LISTING_RECORD_HEADER) return -2;
    size_t rl = ld16(blk + p + 48);
    if (blen - p - LISTING_RECORD_HEADER < rl) return -2;
    int c = memcmp(blk + p + LISTING_RECORD_HEADER, name, rl < nl ? rl : nl);
    if (c == 0) c = rl < nl ? -1 : rl > nl ? 1 : 0;
    if (c == 0) return (long)p;
    if (c > 0) return -1;  // past where it would be
    p += LISTING_RECORD_HEADER + rl;
  }
  return -1;
}

// One page of a listing from cookie on, into out: "." and ".." first, then whole entries while they fit, as READDIRPLUS
// records (struct fuse_direntplus: node id = st_ino = base + catalog inode, lifetimes ttl, atime = ctime = mtime like
// encodeAttr in kernel.ts) or plain READDIR dirents. A cookie inside a record (a seekdir to a made-up offset) resumes
// at the next one. Returns the bytes written and sets *next to the block position reached; -1 if the block is malformed.
long listing_page(const uint8_t *blk, size_t blen, uint64_t cookie, uint8_t *out, size_t olen, int plus, uint64_t base,
                  uint64_t ttl, uint64_t self, size_t *next) {
  size_t o = 0, p = 0;
  for (uint64_t c = cookie; c < 2; c++) {
    uint32_t nl = c == 0 ? 1 : 2;
    size_t need = (plus ? DP_ENTRY : 0) + align8(DP_DIRENT + nl);
    if (need > olen - o) { *next = 0; return (long)o; }
    if (plus) memset(out + o, 0, DP_ENTRY);  // no entry_out: the kernel makes no dentry for "." and ".."
    put_dirent(out + o + (plus ? DP_ENTRY : 0), c == 0 ? self : 1, c + 1, (const uint8_t *)"..", nl, 4 /* DT_DIR */);
    o += need;
  }
  size_t want = cookie > 2 ? (size_t)(cookie - 2) : 0;
  for (;;) {  // the first record at or after want, every header checked on the way
    if (p >= blen) break;
    if (blen - p < LISTING_RECORD_HEADER || blen - p - LISTING_RECORD_HEADER < ld16(blk + p + 48)) return -1;
    if (p >= want) break;
    p += LISTING_RECORD_HEADER + ld16(blk + p + 48);
  }
  while (p < blen) {
    const uint8_t *r = blk + p;
    if (blen - p < LISTING_RECORD_HEADER) return -1;
    uint32_t namelen = ld16(r + 48);
    if (blen - p - LISTING_RECORD_HEADER < namelen) return -1;
    size_t dlen = align8(DP_DIRENT + namelen), need = (plus ? DP_ENTRY : 0) + dlen;
    if (need > olen - o) break;
    uint64_t ino = ld64(r) + base;
    uint32_t mode = ld32(r + 28) & 0xffffu;  // the high bits are flags (LISTING_NO_XATTRS)
    size_t end = p + LISTING_RECORD_HEADER + namelen;
    uint8_t *w = out + o;
    if (plus) {
      struct fuse_entry_out e;
      listing_entry(r, base, ttl, &e);
      memcpy(w, &e, DP_ENTRY);
      w += DP_ENTRY;
    }
    put_dirent(w, ino, 2 + end, r + LISTING_RECORD_HEADER, namelen, (mode >> 12) & 0xf);
    o += need;
    p = end;
  }
  *next = p;
  return (long)o;
}
