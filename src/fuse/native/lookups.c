// Listings kept for LOOKUP: a name looked up in a directory whose pre-encoded listing the transport holds is answered
// by the reader thread from that listing (the entry's attributes, or a negative entry the kernel caches), without a
// trip to the owner. overlayfs looks every path component up in every lower layer at each container start, mostly
// in directories never listed. Listings come from the owner (session_lookup_keep: a directory it listed or looked up
// in) and from listings handed ahead once served; LRU within a byte budget. Node ids below uncached_below never.
#include "thinfuse.h"
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>

void lookups_init(session_t *s) {
  s->lk = calloc(LK_BUCKETS, sizeof(lk_entry_t *));
  pthread_mutex_init(&s->lk_lock, NULL);
}

// Callers hold lk_lock.
static lk_entry_t *lk_find(session_t *s, uint64_t nodeid) {
  lk_entry_t *e = s->lk[nodeid % LK_BUCKETS];
  while (e && e->nodeid != nodeid) e = e->chain;
  return e;
}

static void lk_unlink_lru(session_t *s, lk_entry_t *e) {
  if (e->older) e->older->newer = e->newer; else s->lk_oldest = e->newer;
  if (e->newer) e->newer->older = e->older; else s->lk_newest = e->older;
  e->older = e->newer = NULL;
}

static void lk_push_newest(session_t *s, lk_entry_t *e) {
  e->older = s->lk_newest;
  e->newer = NULL;
  if (s->lk_newest) s->lk_newest->newer = e; else s->lk_oldest = e;
  s->lk_newest = e;
}

static void lk_drop(session_t *s, lk_entry_t *e) {
  lk_entry_t **pp = &s->lk[e->nodeid % LK_BUCKETS];
  while (*pp != e) pp = &(*pp)->chain;
  *pp = e->chain;
  lk_unlink_lru(s, e);
  s->lk_bytes -= e->len;
  free(e->blk);
  free(e);
}

void lookups_free(session_t *s) {
  if (!s->lk) return;
  while (s->lk_oldest) lk_drop(s, s->lk_oldest);
  free(s->lk);
}

// Keeps a directory's listing (copied) for lookups; one already kept stays. Ignored when bigger than a sixteenth of
// the budget (a huge directory would push out many small ones).
void session_lookup_keep(session_t *s, uint64_t nodeid, const uint8_t *blk, size_t blen, uint64_t base) {
  if (!s->lk || nodeid < s->uncached_below || blen > LK_BUDGET / 16) return;
  pthread_mutex_lock(&s->lk_lock);
  int have = lk_find(s, nodeid) != NULL;
  pthread_mutex_unlock(&s->lk_lock);
  if (have) return;
  lk_entry_t *e = calloc(1, sizeof(*e));
  uint8_t *copy = malloc(blen ? blen : 1);
  if (!e || !copy) { free(e); free(copy); return; }
  memcpy(copy, blk, blen);
  e->nodeid = nodeid;
  e->base = base;
  e->blk = copy;
  e->len = blen;
  pthread_mutex_lock(&s->lk_lock);
  if (lk_find(s, nodeid)) {
    pthread_mutex_unlock(&s->lk_lock);
    free(copy);
    free(e);
    return;
  }
  e->chain = s->lk[nodeid % LK_BUCKETS];
  s->lk[nodeid % LK_BUCKETS] = e;
  lk_push_newest(s, e);
  s->lk_bytes += blen;
  while (s->lk_bytes > LK_BUDGET && s->lk_oldest != e) lk_drop(s, s->lk_oldest);
  pthread_mutex_unlock(&s->lk_lock);
}

// LOOKUP in a directory whose listing is kept: answered here (1), else 0 (the owner answers). body: the name, NUL
// terminated, in blen bytes.
int session_lookup_answer(session_t *s, const struct fuse_in_header *ih, const char *body, size_t blen) {
  if (!s->lk || ih->nodeid < s->uncached_below) return 0;
  size_t nl = strnlen(body, blen);
  if (nl == 0 || nl == blen) return 0;
  if (body[0] == '.' && (nl == 1 || (nl == 2 && body[1] == '.'))) return 0;
  struct fuse_entry_out e;
  memset(&e, 0, sizeof(e));
  uint64_t noxattr = 0;
  pthread_mutex_lock(&s->lk_lock);
  lk_entry_t *d = lk_find(s, ih->nodeid);
  long at = d ? listing_find(d->blk, d->len, (const uint8_t *)body, nl) : -2;
  if (at >= 0) noxattr = listing_entry(d->blk + at, d->base, s->ttl, &e);
  if (d && at >= -1) { lk_unlink_lru(s, d); lk_push_newest(s, d); }
  pthread_mutex_unlock(&s->lk_lock);
  if (at < -1) return 0;  // not kept, or malformed: the owner answers (and reports)
  // Not in the listing: a negative entry the kernel keeps as long as a positive one (the directory never changes).
  if (at == -1) e.entry_valid = s->ttl;
  if (noxattr) session_set_noxattr(s, e.nodeid);
  __atomic_fetch_add(&s->lk_answered, 1, __ATOMIC_RELAXED);
  struct iovec v = {.iov_base = &e, .iov_len = sizeof(e)};
  session_reply(s, ih->unique, 0, &v, 1);
  return 1;
}
