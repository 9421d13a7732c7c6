// The listings the FUSE transport keeps (listings-cache.c): one table, by directory node id, of pre-encoded listings
// (src/format/listing.ts) copied from the owner, each held once whatever it serves: READDIR/READDIRPLUS of a listing
// handed ahead of the kernel's request, and LOOKUP of names in it. Least recently used dropped beyond one byte budget.
#ifndef THINFS_LISTINGS_CACHE_H
#define THINFS_LISTINGS_CACHE_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define LISTINGS_BUCKETS 8192
// The default budget (the mount may set another): what READDIR-ahead (16 MiB) and LOOKUP (32 MiB) had apart.
#define LISTINGS_BUDGET ((size_t)48 << 20)

typedef struct listing_kept {
  uint64_t nodeid, base;
  uint8_t *blk;
  size_t len;
  // Handed ahead and not yet served to its end: READDIR is answered from it. Once served to the end the kernel keeps
  // the listing (FOPEN_CACHE_DIR); a later READDIR (the kernel dropped it) goes to the owner, which starts readahead.
  int ahead;
  struct listing_kept *chain, *older, *newer;
} listing_kept_t;

typedef struct {
  listing_kept_t **buckets;
  listing_kept_t *oldest, *newest;
  size_t bytes, budget;
  uint8_t *out;       // the reader thread's reply buffer for the listing pages it answers
  size_t count;
  uint64_t evicted;   // dropped for the budget
  uint64_t lookups;   // LOOKUPs answered from kept listings (atomic: JS reads it)
  pthread_mutex_t lock;
} listings_t;

#endif
