// The protocol session: one reader thread per mount takes the kernel's requests from /dev/fuse and answers the
// bookkeeping ones itself (INIT, OPEN, OPENDIR, RELEASE, FLUSH, writes with EROFS, reads past a listing's end; READDIR
// and LOOKUP from the listings it keeps, listings-cache.c; reads, fileread.c; xattrs, xattrless.c); the rest are delivered, raw, to the session's owner (addon.c: the JS thread), which answers with
// session_reply, a writev of its buffers (zero copy). Also the per-node open table (FUSE passthrough backing files).
#include "thinfuse.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

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

open_entry_t *session_open_find(session_t *s, uint64_t nodeid) {
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
  fileread_detach(e);
  free(e);
}

static void reply_open(int fd, uint64_t unique, int32_t backing_id) {
  struct { uint64_t fh; uint32_t open_flags; int32_t backing_id; } o = {0, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, 0};
  if (backing_id > 0) { o.open_flags = OPEN_PASSTHROUGH | FOPEN_NOFLUSH; o.backing_id = backing_id; }
  reply_buf(fd, unique, &o, sizeof(o));
}

// The listing of this immutable directory ends at off: a read from there on is answered here.
void session_set_eof(session_t *s, uint64_t nodeid, uint64_t off) {
  if (!s->eofs || nodeid < s->uncached_below) return;
  pthread_mutex_lock(&s->eof_lock);
  dir_eof_t *e = &s->eofs[nodeid % EOF_SLOTS];
  e->nodeid = nodeid;
  e->eof = off;
  pthread_mutex_unlock(&s->eof_lock);
}

static void post(session_t *s, request_t *r) { s->deliver(s, r); }
void session_post(session_t *s, request_t *r) { post(s, r); }
void session_reply_open(session_t *s, uint64_t unique, int32_t backing_id) { reply_open(s->fd, unique, backing_id); }
int32_t session_backing_open(session_t *s, int fd) {
  struct backing_map m = {fd, 0, 0};
  int id = ioctl(s->fd, IOC_BACKING_OPEN, &m);
  return id > 0 ? id : -errno;
}
int session_reply_buf(session_t *s, uint64_t unique, const void *p, size_t n) { return reply_buf(s->fd, unique, p, n); }

// Requests the reader thread answers itself: nothing in them needs the catalog or the store.
static int handle_locally(session_t *s, const struct fuse_in_header *ih, const char *body) {
  int fd = s->fd;
  switch (ih->opcode) {
    case FUSE_INIT:
      handle_init(s, ih, body);
      return 0;  // JS also hears of it (negotiated limits, mount ready)
    case FUSE_OPEN:
      if ((((const struct fuse_open_in *)body)->flags & O_ACCMODE) != O_RDONLY) { reply_err(fd, ih->unique, EROFS); return 1; }
      if ((s->passthrough || s->native_reads) && ih->nodeid >= s->uncached_below) {
        int done = 0;
        pthread_mutex_lock(&s->open_lock);
        open_entry_t *e = session_open_find(s, ih->nodeid);
        if (e) {
          e->opens++;
          e->forgotten = 0;
          reply_open(fd, ih->unique, e->backing_id);
          done = 1;
        }
        pthread_mutex_unlock(&s->open_lock);
        if (!done && s->native_reads) done = fileread_open(s, ih->unique, ih->nodeid);
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
      if (ih->nodeid >= s->uncached_below) o.open_flags = FOPEN_KEEP_CACHE | (ih->opcode == FUSE_OPENDIR ? FOPEN_CACHE_DIR : 0);
      o.open_flags |= FOPEN_NOFLUSH;
      reply_buf(fd, ih->unique, &o, sizeof(o));
      return 1;
    }
    case FUSE_RELEASE:
      if (s->passthrough || s->native_reads) {
        pthread_mutex_lock(&s->open_lock);
        open_entry_t *e = session_open_find(s, ih->nodeid);
        if (e && --e->opens <= 0 && ((e->backing_id == 0 && e->read_fd < 0 && !e->mem) || e->forgotten || e->let_go)) open_drop(s, e);
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
      if (ih->nodeid >= s->uncached_below && s->eofs) {
        pthread_mutex_lock(&s->eof_lock);
        dir_eof_t *e = &s->eofs[ih->nodeid % EOF_SLOTS];
        at_end = e->nodeid == ih->nodeid && in->offset >= e->eof;
        pthread_mutex_unlock(&s->eof_lock);
      }
      if (!at_end) return listings_readdir(s, ih, in);
      reply_buf(fd, ih->unique, NULL, 0);
      return 1;
    }
    case FUSE_READ: {
      if (!s->native_reads) return 0;
      const struct fuse_read_in *in = (const struct fuse_read_in *)body;
      return fileread_serve(s, ih->unique, ih->nodeid, in->offset, in->size);
    }
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
      return session_noxattr_answer(s, ih, body);
    case FUSE_LOOKUP:
      return listings_lookup(s, ih, body, ih->len - sizeof(*ih));
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_GETATTR:
    case FUSE_READLINK:
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
  s->finished(s);
  return NULL;
}


session_t *session_new(void) {
  session_t *s = calloc(1, sizeof(*s));
  if (!s) return NULL;
  s->fd = -1;
  s->eofs = calloc(EOF_SLOTS, sizeof(dir_eof_t));
  s->opens = calloc(OPEN_BUCKETS, sizeof(open_entry_t *));
  s->fahead = calloc(FAHEAD_BUCKETS, sizeof(file_ahead_t *));
  pthread_mutex_init(&s->fahead_lock, NULL);
  pthread_mutex_init(&s->open_lock, NULL);
  pthread_mutex_init(&s->eof_lock, NULL);
  noxattr_init(s);
  listings_init(s, LISTINGS_BUDGET);
  return s;
}

// Only for a session whose thread never started (a failed mount): a running one lives as long as the process.
void session_free(session_t *s) {
  free(s->eofs);
  free(s->opens);
  free(s->read_out);
  free(s->fahead);
  noxattr_free(s);
  listings_free(s);
  free(s);
}

int session_start(session_t *s) {
  int r = pthread_create(&s->thread, NULL, reader, s);
  if (r != 0) return -r;
  pthread_detach(s->thread);
  return 0;
}

// An answer from the owner: an error, or the reply's buffers. 0 or -errno of the write.
int session_reply(session_t *s, uint64_t unique, int error, const struct iovec *data, int ndata) {
  return error ? reply_err(s->fd, unique, error) : write_reply(s->fd, unique, data, ndata);
}

// Puts bytes of a node's file into the kernel's page cache (FUSE_NOTIFY_STORE): pages the kernel then never asks
// for. Whole pages only become valid (or up to the file's end). Blocks while a READ holds one of those pages locked,
// so it is called off the JS thread (which may be the one to answer that READ). 0, or -errno (-ENOENT: the kernel
// does not know the node, e.g. forgotten).
int session_notify_store(session_t *s, uint64_t nodeid, uint64_t offset, const void *p, uint32_t n) {
  struct fuse_notify_store_out st = {.nodeid = nodeid, .offset = offset, .size = n, .padding = 0};
  struct fuse_out_header oh = {.len = (uint32_t)(sizeof(oh) + sizeof(st) + n), .error = FUSE_NOTIFY_STORE, .unique = 0};
  struct iovec iov[3] = {{&oh, sizeof(oh)}, {&st, sizeof(st)}, {(void *)p, n}};
  ssize_t w;
  do w = writev(s->fd, iov, 3);
  while (w < 0 && errno == EINTR);
  return w < 0 ? -errno : 0;
}

// Answers the first OPEN of a node. backing_fd >= 0: pass reads through to that file (the kernel takes its own
// reference; the caller closes it) or, without passthrough, answer its READs on this side from the file (fileread.c;
// a descriptor of our own is kept); -1: JS serves reads. Another OPEN of the node may have been answered meanwhile:
// its decision stands. Returns the backing id (passthrough) or 1 (read here), 0 (JS serves reads) or -errno of the
// refusal to take the file (then JS serves reads).
int32_t session_open_reply(session_t *s, uint64_t unique, uint64_t nodeid, int32_t backing_fd) {
  int32_t result = 0;
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = session_open_find(s, nodeid);
  if (!e) {
    e = calloc(1, sizeof(*e));
    if (e) {
      e->nodeid = nodeid;
      e->read_fd = -1;
      if (backing_fd >= 0 && !s->passthrough) {
        // No passthrough: the copy is read here instead (1), or by JS when it cannot be taken (-errno).
        if (s->native_reads) result = fileread_attach(e, backing_fd);
      } else if (backing_fd >= 0) {
        int32_t id = session_backing_open(s, backing_fd);
        e->backing_id = id > 0 ? id : 0;
        result = id;
      }
      e->next = s->opens[e->nodeid % OPEN_BUCKETS];
      s->opens[e->nodeid % OPEN_BUCKETS] = e;
    }
  } else {
    result = s->passthrough ? e->backing_id : e->read_fd >= 0;
  }
  if (e) {
    e->opens++;
    e->forgotten = 0;
    reply_open(s->fd, unique, e->backing_id);
  } else {
    reply_err(s->fd, unique, ENOMEM);
  }
  pthread_mutex_unlock(&s->open_lock);
  return result;
}

// The kernel let go of the node (or JS of its file): its backing file or copy goes once its last open is released.
void session_forget_node(session_t *s, uint64_t nodeid) {
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = session_open_find(s, nodeid);
  if (e) {
    if (e->opens <= 0) open_drop(s, e);
    else e->forgotten = 1;
  }
  pthread_mutex_unlock(&s->open_lock);
}

// JS let go of the node's file (evicted from the cache): it goes at once, or at the last release of the opens now
// holding it. An OPEN meanwhile shares the entry (one per node) but does not keep it: a forget racing a new lookup
// clears forgotten at the next OPEN, and with the eviction marked the same way the entry (and the evicted file, a
// backing file or a descriptor of ours) outlived every release as long as the kernel kept the node.
void session_let_go_node(session_t *s, uint64_t nodeid) {
  pthread_mutex_lock(&s->open_lock);
  open_entry_t *e = session_open_find(s, nodeid);
  if (e) {
    if (e->opens <= 0) open_drop(s, e);
    else e->let_go = 1;
  }
  pthread_mutex_unlock(&s->open_lock);
}
