// thinfuse: thinfs's own FUSE transport, the kernel's low-level protocol spoken over /dev/fuse.
//
// Why not libfuse 2 through fuse-native: its path-based API carries times in milliseconds, names as UTF-8 strings
// and inode numbers in 32 bits, cannot negotiate 1 MiB reads, readdirplus or kernel directory caching, and costs a
// JS round trip for every open/release. Here a reader thread answers the bookkeeping requests itself (INIT, OPEN,
// OPENDIR, RELEASE, FLUSH, writes with EROFS) and hands only the requests that need the catalog or the store to the
// JS thread, raw, through a thread-safe function; JS answers with reply(), a writev of its buffers (zero copy).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <node_api.h>

#define OUR_MINOR 38
// FUSE passthrough (kernel >= 6.9, protocol 7.40): reads of an open file go straight to a backing file of ours.
// Defined here because the build machine's headers may predate it.
#define OUR_MINOR_PASSTHROUGH 40
#define INIT_EXT (1u << 30)
#define INIT2_PASSTHROUGH (1u << 5)  // FUSE_PASSTHROUGH is bit 37: bit 5 of flags2
#define OPEN_PASSTHROUGH (1u << 7)   // FOPEN_PASSTHROUGH
struct backing_map { int32_t fd; uint32_t flags; uint64_t padding; };
#define IOC_BACKING_OPEN _IOW(229, 1, struct backing_map)
#define IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
// Node ids below this are the mount's synthetic directories (/, layers/, images/, .thinfs/): their listings change
// as layers are published, so the kernel must not cache them. Every other directory is immutable and cached.
#define DYNAMIC_NODEID_LIMIT 16
#define BUF_SIZE ((1u << 20) + 4096u)
// Pseudo opcodes sent to JS for events that are not requests.
#define EV_CLOSED 0
// A handed-over listing was first served by the reader thread: JS hands over that directory's subdirectories next.
#define EV_DIR_LISTED 0xfff0

// Where each immutable directory's listing ends, as JS reported it: the READDIR that asks past the end (every
// listing ends with one) is answered here, without a trip to JS. Direct-mapped: a collision only costs that trip.
#define EOF_SLOTS 65536
typedef struct { uint64_t nodeid; uint64_t eof; } dir_eof_t;

// ---- pre-encoded listings (src/catalog/dirblocks.ts) ----
// A block holds packed records in name order, 50 bytes + the name: u64 ino, u64 size, i64 mtime, u32 mtime ns, u32 mode,
// u32 uid, u32 gid, u32 nlink, u32 rdev, u16 namelen, name. Cookie 2 + p names the record at byte p; "." and ".." are
// cookies 0 and 1.
#define DB_HEADER 50u
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

// One page of a listing from cookie on, into out: "." and ".." first, then whole entries while they fit, as READDIRPLUS
// records (struct fuse_direntplus: node id = st_ino = base + catalog inode, lifetimes ttl, atime = ctime = mtime like
// encodeAttr in kernel.ts) or plain READDIR dirents. A cookie inside a record (a seekdir to a made-up offset) resumes
// at the next one. Returns the bytes written and sets *next to the block position reached; -1 if the block is malformed.
static long dp_page(const uint8_t *blk, size_t blen, uint64_t cookie, uint8_t *out, size_t olen, int plus, uint64_t base,
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
    if (blen - p < DB_HEADER || blen - p - DB_HEADER < ld16(blk + p + 48)) return -1;
    if (p >= want) break;
    p += DB_HEADER + ld16(blk + p + 48);
  }
  while (p < blen) {
    const uint8_t *r = blk + p;
    if (blen - p < DB_HEADER) return -1;
    uint32_t namelen = ld16(r + 48);
    if (blen - p - DB_HEADER < namelen) return -1;
    size_t dlen = align8(DP_DIRENT + namelen), need = (plus ? DP_ENTRY : 0) + dlen;
    if (need > olen - o) break;
    uint64_t ino = ld64(r) + base, size = ld64(r + 8), mtime = ld64(r + 16);
    uint32_t nsec = ld32(r + 24), mode = ld32(r + 28);
    size_t end = p + DB_HEADER + namelen;
    uint8_t *w = out + o;
    if (plus) {
      struct fuse_entry_out e;
      memset(&e, 0, sizeof(e));
      e.nodeid = ino;
      e.entry_valid = e.attr_valid = ttl;
      e.attr.ino = ino;
      e.attr.size = size;
      e.attr.blocks = (size + 511) / 512;
      e.attr.atime = e.attr.mtime = e.attr.ctime = mtime;
      e.attr.atimensec = e.attr.mtimensec = e.attr.ctimensec = nsec;
      e.attr.mode = mode;
      e.attr.uid = ld32(r + 32);
      e.attr.gid = ld32(r + 36);
      e.attr.nlink = ld32(r + 40);
      e.attr.rdev = ld32(r + 44);
      e.attr.blksize = 4096;
      memcpy(w, &e, DP_ENTRY);
      w += DP_ENTRY;
    }
    put_dirent(w, ino, 2 + end, r + DB_HEADER, namelen, (mode >> 12) & 0xf);
    o += need;
    p = end;
  }
  *next = p;
  return (long)o;
}

// Listings handed over by JS before the kernel asks (the subdirectories of a directory just listed: a scan reads them
// next). The reader thread answers READDIR/READDIRPLUS for them itself; one is dropped once served to its end (the
// kernel keeps the listing from then on) or, oldest first, when the byte budget is exceeded.
#define DIRC_BUCKETS 4096
#define DIRC_BUDGET ((size_t)16 << 20)
typedef struct dirc_entry {
  uint64_t nodeid, base;
  uint8_t *blk;
  size_t len;
  struct dirc_entry *chain, *older, *newer;
} dirc_entry_t;

// How a node's file is being opened: through our READ replies (backing_id 0) or passed through to a backing file.
// The kernel forbids mixing the two on one inode, so an entry lives while the node has opens; a passthrough entry
// lives on until the kernel forgets the node (its next opens reuse the backing file without asking JS).
#define OPEN_BUCKETS 65536
typedef struct open_entry {
  uint64_t nodeid;
  int32_t backing_id;
  int32_t opens;
  int forgotten;
  struct open_entry *next;
} open_entry_t;

typedef struct {
  int fd;
  int passthrough_wanted;
  int passthrough;  // negotiated
  int no_opendir;   // the kernel opens directories without asking (FUSE_NO_OPENDIR_SUPPORT, Linux >= 5.1)
  open_entry_t **opens;
  pthread_mutex_t open_lock;
  dir_eof_t *eofs;
  pthread_mutex_t eof_lock;
  dirc_entry_t **dirc;
  dirc_entry_t *dirc_oldest, *dirc_newest;
  size_t dirc_bytes;
  pthread_mutex_t dirc_lock;
  uint8_t *dirc_out;  // the reader thread's reply buffer for listings it answers
  napi_threadsafe_function tsfn;
  pthread_t thread;
  uint32_t max_readahead;
  uint32_t max_pages;
  uint32_t max_background;
  uint32_t ttl;  // entry and attribute lifetime of immutable nodes, seconds
} session_t;

typedef struct {
  uint32_t opcode;
  double unique;
  double nodeid;
  uint32_t uid, gid, pid;
  size_t len;
  char *body;  // malloc'd, handed to a Buffer
  int err;     // for EV_CLOSED: the errno that ended the loop (ENODEV = unmounted)
  double t_ns; // CLOCK_MONOTONIC when read from the kernel (process.hrtime's clock): queueing delay metrics
} request_t;

#define CHECK(call)                                                               \
  do {                                                                            \
    napi_status s_ = (call);                                                      \
    if (s_ != napi_ok) {                                                          \
      napi_throw_error(env, NULL, "thinfuse: N-API call failed: " #call);         \
      return NULL;                                                                \
    }                                                                             \
  } while (0)

static int write_reply(int fd, uint64_t unique, const struct iovec *data, int ndata) {
  struct iovec iov[64];
  struct fuse_out_header oh;
  size_t len = sizeof(oh);
  if (ndata > 63) return -E2BIG;
  iov[0].iov_base = &oh;
  iov[0].iov_len = sizeof(oh);
  for (int i = 0; i < ndata; i++) {
    iov[i + 1] = data[i];
    len += data[i].iov_len;
  }
  oh.len = (uint32_t)len;
  oh.error = 0;
  oh.unique = unique;
  ssize_t w;
  do w = writev(fd, iov, ndata + 1);
  while (w < 0 && errno == EINTR);
  // ENOENT: the request was interrupted and the kernel no longer waits for it; not an error of ours.
  return w < 0 && errno != ENOENT ? -errno : 0;
}

static int reply_err(int fd, uint64_t unique, int error) {
  struct fuse_out_header oh = {.len = sizeof(oh), .error = -error, .unique = unique};
  ssize_t w;
  do w = write(fd, &oh, sizeof(oh));
  while (w < 0 && errno == EINTR);
  return w < 0 && errno != ENOENT ? -errno : 0;
}

static int reply_buf(int fd, uint64_t unique, const void *p, size_t n) {
  struct iovec v = {.iov_base = (void *)p, .iov_len = n};
  return write_reply(fd, unique, &v, 1);
}

static void handle_init(session_t *s, const struct fuse_in_header *ih, const char *body) {
  const struct fuse_init_in *in = (const struct fuse_init_in *)body;
  struct fuse_init_out out;
  memset(&out, 0, sizeof(out));
  out.major = FUSE_KERNEL_VERSION;
  if (in->major != FUSE_KERNEL_VERSION) {
    // A newer major: answer ours and wait for the kernel to retry; an older one cannot be served.
    if (in->major < FUSE_KERNEL_VERSION) { reply_err(s->fd, ih->unique, EPROTO); return; }
    reply_buf(s->fd, ih->unique, &out, 8);
    return;
  }
  int pt = s->passthrough_wanted && (in->flags & INIT_EXT) && (in->flags2 & INIT2_PASSTHROUGH);
  uint32_t ours = pt ? OUR_MINOR_PASSTHROUGH : OUR_MINOR;
  out.minor = in->minor < ours ? in->minor : ours;
  if (out.minor < OUR_MINOR_PASSTHROUGH) pt = 0;
  // READDIRPLUS for every page, not only the first (no READDIRPLUS_AUTO): a listing's attributes are pre-encoded in
  // the catalog, and a scan that got a page without them would send a LOOKUP per name.
  uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
                  FUSE_CACHE_SYMLINKS;
  out.flags = in->flags & want;
  out.max_readahead = in->max_readahead < s->max_readahead ? in->max_readahead : s->max_readahead;
  out.max_background = (uint16_t)s->max_background;
  out.congestion_threshold = (uint16_t)(s->max_background * 3 / 4);
  out.max_write = 128 * 1024;
  out.time_gran = 1;  // nanosecond timestamps
  out.max_pages = (uint16_t)s->max_pages;
  if (pt) {
    // Backing files live on a plain local filesystem (the cache dir): one level of stacking is enough, and it leaves
    // room for an overlayfs on top of the mount (podman, chroot with an upper dir).
    out.flags |= INIT_EXT;
    out.flags2 = INIT2_PASSTHROUGH;
    out.unused[0] = 1;  // max_stack_depth
  }
  s->passthrough = pt;
  s->no_opendir = (in->flags & FUSE_NO_OPENDIR_SUPPORT) != 0;
  size_t n = out.minor < 5 ? 8 : out.minor < 23 ? 24 : sizeof(out);
  reply_buf(s->fd, ih->unique, &out, n);
  s->max_readahead = out.max_readahead;
  if (!(out.flags & FUSE_MAX_PAGES)) s->max_pages = 32;
}

static open_entry_t *open_find(session_t *s, uint64_t nodeid) {
  for (open_entry_t *e = s->opens[nodeid % OPEN_BUCKETS]; e; e = e->next)
    if (e->nodeid == nodeid) return e;
  return NULL;
}

// Unlink and free an entry (lock held); a passthrough entry's backing file is released to the kernel.
static void open_drop(session_t *s, open_entry_t *e) {
  open_entry_t **pp = &s->opens[e->nodeid % OPEN_BUCKETS];
  while (*pp != e) pp = &(*pp)->next;
  *pp = e->next;
  if (e->backing_id > 0) {
    uint32_t id = (uint32_t)e->backing_id;
    ioctl(s->fd, IOC_BACKING_CLOSE, &id);
  }
  free(e);
}

static void reply_open(int fd, uint64_t unique, int32_t backing_id) {
  struct { uint64_t fh; uint32_t open_flags; int32_t backing_id; } o = {0, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, 0};
  if (backing_id > 0) { o.open_flags = OPEN_PASSTHROUGH | FOPEN_NOFLUSH; o.backing_id = backing_id; }
  reply_buf(fd, unique, &o, sizeof(o));
}

// Requests the reader thread answers itself: nothing in them needs the catalog or the store.
static void set_eof(session_t *s, uint64_t nodeid, uint64_t off) {
  if (!s->eofs || nodeid < DYNAMIC_NODEID_LIMIT) return;
  pthread_mutex_lock(&s->eof_lock);
  dir_eof_t *e = &s->eofs[nodeid % EOF_SLOTS];
  e->nodeid = nodeid;
  e->eof = off;
  pthread_mutex_unlock(&s->eof_lock);
}

// Callers hold dirc_lock.
static dirc_entry_t *dirc_find(session_t *s, uint64_t nodeid) {
  dirc_entry_t *e = s->dirc[nodeid % DIRC_BUCKETS];
  while (e && e->nodeid != nodeid) e = e->chain;
  return e;
}

static void dirc_drop(session_t *s, dirc_entry_t *e) {
  dirc_entry_t **pp = &s->dirc[e->nodeid % DIRC_BUCKETS];
  while (*pp != e) pp = &(*pp)->chain;
  *pp = e->chain;
  if (e->older) e->older->newer = e->newer; else s->dirc_oldest = e->newer;
  if (e->newer) e->newer->older = e->older; else s->dirc_newest = e->older;
  s->dirc_bytes -= e->len;
  free(e->blk);
  free(e);
}

static void post(session_t *s, request_t *r);

// READDIR/READDIRPLUS of a handed-over listing: answered here. Returns 1 when answered.
static int dirc_serve(session_t *s, const struct fuse_in_header *ih, const struct fuse_read_in *in) {
  if (!s->dirc || !s->dirc_out) return 0;
  pthread_mutex_lock(&s->dirc_lock);
  dirc_entry_t *e = dirc_find(s, ih->nodeid);
  if (!e) { pthread_mutex_unlock(&s->dirc_lock); return 0; }
  size_t next = 0, olen = in->size < BUF_SIZE ? in->size : BUF_SIZE, blen = e->len;
  long n = dp_page(e->blk, blen, in->offset, s->dirc_out, olen, ih->opcode == FUSE_READDIRPLUS, e->base, s->ttl, ih->nodeid, &next);
  int done = n >= 0 && next >= blen;
  if (n < 0 || done) dirc_drop(s, e);  // malformed: JS answers (and reports) it
  pthread_mutex_unlock(&s->dirc_lock);
  if (n < 0) return 0;
  if (done) set_eof(s, ih->nodeid, 2 + blen);
  reply_buf(s->fd, ih->unique, s->dirc_out, (size_t)n);
  if (in->offset == 0) {
    request_t *r = calloc(1, sizeof(*r));
    if (r) {
      r->opcode = EV_DIR_LISTED;
      r->nodeid = (double)ih->nodeid;
      post(s, r);
    }
  }
  return 1;
}

static int handle_locally(session_t *s, const struct fuse_in_header *ih, const char *body) {
  int fd = s->fd;
  switch (ih->opcode) {
    case FUSE_INIT:
      handle_init(s, ih, body);
      return 0;  // JS also hears of it (negotiated limits, mount ready)
    case FUSE_OPEN:
      if ((((const struct fuse_open_in *)body)->flags & O_ACCMODE) != O_RDONLY) { reply_err(fd, ih->unique, EROFS); return 1; }
      if (s->passthrough && ih->nodeid >= DYNAMIC_NODEID_LIMIT) {
        int done = 0;
        pthread_mutex_lock(&s->open_lock);
        open_entry_t *e = open_find(s, ih->nodeid);
        if (e) {
          e->opens++;
          e->forgotten = 0;
          reply_open(fd, ih->unique, e->backing_id);
          done = 1;
        }
        pthread_mutex_unlock(&s->open_lock);
        return done;  // first open of this node: JS decides (openReply)
      }
      /* fall through */
    case FUSE_OPENDIR: {
      // ENOSYS once and the kernel stops sending OPENDIR and RELEASEDIR: every directory then opens with
      // FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, two round trips fewer per directory read. The synthetic directories,
      // whose listings change, then rely on their mtime: JS reports a fresh one whenever their 1 s attributes are
      // refreshed, and the kernel drops a cached listing whose directory's mtime changed.
      if (ih->opcode == FUSE_OPENDIR && s->no_opendir) { reply_err(fd, ih->unique, ENOSYS); return 1; }
      // Everything served is immutable: keep the page cache across opens, let the kernel cache listings, and
      // skip the FLUSH round trip on close. Synthetic directories (layers/, images/) change and are not cached.
      struct fuse_open_out o = {0};
      if (ih->nodeid >= DYNAMIC_NODEID_LIMIT) o.open_flags = FOPEN_KEEP_CACHE | (ih->opcode == FUSE_OPENDIR ? FOPEN_CACHE_DIR : 0);
      o.open_flags |= FOPEN_NOFLUSH;
      reply_buf(fd, ih->unique, &o, sizeof(o));
      return 1;
    }
    case FUSE_RELEASE:
      if (s->passthrough) {
        pthread_mutex_lock(&s->open_lock);
        open_entry_t *e = open_find(s, ih->nodeid);
        if (e && --e->opens <= 0 && (e->backing_id == 0 || e->forgotten)) open_drop(s, e);
        pthread_mutex_unlock(&s->open_lock);
      }
      reply_err(fd, ih->unique, 0);
      return 1;
    case FUSE_RELEASEDIR:
    case FUSE_FLUSH:
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
    case FUSE_SYNCFS:
      reply_err(fd, ih->unique, 0);
      return 1;
    case FUSE_INTERRUPT:
      return 1;  // the request is still answered when its work is done (a reply the kernel no longer wants gets ENOENT)
    case FUSE_SETATTR:
    case FUSE_SYMLINK:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_LINK:
    case FUSE_WRITE:
    case FUSE_SETXATTR:
    case FUSE_REMOVEXATTR:
    case FUSE_CREATE:
    case FUSE_TMPFILE:
    case FUSE_FALLOCATE:
    case FUSE_COPY_FILE_RANGE:
      reply_err(fd, ih->unique, EROFS);
      return 1;
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      const struct fuse_read_in *in = (const struct fuse_read_in *)body;
      int at_end = 0;
      if (ih->nodeid >= DYNAMIC_NODEID_LIMIT && s->eofs) {
        pthread_mutex_lock(&s->eof_lock);
        dir_eof_t *e = &s->eofs[ih->nodeid % EOF_SLOTS];
        at_end = e->nodeid == ih->nodeid && in->offset >= e->eof;
        pthread_mutex_unlock(&s->eof_lock);
      }
      if (!at_end) return ih->nodeid >= DYNAMIC_NODEID_LIMIT ? dirc_serve(s, ih, in) : 0;
      reply_buf(fd, ih->unique, NULL, 0);
      return 1;
    }
    case FUSE_LOOKUP:
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_GETATTR:
    case FUSE_READLINK:
    case FUSE_READ:
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
    case FUSE_STATFS:
      return 0;
    case FUSE_DESTROY:
      reply_err(fd, ih->unique, 0);
      return 1;
    default:
      // ACCESS (default_permissions decides), locks (kept by the kernel), ioctl, poll, bmap, lseek...
      reply_err(fd, ih->unique, ENOSYS);
      return 1;
  }
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  request_t *r = (request_t *)data;
  (void)context;
  if (env == NULL || js_cb == NULL) {
    free(r->body);
    free(r);
    return;
  }
  napi_value argv[5], undef, buf;
  napi_create_uint32(env, r->opcode, &argv[0]);
  napi_create_double(env, r->unique, &argv[1]);
  napi_create_double(env, r->nodeid, &argv[2]);
  if (r->opcode == EV_CLOSED) {
    napi_create_int32(env, r->err, &argv[3]);
  } else if (r->len > 0) {
    void *dst;
    napi_create_buffer_copy(env, r->len, r->body, &dst, &buf);
    argv[3] = buf;
  } else {
    napi_get_null(env, &argv[3]);
  }
  napi_create_double(env, r->t_ns, &argv[4]);
  free(r->body);
  free(r);
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, js_cb, 5, argv, NULL);
}

static void post(session_t *s, request_t *r) {
  if (napi_call_threadsafe_function(s->tsfn, r, napi_tsfn_blocking) != napi_ok) {
    free(r->body);
    free(r);
  }
}

static void *reader(void *arg) {
  session_t *s = (session_t *)arg;
  char *buf = malloc(BUF_SIZE);
  int err = 0;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);  // signals belong to the JS thread
  while (buf) {
    ssize_t n = read(s->fd, buf, BUF_SIZE);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;  // ENOENT: request interrupted
      err = errno;  // ENODEV: unmounted
      break;
    }
    if ((size_t)n < sizeof(struct fuse_in_header)) { err = EIO; break; }
    const struct fuse_in_header *ih = (const struct fuse_in_header *)buf;
    const char *body = buf + sizeof(*ih);
    size_t blen = (size_t)n - sizeof(*ih);
    if (handle_locally(s, ih, body)) continue;
    request_t *r = malloc(sizeof(*r));
    if (!r) { reply_err(s->fd, ih->unique, ENOMEM); continue; }
    r->opcode = ih->opcode;
    r->unique = (double)ih->unique;
    r->nodeid = (double)ih->nodeid;
    r->uid = ih->uid;
    r->gid = ih->gid;
    r->pid = ih->pid;
    r->err = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    r->t_ns = (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
    if (ih->opcode == FUSE_INIT) {
      // Tell JS what was negotiated: max_readahead, max_pages, and the kernel's protocol minor.
      const struct fuse_init_in *ii = (const struct fuse_init_in *)body;
      uint32_t info[6] = {s->max_readahead, s->max_pages, ii->minor, ii->flags, ii->flags2, (uint32_t)s->passthrough};
      blen = sizeof(info);
      body = (const char *)info;
      r->body = malloc(blen);
      if (r->body) memcpy(r->body, body, blen);
    } else {
      r->body = blen ? malloc(blen) : NULL;
      if (blen && r->body) memcpy(r->body, body, blen);
    }
    r->len = r->body ? blen : 0;
    post(s, r);
  }
  free(buf);
  request_t *r = calloc(1, sizeof(*r));
  if (r) {
    r->opcode = EV_CLOSED;
    r->err = err;
    post(s, r);
  }
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  return NULL;
}

// Receives the /dev/fuse descriptor fusermount3 opened for us (unprivileged mounts).
static int receive_fd(int sock) {
  char ccmsg[CMSG_SPACE(sizeof(int))];
  char c;
  struct iovec iov = {.iov_base = &c, .iov_len = 1};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ccmsg;
  msg.msg_controllen = sizeof(ccmsg);
  ssize_t rv;
  do rv = recvmsg(sock, &msg, 0);
  while (rv < 0 && errno == EINTR);
  if (rv <= 0) return -1;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  if (!cm || cm->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
  return fd;
}

extern char **environ;

static int mount_fusermount(const char *mnt, const char *opts, char *why, size_t whylen) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { snprintf(why, whylen, "socketpair: %s", strerror(errno)); return -1; }
  // The child's environment is built before fork: only async-signal-safe calls may follow it in a threaded process.
  char commfd[40];
  snprintf(commfd, sizeof(commfd), "_FUSE_COMMFD=%d", sv[1]);
  size_t n = 0;
  while (environ[n]) n++;
  char **envp = calloc(n + 2, sizeof(char *));
  if (!envp) { snprintf(why, whylen, "out of memory"); close(sv[0]); close(sv[1]); return -1; }
  for (size_t i = 0; i < n; i++) envp[i] = environ[i];
  envp[n] = commfd;
  char *const argv3[] = {"fusermount3", "-o", (char *)opts, "--", (char *)mnt, NULL};
  char *const argv2[] = {"fusermount", "-o", (char *)opts, "--", (char *)mnt, NULL};
  pid_t pid = fork();
  if (pid < 0) { snprintf(why, whylen, "fork: %s", strerror(errno)); free(envp); close(sv[0]); close(sv[1]); return -1; }
  if (pid == 0) {
    close(sv[0]);
    fcntl(sv[1], F_SETFD, 0);
    execvpe("fusermount3", argv3, envp);
    execvpe("fusermount", argv2, envp);
    _exit(127);
  }
  free(envp);
  close(sv[1]);
  int fd = receive_fd(sv[0]);
  close(sv[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (fd < 0) snprintf(why, whylen, "fusermount3 failed (exit %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return fd;
}

// mount(mountpoint, fsname, options, limits{maxReadahead,maxPages,maxBackground,passthrough,ttl}, handler). options is a
// comma list: ro, suid/nosuid and dev/nodev become MS_* flags (nosuid,nodev unless asked otherwise), the rest is data.
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) { napi_throw_type_error(env, NULL, "mount(mountpoint, options, mountOpts, limits, handler)"); return NULL; }
  char mnt[4096], fsname[256], opts[1024];
  size_t l;
  CHECK(napi_get_value_string_utf8(env, argv[0], mnt, sizeof(mnt), &l));
  CHECK(napi_get_value_string_utf8(env, argv[1], fsname, sizeof(fsname), &l));
  CHECK(napi_get_value_string_utf8(env, argv[2], opts, sizeof(opts), &l));
  uint32_t lim[5] = {1 << 20, 256, 64, 0, 1};
  const char *names[5] = {"maxReadahead", "maxPages", "maxBackground", "passthrough", "ttl"};
  for (int i = 0; i < 5; i++) {
    napi_value v;
    bool has = false;
    CHECK(napi_has_named_property(env, argv[3], names[i], &has));
    if (has) {
      CHECK(napi_get_named_property(env, argv[3], names[i], &v));
      CHECK(napi_get_value_uint32(env, v, &lim[i]));
    }
  }
  session_t *s = calloc(1, sizeof(*s));
  if (!s) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  s->eofs = calloc(EOF_SLOTS, sizeof(dir_eof_t));
  s->opens = calloc(OPEN_BUCKETS, sizeof(open_entry_t *));
  s->dirc = calloc(DIRC_BUCKETS, sizeof(dirc_entry_t *));
  s->dirc_out = malloc(BUF_SIZE);
  pthread_mutex_init(&s->open_lock, NULL);
  pthread_mutex_init(&s->eof_lock, NULL);
  pthread_mutex_init(&s->dirc_lock, NULL);
  s->max_readahead = lim[0];
  s->passthrough_wanted = lim[3] != 0 && geteuid() == 0;  // opening backing files needs CAP_SYS_ADMIN
  s->max_pages = lim[1] < 1 ? 1 : lim[1] > 256 ? 256 : lim[1];
  s->max_background = lim[2] < 1 ? 1 : lim[2] > 1024 ? 1024 : lim[2];
  s->ttl = lim[4];

  char why[512] = "";
  int fd = -1;
  int rdonly = 0, suid = 0, dev = 0;
  char data[1536], extra[1024] = "";
  {
    // JS passes a comma list: the flags we turn into MS_* bits, the rest goes to the kernel as data.
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", opts);
    for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      if (!strcmp(t, "ro")) rdonly = 1;
      else if (!strcmp(t, "suid")) suid = 1;
      else if (!strcmp(t, "nosuid")) suid = 0;
      else if (!strcmp(t, "dev")) dev = 1;
      else if (!strcmp(t, "nodev")) dev = 0;
      else if (*t) {
        if (*extra) strncat(extra, ",", sizeof(extra) - strlen(extra) - 1);
        strncat(extra, t, sizeof(extra) - strlen(extra) - 1);
      }
    }
  }
  if (geteuid() == 0) {
    fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      snprintf(why, sizeof(why), "open /dev/fuse: %s", strerror(errno));
    } else {
      struct stat st;
      if (stat(mnt, &st) < 0) st.st_mode = S_IFDIR;
      snprintf(data, sizeof(data), "fd=%d,rootmode=%o,user_id=%u,group_id=%u%s%s", fd, st.st_mode & S_IFMT, getuid(), getgid(),
               *extra ? "," : "", extra);
      unsigned long flags = MS_NOATIME | (rdonly ? MS_RDONLY : 0) | (suid ? 0 : MS_NOSUID) | (dev ? 0 : MS_NODEV);
      char type[300];
      snprintf(type, sizeof(type), "fuse.%s", fsname);
      if (mount(fsname, mnt, type, flags, data) < 0) {
        snprintf(why, sizeof(why), "mount(2): %s", strerror(errno));
        close(fd);
        fd = -1;
      }
    }
  } else {
    char fo[1536];
    // fusermount3 forces nosuid,nodev on users other than root anyway; they are passed so the request says what it wants.
    snprintf(fo, sizeof(fo), "%s%s,%s,fsname=%s,subtype=%s%s%s", rdonly ? "ro," : "", suid ? "suid" : "nosuid", dev ? "dev" : "nodev",
             fsname, fsname, *extra ? "," : "", extra);
    fd = mount_fusermount(mnt, fo, why, sizeof(why));
    if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (fd < 0) {
    free(s->eofs);
    free(s->opens);
    free(s->dirc);
    free(s->dirc_out);
    free(s);
    napi_throw_error(env, "EMOUNT", why);
    return NULL;
  }
  s->fd = fd;
  napi_value name;
  CHECK(napi_create_string_utf8(env, "thinfuse", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, s, call_js, &s->tsfn));
  if (pthread_create(&s->thread, NULL, reader, s) != 0) {
    napi_throw_error(env, "ETHREAD", "cannot start the FUSE reader thread");
    return NULL;
  }
  pthread_detach(s->thread);
  napi_value ext;
  CHECK(napi_create_external(env, s, NULL, NULL, &ext));
  return ext;
}

// reply(session, unique, errno, buffers?) -> 0 or -errno of the write
static napi_value js_reply(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], ret;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s;
  double unique;
  int32_t error;
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &unique));
  CHECK(napi_get_value_int32(env, argv[2], &error));
  struct iovec iov[63];
  int n = 0;
  if (!error && argc > 3) {
    bool isArr = false, isBuf = false;
    napi_is_array(env, argv[3], &isArr);
    napi_is_buffer(env, argv[3], &isBuf);
    if (isBuf) {
      CHECK(napi_get_buffer_info(env, argv[3], &iov[0].iov_base, &iov[0].iov_len));
      n = 1;
    } else if (isArr) {
      uint32_t len;
      CHECK(napi_get_array_length(env, argv[3], &len));
      if (len > 63) { napi_throw_range_error(env, NULL, "reply: at most 63 buffers"); return NULL; }
      for (uint32_t i = 0; i < len; i++) {
        napi_value el;
        CHECK(napi_get_element(env, argv[3], i, &el));
        CHECK(napi_get_buffer_info(env, el, &iov[n].iov_base, &iov[n].iov_len));
        n++;
      }
    }
  }
  int r = error ? reply_err(s->fd, (uint64_t)unique, error) : write_reply(s->fd, (uint64_t)unique, iov, n);
  CHECK(napi_create_int32(env, r, &ret));
  return ret;
}

// openReply(session, unique, nodeid, fd): answer the first OPEN of a node. fd >= 0: pass reads through to that file
// (the kernel takes its own reference; the caller closes fd); -1: serve reads ourselves. Another OPEN of the node
// may have been answered meanwhile: its decision stands. Returns the backing id, 0 (not passed through) or -errno
// of the kernel's refusal to take the backing file (then the open is served by us).
static napi_value js_open_reply(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], ret;
  session_t *s;
  double unique, nodeid;
  int32_t bfd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &unique));
  CHECK(napi_get_value_double(env, argv[2], &nodeid));
  CHECK(napi_get_value_int32(env, argv[3], &bfd));
  int32_t result = 0;
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = open_find(s, (uint64_t)nodeid);
  if (!e) {
    e = calloc(1, sizeof(*e));
    if (e) {
      e->nodeid = (uint64_t)nodeid;
      if (bfd >= 0) {
        struct backing_map m = {bfd, 0, 0};
        int id = ioctl(s->fd, IOC_BACKING_OPEN, &m);
        e->backing_id = id > 0 ? id : 0;
        result = id > 0 ? id : -errno;
      }
      e->next = s->opens[e->nodeid % OPEN_BUCKETS];
      s->opens[e->nodeid % OPEN_BUCKETS] = e;
    }
  } else {
    result = e->backing_id;
  }
  if (e) {
    e->opens++;
    e->forgotten = 0;
    reply_open(s->fd, (uint64_t)unique, e->backing_id);
  } else {
    reply_err(s->fd, (uint64_t)unique, ENOMEM);
  }
  pthread_mutex_unlock(&s->open_lock);
  CHECK(napi_create_int32(env, result, &ret));
  return ret;
}

// forgetNode(session, nodeid): the kernel let go of the node: its backing file goes once its last open is released.
static napi_value js_forget_node(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  session_t *s;
  double nodeid;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = open_find(s, (uint64_t)nodeid);
  if (e) {
    if (e->opens <= 0) open_drop(s, e);
    else e->forgotten = 1;
  }
  pthread_mutex_unlock(&s->open_lock);
  return NULL;
}

// dirEof(session, nodeid, offset): the listing of this immutable directory ends at offset.
static napi_value js_dir_eof(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  session_t *s;
  double nodeid, off;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_value_double(env, argv[2], &off));
  set_eof(s, (uint64_t)nodeid, (uint64_t)off);
  return NULL;
}

// unmount(mountpoint): lazy detach as root; the reader thread then sees ENODEV once the last user is gone.
static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], ret;
  char mnt[4096];
  size_t l;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_string_utf8(env, argv[0], mnt, sizeof(mnt), &l));
  int r = umount2(mnt, MNT_DETACH) < 0 ? -errno : 0;
  CHECK(napi_create_int32(env, r, &ret));
  return ret;
}

// dirPage(block, cookie, out, plus, base, ttl, self) -> [bytes written, next block position] | undefined (malformed):
// a page of a pre-encoded listing that JS answers itself (see dp_page).
static napi_value js_dir_page(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7], ret, v;
  uint8_t *blk, *out;
  size_t blen, olen, next = 0;
  double cookie, base, ttl, self;
  bool plus;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_buffer_info(env, argv[0], (void **)&blk, &blen));
  CHECK(napi_get_value_double(env, argv[1], &cookie));
  CHECK(napi_get_buffer_info(env, argv[2], (void **)&out, &olen));
  CHECK(napi_get_value_bool(env, argv[3], &plus));
  CHECK(napi_get_value_double(env, argv[4], &base));
  CHECK(napi_get_value_double(env, argv[5], &ttl));
  CHECK(napi_get_value_double(env, argv[6], &self));
  long n = dp_page(blk, blen, cookie > 0 ? (uint64_t)cookie : 0, out, olen, plus, (uint64_t)base, (uint64_t)ttl, (uint64_t)self, &next);
  if (n < 0) return NULL;
  CHECK(napi_create_array_with_length(env, 2, &ret));
  CHECK(napi_create_double(env, (double)n, &v));
  CHECK(napi_set_element(env, ret, 0, v));
  CHECK(napi_create_double(env, (double)next, &v));
  CHECK(napi_set_element(env, ret, 1, v));
  return ret;
}

// dirAhead(session, nodeid, block, base): hand a listing to the reader thread before the kernel asks for it (copied).
static napi_value js_dir_ahead(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  session_t *s;
  uint8_t *blk;
  size_t blen;
  double nodeid, base;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_buffer_info(env, argv[2], (void **)&blk, &blen));
  CHECK(napi_get_value_double(env, argv[3], &base));
  if (!s->dirc || nodeid < DYNAMIC_NODEID_LIMIT || blen > DIRC_BUDGET / 4) return NULL;
  dirc_entry_t *e = calloc(1, sizeof(*e));
  uint8_t *copy = malloc(blen ? blen : 1);
  if (!e || !copy) { free(e); free(copy); return NULL; }
  memcpy(copy, blk, blen);
  e->nodeid = (uint64_t)nodeid;
  e->base = (uint64_t)base;
  e->blk = copy;
  e->len = blen;
  pthread_mutex_lock(&s->dirc_lock);
  if (dirc_find(s, e->nodeid)) {
    pthread_mutex_unlock(&s->dirc_lock);
    free(copy);
    free(e);
    return NULL;
  }
  e->chain = s->dirc[e->nodeid % DIRC_BUCKETS];
  s->dirc[e->nodeid % DIRC_BUCKETS] = e;
  e->older = s->dirc_newest;
  if (s->dirc_newest) s->dirc_newest->newer = e; else s->dirc_oldest = e;
  s->dirc_newest = e;
  s->dirc_bytes += blen;
  while (s->dirc_bytes > DIRC_BUDGET && s->dirc_oldest != e) dirc_drop(s, s->dirc_oldest);
  pthread_mutex_unlock(&s->dirc_lock);
  return NULL;
}

void readverify_init(napi_env env, napi_value exports);
void gear_init(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  readverify_init(env, exports);
  gear_init(env, exports);
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"reply", NULL, js_reply, NULL, NULL, NULL, napi_default, NULL},
      {"unmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL},
      {"dirEof", NULL, js_dir_eof, NULL, NULL, NULL, napi_default, NULL},
      {"openReply", NULL, js_open_reply, NULL, NULL, NULL, napi_default, NULL},
      {"forgetNode", NULL, js_forget_node, NULL, NULL, NULL, napi_default, NULL},
      {"dirAhead", NULL, js_dir_ahead, NULL, NULL, NULL, napi_default, NULL},
      {"dirPage", NULL, js_dir_page, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
