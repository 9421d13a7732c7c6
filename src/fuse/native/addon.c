// The N-API glue of thinfuse: the JS functions of the addon (mount, reply, openReply, forgetNode, dirEof, keepListing,
// listingStats, dirPage, readStats, fileAhead, fileBytesAhead, chunkLanded, replyChunks, noXattr*, unmount), argument
// checking, and the delivery of the session's requests to the JS thread through a
// thread-safe function. The only part of the transport that knows Node.
//
// Why not libfuse 2 through fuse-native: its path-based API carries times in milliseconds, names as UTF-8 strings
// and inode numbers in 32 bits, cannot negotiate 1 MiB reads, readdirplus or kernel directory caching, and costs a
// JS round trip for every open/release.
#include "thinfuse.h"
#include "../../util/native/asyncjob.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

#define CHECK(call)                                                               \
  do {                                                                            \
    napi_status s_ = (call);                                                      \
    if (s_ != napi_ok) {                                                          \
      napi_throw_error(env, NULL, "thinfuse: N-API call failed: " #call);         \
      return NULL;                                                                \
    }                                                                             \
  } while (0)

// The arguments of a call whose first is a session: argv[n] and s declared and filled (else it throws and returns).
#define SESSION_ARGS(n)                                                           \
  napi_value argv[n];                                                             \
  session_t *s;                                                                   \
  do {                                                                            \
    size_t argc_ = (n);                                                           \
    CHECK(napi_get_cb_info(env, info, &argc_, argv, NULL, NULL));                 \
    CHECK(napi_get_value_external(env, argv[0], (void **)&s));                    \
  } while (0)

// [v[0], ..., v[n-1]] as a JS array of numbers (the transport's counters).
static napi_value numbers(napi_env env, const double *v, uint32_t n) {
  napi_value ret, x;
  CHECK(napi_create_array_with_length(env, n, &ret));
  for (uint32_t i = 0; i < n; i++) {
    CHECK(napi_create_double(env, v[i], &x));
    CHECK(napi_set_element(env, ret, i, x));
  }
  return ret;
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

// The session's requests go to the JS thread (blocking when its queue is full: backpressure on the kernel).
static void deliver(session_t *s, request_t *r) {
  if (napi_call_threadsafe_function((napi_threadsafe_function)s->owner, r, napi_tsfn_blocking) != napi_ok) {
    free(r->body);
    free(r);
  }
}

static void finished(session_t *s) { napi_release_threadsafe_function((napi_threadsafe_function)s->owner, napi_tsfn_release); }

// mount(mountpoint, fsname, options, limits{maxReadahead,maxPages,maxBackground,passthrough,ttl,uncachedBelow,nativeReads,
// listingBudget}, handler).
// options is a comma list: ro, suid/nosuid and dev/nodev become mount flags (nosuid,nodev unless named), the rest is data.
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) { napi_throw_type_error(env, NULL, "mount(mountpoint, fsname, options, limits, handler)"); return NULL; }
  char mnt[4096], fsname[256], opts[1024];
  size_t l;
  CHECK(napi_get_value_string_utf8(env, argv[0], mnt, sizeof(mnt), &l));
  CHECK(napi_get_value_string_utf8(env, argv[1], fsname, sizeof(fsname), &l));
  CHECK(napi_get_value_string_utf8(env, argv[2], opts, sizeof(opts), &l));
  uint32_t lim[8] = {1 << 20, 256, 64, 0, 1, 0, 0, (uint32_t)LISTINGS_BUDGET};
  const char *names[8] = {"maxReadahead", "maxPages", "maxBackground", "passthrough", "ttl", "uncachedBelow", "nativeReads", "listingBudget"};
  for (int i = 0; i < 8; i++) {
    napi_value v;
    bool has = false;
    CHECK(napi_has_named_property(env, argv[3], names[i], &has));
    if (has) {
      CHECK(napi_get_named_property(env, argv[3], names[i], &v));
      CHECK(napi_get_value_uint32(env, v, &lim[i]));
    }
  }
  session_t *s = session_new();
  if (!s) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  s->max_readahead = lim[0];
  s->passthrough_wanted = lim[3] != 0 && geteuid() == 0;  // opening backing files needs CAP_SYS_ADMIN
  s->max_pages = lim[1] < 1 ? 1 : lim[1] > 256 ? 256 : lim[1];
  s->max_background = lim[2] < 1 ? 1 : lim[2] > 1024 ? 1024 : lim[2];
  s->ttl = lim[4];
  s->uncached_below = lim[5];
  s->native_reads = lim[6] != 0;
  s->listings.budget = lim[7];
  s->deliver = deliver;
  s->finished = finished;

  char why[512] = "";
  int fd = fuse_mount(mnt, fsname, opts, why, sizeof(why));
  if (fd < 0) {
    session_free(s);
    napi_throw_error(env, "EMOUNT", why);
    return NULL;
  }
  s->fd = fd;
  napi_value name;
  napi_threadsafe_function tsfn;
  CHECK(napi_create_string_utf8(env, "thinfuse", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, s, call_js, &tsfn));
  s->owner = tsfn;
  if (session_start(s) != 0) {
    napi_throw_error(env, "ETHREAD", "cannot start the FUSE reader thread");
    return NULL;
  }
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
  int r = session_reply(s, (uint64_t)unique, error, iov, n);
  CHECK(napi_create_int32(env, r, &ret));
  return ret;
}

// openReply(session, unique, nodeid, fd): answer the first OPEN of a node (see session_open_reply).
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
  CHECK(napi_create_int32(env, session_open_reply(s, (uint64_t)unique, (uint64_t)nodeid, bfd), &ret));
  return ret;
}

// (session, nodeid) -> undefined: fn(session, nodeid).
static napi_value node_call(napi_env env, napi_callback_info info, void (*fn)(session_t *, uint64_t)) {
  SESSION_ARGS(2);
  double nodeid;
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  fn(s, (uint64_t)nodeid);
  return NULL;
}

// forgetNode(session, nodeid): the kernel let go of the node: its backing file goes once its last open is released.
static napi_value js_forget_node(napi_env env, napi_callback_info info) { return node_call(env, info, session_forget_node); }
// letGoNode(session, nodeid): the cache evicted the node's file: it goes at the last release of its opens (new opens
// meanwhile do not keep it), and the node's next first open is JS's again.
static napi_value js_let_go_node(napi_env env, napi_callback_info info) { return node_call(env, info, session_let_go_node); }

// dirEof(session, nodeid, offset): the listing of this immutable directory ends at offset.
static napi_value js_dir_eof(napi_env env, napi_callback_info info) {
  SESSION_ARGS(3);
  double nodeid, off;
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_value_double(env, argv[2], &off));
  session_set_eof(s, (uint64_t)nodeid, (uint64_t)off);
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
  int r = fuse_unmount(mnt);
  CHECK(napi_create_int32(env, r, &ret));
  return ret;
}

// dirPage(block, cookie, out, plus, base, ttl, self) -> [bytes written, next block position] | undefined (malformed):
// a page of a pre-encoded listing that JS answers itself (see listing_page in listing.c).
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
  long n = listing_page(blk, blen, cookie > 0 ? (uint64_t)cookie : 0, out, olen, plus, (uint64_t)base, (uint64_t)ttl, (uint64_t)self, &next);
  if (n < 0) return NULL;
  CHECK(napi_create_array_with_length(env, 2, &ret));
  CHECK(napi_create_double(env, (double)n, &v));
  CHECK(napi_set_element(env, ret, 0, v));
  CHECK(napi_create_double(env, (double)next, &v));
  CHECK(napi_set_element(env, ret, 1, v));
  return ret;
}

// keepListing(session, nodeid, block, base, ahead) -> kept: keep a directory's listing in the transport (copied once),
// which answers LOOKUPs in it and, handed ahead (ahead true), the kernel's next READDIR of it (listings-cache.c).
static napi_value js_keep_listing(napi_env env, napi_callback_info info) {
  SESSION_ARGS(5);
  napi_value ret;
  uint8_t *blk;
  size_t blen;
  double nodeid, base;
  bool ahead;
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_buffer_info(env, argv[2], (void **)&blk, &blen));
  CHECK(napi_get_value_double(env, argv[3], &base));
  CHECK(napi_get_value_bool(env, argv[4], &ahead));
  CHECK(napi_get_boolean(env, session_listing_keep(s, (uint64_t)nodeid, blk, blen, (uint64_t)base, ahead) != 0, &ret));
  return ret;
}

// fileAhead(session, nodeid, chunkPath, size, sha256: Buffer(32)): a one-chunk file the kernel may open next (see
// fileread.c): its first open and its reads are then answered by the reader thread.
static napi_value js_file_ahead(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  session_t *s;
  double nodeid, size;
  char path[4096];
  size_t l, shalen = 0;
  void *sha;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_value_string_utf8(env, argv[2], path, sizeof(path), &l));
  CHECK(napi_get_value_double(env, argv[3], &size));
  CHECK(napi_get_buffer_info(env, argv[4], &sha, &shalen));
  if (shalen != 32 || size < 0 || l >= sizeof(path) - 1) { napi_throw_range_error(env, NULL, "fileAhead: bad size, path or hash"); return NULL; }
  fileread_ahead(s, (uint64_t)nodeid, path, (uint64_t)size, sha);
  return NULL;
}

// fileBytesAhead(session, nodeid, bytes: Buffer): a tiny file's bytes (inline in its catalog), answered like fileAhead.
static napi_value js_file_bytes_ahead(napi_env env, napi_callback_info info) {
  size_t argc = 3, len = 0;
  napi_value argv[3];
  session_t *s;
  double nodeid;
  void *data;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], (void **)&s));
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_buffer_info(env, argv[2], &data, &len));
  fileread_ahead_bytes(s, (uint64_t)nodeid, data, len);
  return NULL;
}

// chunkLanded(session, nodeid, nodeSize, offset, length, path, identity: Buffer(32)) -> bool: a chunk of an open node
// is in a verified cache file (see fileread_chunk); READs it covers are answered by the reader thread from then on.
static napi_value js_chunk_landed(napi_env env, napi_callback_info info) {
  size_t l, idlen = 0;
  napi_value ret;
  double nodeid, nsize, off, len;
  char path[4096];
  void *id;
  SESSION_ARGS(7);
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_value_double(env, argv[2], &nsize));
  CHECK(napi_get_value_double(env, argv[3], &off));
  CHECK(napi_get_value_double(env, argv[4], &len));
  CHECK(napi_get_value_string_utf8(env, argv[5], path, sizeof(path), &l));
  CHECK(napi_get_buffer_info(env, argv[6], &id, &idlen));
  if (idlen != sizeof(file_id_t) || nsize < 0 || off < 0 || len <= 0 || len > 0xffffffffu || l >= sizeof(path) - 1) {
    napi_throw_range_error(env, NULL, "chunkLanded: bad range, path or identity");
    return NULL;
  }
  file_id_t fid;
  memcpy(&fid, id, sizeof(fid));
  int r = fileread_chunk(s, (uint64_t)nodeid, (uint64_t)nsize, (uint64_t)off, (uint32_t)len, path, &fid);
  CHECK(napi_get_boolean(env, r == 1, &ret));
  return ret;
}

typedef struct {
  async_job_t job;
  session_t *s;
  uint64_t unique, nodeid, offset;
  uint32_t size;
  int result;
} rc_job_t;

// Each threadpool thread's reply buffer, made on its first such job and kept (the pool's threads live as long as the process).
static __thread uint8_t *rc_buf;

static void rc_execute(napi_env env, void *arg) {
  rc_job_t *j = (rc_job_t *)arg;
  (void)env;
  if (!rc_buf) rc_buf = malloc(BUF_SIZE);
  j->result = rc_buf ? fileread_reply_chunks(j->s, j->unique, j->nodeid, j->offset, j->size, rc_buf) : 0;
}

static void rc_complete(napi_env env, napi_status status, void *arg) {
  rc_job_t *j = (rc_job_t *)arg;
  async_job_settle_int(env, &j->job, status == napi_ok ? j->result : 0);
  free(j);
}

// replyChunks(session, unique, nodeid, offset, size) -> Promise<1 (answered) | 0 (not: JS answers it)>: a READ JS holds,
// answered on the threadpool from the node's landed chunks (fileread_reply_chunks).
static napi_value js_reply_chunks(napi_env env, napi_callback_info info) {
  napi_value promise;
  double unique, nodeid, off, size;
  SESSION_ARGS(5);
  CHECK(napi_get_value_double(env, argv[1], &unique));
  CHECK(napi_get_value_double(env, argv[2], &nodeid));
  CHECK(napi_get_value_double(env, argv[3], &off));
  CHECK(napi_get_value_double(env, argv[4], &size));
  rc_job_t *j = calloc(1, sizeof(*j));
  if (!j) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  j->s = s;
  j->unique = (uint64_t)unique;
  j->nodeid = (uint64_t)nodeid;
  j->offset = (uint64_t)off;
  j->size = size > BUF_SIZE ? BUF_SIZE + 1 : (uint32_t)size;  // too big: answered by JS (fileread_reply_chunks says 0)
  if (!(promise = async_job_start(env, &j->job, "thinfs.replyChunks", NULL, rc_execute, rc_complete))) free(j);
  return promise;
}

typedef struct {
  async_job_t job;
  session_t *s;
  uint64_t nodeid, offset;
  const uint8_t *p;
  uint32_t n;
  int result;
} ns_job_t;

static void ns_execute(napi_env env, void *arg) {
  ns_job_t *j = (ns_job_t *)arg;
  (void)env;
  j->result = session_notify_store(j->s, j->nodeid, j->offset, j->p, j->n);
}

static void ns_complete(napi_env env, napi_status status, void *arg) {
  ns_job_t *j = (ns_job_t *)arg;
  async_job_settle_int(env, &j->job, status == napi_ok ? j->result : -EIO);
  free(j);
}

// notifyStore(session, nodeid, offset, buffer) -> Promise<0 | -errno>: the bytes put in the kernel's page cache of the
// node at offset (session_notify_store), on the threadpool: the write waits for pages a READ holds, which JS answers.
static napi_value js_notify_store(napi_env env, napi_callback_info info) {
  napi_value promise;
  double nodeid, off;
  void *p;
  size_t n;
  SESSION_ARGS(4);
  CHECK(napi_get_value_double(env, argv[1], &nodeid));
  CHECK(napi_get_value_double(env, argv[2], &off));
  CHECK(napi_get_buffer_info(env, argv[3], &p, &n));
  if (n > (1u << 20)) { napi_throw_range_error(env, NULL, "notifyStore: at most 1 MiB at a time"); return NULL; }
  ns_job_t *j = calloc(1, sizeof(*j));
  if (!j) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  j->s = s;
  j->nodeid = (uint64_t)nodeid;
  j->offset = (uint64_t)off;
  j->p = p;
  j->n = (uint32_t)n;
  if (!(promise = async_job_start(env, &j->job, "thinfs.notifyStore", argv[3], ns_execute, ns_complete))) free(j);
  return promise;
}

// readStats(session) -> [READs answered by the reader thread from handed-over copies, their bytes].
static napi_value js_read_stats(napi_env env, napi_callback_info info) {
  SESSION_ARGS(1);
  double v[2] = {(double)__atomic_load_n(&s->native_read_reqs, __ATOMIC_RELAXED), (double)__atomic_load_n(&s->native_read_bytes, __ATOMIC_RELAXED)};
  return numbers(env, v, 2);
}

// noXattr(session, nodeid): the node has no xattrs: the transport answers its GETXATTR/LISTXATTR (xattrless.c).
static napi_value js_no_xattr(napi_env env, napi_callback_info info) { return node_call(env, info, session_set_noxattr); }

// noXattrListing(session, block, base): the entries of a listing flagged as having no xattrs (see noXattr).
static napi_value js_no_xattr_listing(napi_env env, napi_callback_info info) {
  SESSION_ARGS(3);
  uint8_t *blk;
  size_t blen;
  double base;
  CHECK(napi_get_buffer_info(env, argv[1], (void **)&blk, &blen));
  CHECK(napi_get_value_double(env, argv[2], &base));
  if (base >= 0) session_noxattr_listing(s, blk, blen, (uint64_t)base);
  return NULL;
}

// xattrsAnswered(session) -> GETXATTR/LISTXATTR requests the transport answered itself.
static napi_value js_xattrs_answered(napi_env env, napi_callback_info info) {
  SESSION_ARGS(1);
  napi_value ret;
  CHECK(napi_create_double(env, (double)__atomic_load_n(&s->noxattr_answered, __ATOMIC_RELAXED), &ret));
  return ret;
}

// listingStats(session) -> [listings kept, their bytes, dropped for the budget, LOOKUPs answered from them].
static napi_value js_listing_stats(napi_env env, napi_callback_info info) {
  SESSION_ARGS(1);
  double st[4];
  listings_stats(s, st);
  return numbers(env, st, 4);
}

// The transport's functions, registered by the addon's entry point (src/cli/native/module.c).
void thinfuse_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"reply", NULL, js_reply, NULL, NULL, NULL, napi_default, NULL},
      {"unmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL},
      {"dirEof", NULL, js_dir_eof, NULL, NULL, NULL, napi_default, NULL},
      {"openReply", NULL, js_open_reply, NULL, NULL, NULL, napi_default, NULL},
      {"forgetNode", NULL, js_forget_node, NULL, NULL, NULL, napi_default, NULL},
      {"letGoNode", NULL, js_let_go_node, NULL, NULL, NULL, napi_default, NULL},
      {"keepListing", NULL, js_keep_listing, NULL, NULL, NULL, napi_default, NULL},
      {"dirPage", NULL, js_dir_page, NULL, NULL, NULL, napi_default, NULL},
      {"readStats", NULL, js_read_stats, NULL, NULL, NULL, napi_default, NULL},
      {"fileAhead", NULL, js_file_ahead, NULL, NULL, NULL, napi_default, NULL},
      {"chunkLanded", NULL, js_chunk_landed, NULL, NULL, NULL, napi_default, NULL},
      {"replyChunks", NULL, js_reply_chunks, NULL, NULL, NULL, napi_default, NULL},
      {"notifyStore", NULL, js_notify_store, NULL, NULL, NULL, napi_default, NULL},
      {"fileBytesAhead", NULL, js_file_bytes_ahead, NULL, NULL, NULL, napi_default, NULL},
      {"noXattr", NULL, js_no_xattr, NULL, NULL, NULL, napi_default, NULL},
      {"noXattrListing", NULL, js_no_xattr_listing, NULL, NULL, NULL, napi_default, NULL},
      {"xattrsAnswered", NULL, js_xattrs_answered, NULL, NULL, NULL, napi_default, NULL},
      {"listingStats", NULL, js_listing_stats, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
