// Nodes known to have no extended attributes: their GETXATTR (ENODATA) and LISTXATTR (empty) are answered by the
// reader thread, without a trip to the owner. overlayfs asks every lower entry it meets for trusted.overlay.* at each
// container start and the kernel caches no xattr answer for FUSE, so these were most of a start's requests. What a
// node is known by: the flag of its record in a listing the transport handles (src/format/listing.ts), or the
// owner's word (session_set_noxattr, e.g. with a LOOKUP reply). Node ids below uncached_below are never answered.
// Direct-mapped by node id: a collision only costs that trip. Node ids name immutable content for the session's life.
#include "thinfuse.h"
#include <errno.h>
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>

void noxattr_init(session_t *s) { s->noxattr = calloc(NOXATTR_SLOTS, sizeof(uint64_t)); }
void noxattr_free(session_t *s) { free(s->noxattr); }

void session_set_noxattr(session_t *s, uint64_t nodeid) {
  if (!s->noxattr || nodeid < s->uncached_below) return;
  __atomic_store_n(&s->noxattr[nodeid % NOXATTR_SLOTS], nodeid, __ATOMIC_RELAXED);
}

// Every record of a listing flagged as having no xattrs (node id = base + its inode); stops at a malformed record.
void session_noxattr_listing(session_t *s, const uint8_t *blk, size_t blen, uint64_t base) {
  size_t p = 0;
  while (blen - p >= LISTING_RECORD_HEADER) {
    uint64_t ino;
    uint32_t mode;
    uint16_t namelen;
    memcpy(&ino, blk + p, 8);
    memcpy(&mode, blk + p + 28, 4);
    memcpy(&namelen, blk + p + 48, 2);
    if (blen - p - LISTING_RECORD_HEADER < namelen) return;
    if (mode & LISTING_NO_XATTRS) session_set_noxattr(s, base + ino);
    p += LISTING_RECORD_HEADER + namelen;
  }
}

// GETXATTR / LISTXATTR of a node without xattrs: answered here (1), else 0 (the owner answers).
int session_noxattr_answer(session_t *s, const struct fuse_in_header *ih, const char *body) {
  if (!s->noxattr || ih->nodeid < s->uncached_below) return 0;
  if (__atomic_load_n(&s->noxattr[ih->nodeid % NOXATTR_SLOTS], __ATOMIC_RELAXED) != ih->nodeid) return 0;
  __atomic_fetch_add(&s->noxattr_answered, 1, __ATOMIC_RELAXED);
  if (ih->opcode == FUSE_GETXATTR) return session_reply(s, ih->unique, ENODATA, NULL, 0), 1;
  // LISTXATTR: an empty list; a size probe (size 0) gets its length, 0.
  if (((const struct fuse_getxattr_in *)body)->size == 0) {
    struct fuse_getxattr_out o = {0};
    struct iovec v = {.iov_base = &o, .iov_len = sizeof(o)};
    session_reply(s, ih->unique, 0, &v, 1);
  } else {
    session_reply(s, ih->unique, 0, NULL, 0);
  }
  return 1;
}
