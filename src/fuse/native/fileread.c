// Reads answered on the reader thread, without the JS thread (mounts without FUSE passthrough; with it, only the first
// OPEN of a handed-over file, answered with the chunk file as its backing file, and tiny files' READs): at a node's first open
// JS may hand over a descriptor of a local file holding exactly the node's bytes, already verified by JS's rules (a
// cached chunk re-hashed at open, a whole-file copy verified or matching its trust record: src/cache/). The node's
// open entry keeps its own descriptor; READs are then a pread into the thread's buffer and one writev to /dev/fuse.
// Nodes with no such file (bytes not all local) keep going to JS, which fetches and verifies.
// The trust rule is the whole-file copies' (src/cache/copy-trust.ts): bytes verified once stay trusted while the file's
// identity (inode, size, mtime, ctime) is unchanged. Every READ checks it first: a copy written to since (a stray
// write, a truncate) is let go of, and JS serves the node from chunks it verifies again.
// Cold files: as JS lands a node's chunks (each fetched, verified and written to the cache in one threadpool job), it
// hands each one's cached file and identity to the node's open entry; READs that those chunks cover are then answered
// here too (the same identity check per file per READ), and one JS already holds is answered from them on the
// threadpool (fileread_reply_chunks): no chunk's bytes go through JS.
#include "thinfuse.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>

// How far ahead of a sequential reader the copy is read from disk.
#define READ_AHEAD ((uint64_t)8 << 20)

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

// The entry takes fd (its own descriptor) and its identity now.
static void take(open_entry_t *e, int own, const struct stat *stp) {
  const struct stat st = *stp;
  e->read_fd = own;
  e->read_size = (uint64_t)st.st_size;
  e->read_ino = (uint64_t)st.st_ino;
  e->read_mtime_ns = ns_of(st.st_mtim);
  e->read_ctime_ns = ns_of(st.st_ctim);
  e->read_ahead_to = 0;
}

int fileread_attach(open_entry_t *e, int fd) {
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (own < 0) return -errno;
  struct stat st;
  if (fstat(own, &st) < 0) { int err = errno; close(own); return -err; }
  take(e, own, &st);
  return 1;
}

static void fahead_free(file_ahead_t *f) {
  free(f->path);
  free(f->mem);
  free(f);
}

static void fahead_insert(session_t *s, file_ahead_t *f) {
  pthread_mutex_lock(&s->fahead_lock);
  file_ahead_t **b = &s->fahead[f->nodeid % FAHEAD_BUCKETS], *e = *b;
  while (e && e->nodeid != f->nodeid) e = e->chain;
  if (e || s->fahead_count >= FAHEAD_MAX) { pthread_mutex_unlock(&s->fahead_lock); fahead_free(f); return; }
  f->chain = *b;
  *b = f;
  s->fahead_count++;
  pthread_mutex_unlock(&s->fahead_lock);
}

void fileread_ahead(session_t *s, uint64_t nodeid, const char *path, uint64_t size, const unsigned char sha[32]) {
  if (!s->fahead || size > FAHEAD_FILE_MAX) return;
  file_ahead_t *f = calloc(1, sizeof(*f));
  char *p = strdup(path);
  if (!f || !p) { free(f); free(p); return; }
  f->nodeid = nodeid;
  f->size = size;
  memcpy(f->sha, sha, 32);
  f->path = p;
  fahead_insert(s, f);
}

// A tiny file's bytes (the catalog's inline data, verified with the catalog): its opens and reads are answered here.
void fileread_ahead_bytes(session_t *s, uint64_t nodeid, const uint8_t *data, size_t len) {
  if (!s->fahead || len > 65536) return;
  file_ahead_t *f = calloc(1, sizeof(*f));
  uint8_t *m = malloc(len ? len : 1);
  if (!f || !m) { free(f); free(m); return; }
  memcpy(m, data, len);
  f->nodeid = nodeid;
  f->size = len;
  f->mem = m;
  fahead_insert(s, f);
}

// The handed-over file of a node, unlinked from the table (the caller frees it), or NULL.
static file_ahead_t *fahead_take(session_t *s, uint64_t nodeid) {
  if (!s->fahead) return NULL;
  pthread_mutex_lock(&s->fahead_lock);
  file_ahead_t **pp = &s->fahead[nodeid % FAHEAD_BUCKETS];
  while (*pp && (*pp)->nodeid != nodeid) pp = &(*pp)->chain;
  file_ahead_t *f = *pp;
  if (f) { *pp = f->chain; s->fahead_count--; }
  pthread_mutex_unlock(&s->fahead_lock);
  return f;
}

// The chunk file opened and checked like src/cache/verify.ts openVerified: its size, then its bytes hash to its name.
// The descriptor checked is the one kept (no window for a rename in between). -1 when it is missing or wrong.
static int open_checked(session_t *s, const file_ahead_t *f, struct stat *st) {
  int fd = open(f->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  if (fstat(fd, st) < 0 || (uint64_t)st->st_size != f->size || f->size > BUF_SIZE) { close(fd); return -1; }
  if (!s->read_out && !(s->read_out = malloc(BUF_SIZE))) { close(fd); return -1; }
  size_t got = 0;
  while (got < f->size) {
    ssize_t n = pread(fd, s->read_out + got, f->size - got, (off_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) { close(fd); return -1; }
    got += (size_t)n;
  }
  unsigned char md[32];
  unsigned int mdlen = 0;
  if (!EVP_Digest(s->read_out, f->size, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32 || memcmp(md, f->sha, 32) != 0) {
    close(fd);
    return -1;  // JS opens it the usual way: finds the damage, drops the chunk and fetches it again
  }
  return fd;
}

int fileread_open(session_t *s, uint64_t unique, uint64_t nodeid) {
  file_ahead_t *f = fahead_take(s, nodeid);
  if (!f) return 0;
  struct stat st;
  uint8_t *mem = f->mem;
  size_t mem_len = (size_t)f->size;
  f->mem = NULL;
  int fd = mem ? -1 : open_checked(s, f, &st);
  fahead_free(f);
  if (fd < 0 && !mem) return 0;
  int done = 0;
  pthread_mutex_lock(&s->open_lock);
  if (!session_open_find(s, nodeid)) {
    open_entry_t *e = calloc(1, sizeof(*e));
    // With passthrough the kernel reads the chunk file itself from now on (as when JS answers the open); a refusal
    // leaves the open to JS, which tries the same and serves READs when it fails too.
    int32_t backing = fd >= 0 && s->passthrough && e ? session_backing_open(s, fd) : 0;
    if (e && backing >= 0) {
      e->nodeid = nodeid;
      e->read_fd = -1;
      if (mem) { e->mem = mem; e->mem_len = mem_len; mem = NULL; }
      else if (backing > 0) { e->backing_id = backing; close(fd); fd = -1; }
      else take(e, fd, &st);
      e->opens = 1;
      e->next = s->opens[nodeid % OPEN_BUCKETS];
      s->opens[nodeid % OPEN_BUCKETS] = e;
      session_reply_open(s, unique, e->backing_id);
      done = 1;
    } else free(e);
  }
  pthread_mutex_unlock(&s->open_lock);
  free(mem);
  if (!done) { if (fd >= 0) close(fd); return 0; }
  request_t *r = calloc(1, sizeof(*r));
  if (r) {
    r->opcode = EV_OPENED;
    r->nodeid = (double)nodeid;
    session_post(s, r);
  }
  return 1;
}

void fileread_detach(open_entry_t *e) {
  if (e->read_fd >= 0) close(e->read_fd);
  e->read_fd = -1;
  free(e->mem);
  e->mem = NULL;
  for (size_t i = 0; i < e->n_ext; i++) free(e->ext[i].path);
  free(e->ext);
  e->ext = NULL;
  e->n_ext = e->cap_ext = 0;
}

// First extent ending after off (n_ext when none).
static size_t ext_find(const open_entry_t *e, uint64_t off) {
  size_t lo = 0, hi = e->n_ext;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (e->ext[mid].off + e->ext[mid].len <= off) lo = mid + 1; else hi = mid;
  }
  return lo;
}

static void ext_drop(open_entry_t *e, size_t i) {
  free(e->ext[i].path);
  memmove(&e->ext[i], &e->ext[i + 1], (e->n_ext - i - 1) * sizeof(chunk_ext_t));
  e->n_ext--;
}

int fileread_chunk(session_t *s, uint64_t nodeid, uint64_t node_size, uint64_t off, uint32_t len, const char *path,
                   const file_id_t *id) {
  if (!len || off + len > node_size || off + len < off) return 0;
  int done = 0;
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = session_open_find(s, nodeid);
  // Only entries whose READs come to us and have no whole copy (a copy answers every READ already).
  if (e && e->backing_id == 0 && e->read_fd < 0 && !e->mem && (e->n_ext == 0 || e->ext_size == node_size)) {
    size_t i = ext_find(e, off);
    if (i < e->n_ext && e->ext[i].off == off && e->ext[i].len == len) {
      // Landed again (a re-fetch after a changed file): the new file and identity.
      char *p = strdup(path);
      if (p) { free(e->ext[i].path); e->ext[i].path = p; e->ext[i].id = *id; done = 1; }
    } else if ((i == e->n_ext || e->ext[i].off >= off + len) && e->n_ext < EXT_MAX) {
      if (e->n_ext == e->cap_ext) {
        size_t cap = e->cap_ext ? e->cap_ext * 2 : 64;
        chunk_ext_t *x = realloc(e->ext, cap * sizeof(*x));
        if (x) { e->ext = x; e->cap_ext = cap; }
      }
      char *p = e->n_ext < e->cap_ext ? strdup(path) : NULL;
      if (p) {
        memmove(&e->ext[i + 1], &e->ext[i], (e->n_ext - i) * sizeof(chunk_ext_t));
        e->ext[i] = (chunk_ext_t){.off = off, .len = len, .id = *id, .path = p, .reported = 0};
        e->n_ext++;
        e->ext_size = node_size;
        done = 1;
      }
    }
  }
  pthread_mutex_unlock(&s->open_lock);
  return done;
}

// A READ answered from the entry's landed chunks into buf (lock held): 1 with *got bytes (*fresh set when a chunk of
// it had not been reported to JS: now marked), or 0 (a byte of it not landed, or a chunk file changed since it was verified: that one is let go
// of, and JS reads and verifies it again).
static int ext_read(open_entry_t *e, uint64_t offset, uint32_t size, uint8_t *buf, size_t *got, int *fresh) {
  // fresh == NULL: a READ JS holds (it counted its chunks); they stay unreported, so the reader's next READ served here
  // tells JS it went on (its first READs decide whether the rest of the file is fetched ahead).
  *got = 0;
  if (!e->n_ext || size > BUF_SIZE) return 0;  // never a short reply: bigger READs (none are negotiated) go to JS
  if (offset >= e->ext_size) return 1;
  uint64_t end = offset + size;
  if (end > e->ext_size) end = e->ext_size;
  if (end - offset > BUF_SIZE) end = offset + BUF_SIZE;
  size_t i = ext_find(e, offset), from = i;
  uint64_t pos = offset;
  while (pos < end) {
    if (i >= e->n_ext || e->ext[i].off > pos) return 0;  // not landed (or a hole: JS fills it)
    chunk_ext_t *x = &e->ext[i];
    int fd = open(x->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !file_id_same(&st, &x->id)) {
      if (fd >= 0) close(fd);
      ext_drop(e, i);
      return 0;
    }
    uint64_t to = x->off + x->len < end ? x->off + x->len : end;
    while (pos < to) {
      ssize_t n = pread(fd, buf + (pos - offset), (size_t)(to - pos), (off_t)(pos - x->off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) { close(fd); ext_drop(e, i); return 0; }  // shorter than verified: changed since
      pos += (uint64_t)n;
    }
    close(fd);
    i++;
  }
  *got = (size_t)(end - offset);
  if (fresh)
    for (size_t k = from; k < i; k++)
      if (!e->ext[k].reported) { e->ext[k].reported = 1; *fresh = 1; }
  return 1;
}

int fileread_reply_chunks(session_t *s, uint64_t unique, uint64_t nodeid, uint64_t offset, uint32_t size, uint8_t *buf) {
  size_t got = 0;
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = session_open_find(s, nodeid);
  int ok = e && ext_read(e, offset, size, buf, &got, NULL);
  pthread_mutex_unlock(&s->open_lock);
  if (!ok) return 0;
  struct iovec v = {.iov_base = buf, .iov_len = got};
  session_reply(s, unique, 0, &v, got ? 1 : 0);
  return 1;
}

int fileread_serve(session_t *s, uint64_t unique, uint64_t nodeid, uint64_t offset, uint32_t size) {
  if (!s->read_out && !(s->read_out = malloc(BUF_SIZE))) return 0;
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = session_open_find(s, nodeid);
  if (e && e->mem) {
    size_t n = offset < e->mem_len ? e->mem_len - (size_t)offset : 0;
    if (n > size) n = size;
    if (n) memcpy(s->read_out, e->mem + offset, n);
    pthread_mutex_unlock(&s->open_lock);
    struct iovec v = {.iov_base = s->read_out, .iov_len = n};
    session_reply(s, unique, 0, &v, n ? 1 : 0);
    __atomic_add_fetch(&s->native_read_reqs, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s->native_read_bytes, n, __ATOMIC_RELAXED);
    return 1;
  }
  if (e && e->read_fd < 0 && e->n_ext) {
    size_t got = 0;
    int fresh = 0;
    int ok = ext_read(e, offset, size, s->read_out, &got, &fresh);
    // JS hears when a reader served here reads a chunk it has not heard of (it keeps fetching ahead of the reader), and
    // when it reaches the end of the file (JS builds the whole-file copy then).
    int tell = ok && got && (fresh || offset + got >= e->ext_size);
    pthread_mutex_unlock(&s->open_lock);
    if (!ok) return 0;
    struct iovec v = {.iov_base = s->read_out, .iov_len = got};
    session_reply(s, unique, 0, &v, got ? 1 : 0);
    __atomic_add_fetch(&s->native_read_reqs, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s->native_read_bytes, got, __ATOMIC_RELAXED);
    if (tell) {
      request_t *r = calloc(1, sizeof(*r));
      if (r) {
        r->opcode = EV_READ_NATIVE;
        r->nodeid = (double)nodeid;
        r->unique = (double)offset;
        uint32_t len = (uint32_t)got;
        if ((r->body = malloc(sizeof(len)))) { memcpy(r->body, &len, sizeof(len)); r->len = sizeof(len); }
        session_post(s, r);
      }
    }
    return 1;
  }
  if (!e || e->read_fd < 0) { pthread_mutex_unlock(&s->open_lock); return 0; }
  size_t want = 0;
  if (offset < e->read_size) {
    uint64_t left = e->read_size - offset;
    want = size < left ? size : (size_t)left;
    if (want > BUF_SIZE) want = BUF_SIZE;
  }
  // One thread answers every READ, one after another: a pread that waits on the disk stalls the mount. A reader going
  // on sequentially gets the copy's next pages asked of the disk ahead of it (asynchronously), so its preads find them
  // in the page cache, as the kernel's own readahead does for a local file.
  if (want && offset + want + READ_AHEAD / 2 > e->read_ahead_to && offset <= e->read_ahead_to + READ_AHEAD &&
      e->read_ahead_to < e->read_size) {
    uint64_t from = e->read_ahead_to > offset ? e->read_ahead_to : offset;
    posix_fadvise(e->read_fd, (off_t)from, READ_AHEAD, POSIX_FADV_WILLNEED);
    e->read_ahead_to = from + READ_AHEAD;
  }
  // The lock keeps the descriptor open while it is read (a FORGET on the JS thread may drop the entry).
  size_t got = 0;
  int err = 0;
  struct stat st;
  if (fstat(e->read_fd, &st) < 0 || (uint64_t)st.st_ino != e->read_ino || (uint64_t)st.st_size != e->read_size ||
      ns_of(st.st_mtim) != e->read_mtime_ns || ns_of(st.st_ctim) != e->read_ctime_ns)
    err = ESTALE;
  while (!err && got < want) {
    ssize_t n = pread(e->read_fd, s->read_out + got, want - got, (off_t)(offset + got));
    if (n < 0) { if (errno == EINTR) continue; err = EIO; break; }
    if (n == 0) { err = EIO; break; }  // shorter than when it was verified: changed since, never served short
    got += (size_t)n;
  }
  if (err) fileread_detach(e);  // from now on JS serves the node
  pthread_mutex_unlock(&s->open_lock);
  if (err) return 0;  // JS answers it from verified chunks
  struct iovec v = {.iov_base = s->read_out, .iov_len = got};
  session_reply(s, unique, 0, &v, got ? 1 : 0);
  __atomic_add_fetch(&s->native_read_reqs, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&s->native_read_bytes, got, __ATOMIC_RELAXED);
  return 1;
}
