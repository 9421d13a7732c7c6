// The listings the transport keeps (listings-cache.h), and the requests the reader thread answers from them without a
// trip to the owner: READDIR/READDIRPLUS of a listing handed ahead (the subdirectories of a directory just listed: a
// scan reads them next), and LOOKUP of a name in any kept listing (its record's entry, or a negative entry the kernel
// caches: the directory never changes). overlayfs looks every path component up in every lower layer at each
// container start, mostly in directories never listed. Listings come from the owner: handed ahead, or kept for lookups
// (a directory it listed or looked up in). One copy per directory whatever it serves, one LRU within one byte budget;
// a listing bigger than a twelfth of the budget is refused (a huge directory would push out many small ones). Node
// ids below uncached_below (directories whose listings change) never.
#include "thinfuse.h"
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>

void listings_init(session_t *s, size_t budget) {
  listings_t *c = &s->listings;
  c->buckets = calloc(LISTINGS_BUCKETS, sizeof(listing_kept_t *));
  c->out = malloc(BUF_SIZE);
  c->budget = budget;
  pthread_mutex_init(&c->lock, NULL);
}

// Callers hold the lock.
static listing_kept_t *find(listings_t *c, uint64_t nodeid) {
  listing_kept_t *e = c->buckets[nodeid % LISTINGS_BUCKETS];
  while (e && e->nodeid != nodeid) e = e->chain;
  return e;
}

static void unlink_lru(listings_t *c, listing_kept_t *e) {
  if (e->older) e->older->newer = e->newer; else c->oldest = e->newer;
  if (e->newer) e->newer->older = e->older; else c->newest = e->older;
  e->older = e->newer = NULL;
}

static void push_newest(listings_t *c, listing_kept_t *e) {
  e->older = c->newest;
  e->newer = NULL;
  if (c->newest) c->newest->newer = e; else c->oldest = e;
  c->newest = e;
}

static void touch(listings_t *c, listing_kept_t *e) {
  if (c->newest == e) return;
  unlink_lru(c, e);
  push_newest(c, e);
}

static void drop(listings_t *c, listing_kept_t *e) {
  listing_kept_t **pp = &c->buckets[e->nodeid % LISTINGS_BUCKETS];
  while (*pp != e) pp = &(*pp)->chain;
  *pp = e->chain;
  unlink_lru(c, e);
  c->bytes -= e->len;
  c->count--;
  free(e->blk);
  free(e);
}

void listings_free(session_t *s) {
  listings_t *c = &s->listings;
  if (c->buckets) while (c->oldest) drop(c, c->oldest);
  free(c->buckets);
  free(c->out);
}

// Keeps a directory's listing (copied unless kept already); ahead: answer the kernel's READDIR from it too. 1 when
// kept (now or before), 0 when refused (too big for the budget, a changing directory, no memory).
int session_listing_keep(session_t *s, uint64_t nodeid, const uint8_t *blk, size_t blen, uint64_t base, int ahead) {
  listings_t *c = &s->listings;
  if (!c->buckets || nodeid < s->uncached_below || blen > c->budget / 12) return 0;
  if (ahead) session_noxattr_listing(s, blk, blen, base);
  pthread_mutex_lock(&c->lock);
  listing_kept_t *have = find(c, nodeid);
  if (have && ahead) have->ahead = 1;
  pthread_mutex_unlock(&c->lock);
  if (have) return 1;
  listing_kept_t *e = calloc(1, sizeof(*e));
  uint8_t *copy = malloc(blen ? blen : 1);
  if (!e || !copy) { free(e); free(copy); return 0; }
  memcpy(copy, blk, blen);
  e->nodeid = nodeid;
  e->base = base;
  e->blk = copy;
  e->len = blen;
  e->ahead = ahead;
  pthread_mutex_lock(&c->lock);
  if ((have = find(c, nodeid)) != NULL) {  // kept meanwhile
    if (ahead) have->ahead = 1;
    pthread_mutex_unlock(&c->lock);
    free(copy);
    free(e);
    return 1;
  }
  e->chain = c->buckets[nodeid % LISTINGS_BUCKETS];
  c->buckets[nodeid % LISTINGS_BUCKETS] = e;
  push_newest(c, e);
  c->bytes += blen;
  c->count++;
  while (c->bytes > c->budget && c->oldest != e) {
    drop(c, c->oldest);
    c->evicted++;
  }
  pthread_mutex_unlock(&c->lock);
  return 1;
}

// READDIR/READDIRPLUS of a listing handed ahead: answered here (1), else 0 (the owner answers).
int listings_readdir(session_t *s, const struct fuse_in_header *ih, const struct fuse_read_in *in) {
  listings_t *c = &s->listings;
  if (!c->buckets || !c->out || ih->nodeid < s->uncached_below) return 0;
  pthread_mutex_lock(&c->lock);
  listing_kept_t *e = find(c, ih->nodeid);
  if (!e || !e->ahead) { pthread_mutex_unlock(&c->lock); return 0; }
  size_t next = 0, olen = in->size < BUF_SIZE ? in->size : BUF_SIZE, blen = e->len;
  long n = listing_page(e->blk, blen, in->offset, c->out, olen, ih->opcode == FUSE_READDIRPLUS, e->base, s->ttl, ih->nodeid, &next);
  int done = n >= 0 && next >= blen;
  if (n < 0) drop(c, e);  // malformed: the owner answers (and reports) it
  else if (done) e->ahead = 0;  // the kernel keeps the listing now; LOOKUPs are still answered from it
  if (n >= 0) touch(c, e);
  pthread_mutex_unlock(&c->lock);
  if (n < 0) return 0;
  if (done) session_set_eof(s, ih->nodeid, 2 + blen);
  session_reply_buf(s, ih->unique, c->out, (size_t)n);
  if (in->offset == 0) {
    request_t *r = calloc(1, sizeof(*r));
    if (r) {
      r->opcode = EV_DIR_LISTED;
      r->nodeid = (double)ih->nodeid;
      session_post(s, r);
    }
  }
  return 1;
}

// LOOKUP in a directory whose listing is kept: answered here (1), else 0 (the owner answers). body: the name, NUL
// terminated, in blen bytes.
int listings_lookup(session_t *s, const struct fuse_in_header *ih, const char *body, size_t blen) {
  listings_t *c = &s->listings;
  if (!c->buckets || ih->nodeid < s->uncached_below) return 0;
  size_t nl = strnlen(body, blen);
  if (nl == 0 || nl == blen) return 0;
  if (body[0] == '.' && (nl == 1 || (nl == 2 && body[1] == '.'))) return 0;
  struct fuse_entry_out e;
  memset(&e, 0, sizeof(e));
  uint64_t noxattr = 0;
  pthread_mutex_lock(&c->lock);
  listing_kept_t *d = find(c, ih->nodeid);
  long at = d ? listing_find(d->blk, d->len, (const uint8_t *)body, nl) : -2;
  if (at >= 0) noxattr = listing_entry(d->blk + at, d->base, s->ttl, &e);
  if (d && at >= -1) touch(c, d);
  pthread_mutex_unlock(&c->lock);
  if (at < -1) return 0;  // not kept, or malformed: the owner answers (and reports)
  // Not in the listing: a negative entry the kernel keeps as long as a positive one (the directory never changes).
  if (at == -1) e.entry_valid = s->ttl;
  if (noxattr) session_set_noxattr(s, e.nodeid);
  __atomic_fetch_add(&c->lookups, 1, __ATOMIC_RELAXED);
  struct iovec v = {.iov_base = &e, .iov_len = sizeof(e)};
  session_reply(s, ih->unique, 0, &v, 1);
  return 1;
}

// What the cache holds now: listings, their bytes, how many the budget pushed out, LOOKUPs answered.
void listings_stats(session_t *s, double out[4]) {
  listings_t *c = &s->listings;
  pthread_mutex_lock(&c->lock);
  out[0] = (double)c->count;
  out[1] = (double)c->bytes;
  out[2] = (double)c->evicted;
  pthread_mutex_unlock(&c->lock);
  out[3] = (double)__atomic_load_n(&c->lookups, __ATOMIC_RELAXED);
}
