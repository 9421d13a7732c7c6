// readVerified: read a cached chunk and check its SHA-256 on the libuv threadpool. The warm read path used to hash
// on the JS thread, which also answers every FUSE request: at ~1.6 GB/s that was a third of each warm 1 MiB read.
// openVerified: the same checks for a file about to be handed to the kernel (FUSE passthrough), returning it open:
// a first open costs one threadpool job instead of a read, an open, a stat and a close.
// writeAtomic: a cache file written under a temporary name, then renamed into place (its directory made if missing), in
// one threadpool job: a cold read writes every fetched chunk, and six separate trips per chunk were measurable.
// landObject: a chunk fetched from a store on a filesystem into the cache directory in one job (read, decoded and
// verified by the store's decode_object_file, written under a temporary name, renamed into place), returning the
// file's identity instead of its bytes: cold reads are then answered by the transport from that file
// (src/fuse/native/fileread.c), and no chunk buffer goes through JS. identifyVerified: the identity of a cached chunk
// whose bytes hash to its name (taken before they are read: a change while hashing changes it).
// verifyRanges: a whole-file copy (assembled from chunks) checked against its chunk map before the kernel is handed it:
// each chunk's range hashes to the chunk's name and every byte between chunks is zero (a hole). A file is split into a
// few jobs at chunk boundaries so its hashing uses more than one core.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <node_api.h>
#include <openssl/evp.h>
#include "../../util/native/asyncjob.h"
#include "../../util/native/hexdigest.h"
#include "../../util/native/fileid.h"
#include "../../store/native/decode.h"

typedef struct {
  async_job_t job;
  char *path;
  size_t size;
  unsigned char want[32];
  unsigned char *data;
  int result;  // 0 ok, else -errno (-EBADMSG: size or hash mismatch)
  int verify;  // openVerified: check the hash (else the size only)
  int fd;      // openVerified: the open file, handed to JS
} rv_job_t;

static void rv_execute(napi_env env, void *arg) {
  rv_job_t *j = (rv_job_t *)arg;
  (void)env;
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { j->result = -errno; return; }
  struct stat st;
  if (fstat(fd, &st) < 0) { j->result = -errno; close(fd); return; }
  if ((size_t)st.st_size != j->size) { j->result = -EBADMSG; close(fd); return; }
  j->data = malloc(j->size ? j->size : 1);
  if (!j->data) { j->result = -ENOMEM; close(fd); return; }
  size_t got = 0;
  while (got < j->size) {
    ssize_t n = pread(fd, j->data + got, j->size - got, (off_t)got);
    if (n < 0) { if (errno == EINTR) continue; j->result = -errno; break; }
    if (n == 0) { j->result = -EBADMSG; break; }
    got += (size_t)n;
  }
  close(fd);
  if (j->result) return;
  unsigned char md[32];
  unsigned int mdlen = 0;
  if (!EVP_Digest(j->data, j->size, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) { j->result = -EIO; return; }
  if (memcmp(md, j->want, 32) != 0) j->result = -EBADMSG;
}

// Streams size bytes of fd through SHA-256 in a small buffer: 0 when they hash to want, -EBADMSG when they do not
// (or the file is shorter), -errno / -EIO / -ENOMEM otherwise. openVerified and identifyVerified both check this way.
static int hash_matches(int fd, size_t size, const unsigned char want[32]) {
  const size_t bs = 1 << 20;
  unsigned char *buf = malloc(bs);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int r = 0;
  if (!buf || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) r = -ENOMEM;
  size_t got = 0;
  while (!r && got < size) {
    size_t chunk = size - got < bs ? size - got : bs;
    ssize_t n = pread(fd, buf, chunk, (off_t)got);
    if (n < 0) { if (errno == EINTR) continue; r = -errno; break; }
    if (n == 0) { r = -EBADMSG; break; }
    if (!EVP_DigestUpdate(ctx, buf, (size_t)n)) { r = -EIO; break; }
    got += (size_t)n;
  }
  unsigned char md[32];
  unsigned int mdlen = 0;
  if (!r && (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 32)) r = -EIO;
  if (!r && memcmp(md, want, 32) != 0) r = -EBADMSG;
  EVP_MD_CTX_free(ctx);
  free(buf);
  return r;
}

// openVerified: the same checks, streamed through a small buffer, and the file left open: the caller hands the fd to
// the kernel as a passthrough backing file, so the bytes it will read are the ones just verified (and now in the page
// cache), with no window in which another file could take the name.
static void ov_execute(napi_env env, void *arg) {
  rv_job_t *j = (rv_job_t *)arg;
  (void)env;
  j->fd = -1;
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { j->result = -errno; return; }
  struct stat st;
  if (fstat(fd, &st) < 0) { j->result = -errno; close(fd); return; }
  if ((size_t)st.st_size != j->size) { j->result = -EBADMSG; close(fd); return; }
  if (j->verify) j->result = hash_matches(fd, j->size, j->want);
  if (j->result) close(fd);
  else j->fd = fd;
}

typedef struct {
  async_job_t job;
  int fd;
  uint64_t start, end;
  unsigned char *ranges;  // n records of offset u64le, size u64le, sha256[32]: sorted, inside [start, end)
  size_t n;
  int result;             // 0 ok, else -errno (-EBADMSG: a range's hash or a hole's bytes differ; -EINVAL: bad map)
} vr_job_t;

#define VR_REC 48

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static int all_zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) if (p[i]) return 0;
  return 1;
}

static void vr_execute(napi_env env, void *arg) {
  vr_job_t *j = (vr_job_t *)arg;
  (void)env;
  const size_t bs = 1 << 20;
  unsigned char *buf = malloc(bs);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!buf || !ctx) { j->result = -ENOMEM; goto out; }
  uint64_t pos = j->start;
  for (size_t k = 0; k <= j->n && !j->result; k++) {
    // The hole before chunk k (or before the end), then chunk k itself.
    uint64_t cOff = k < j->n ? le64(j->ranges + k * VR_REC) : j->end;
    uint64_t cLen = k < j->n ? le64(j->ranges + k * VR_REC + 8) : 0;
    if (cOff < pos || cOff + cLen > j->end || cOff + cLen < cOff) { j->result = -EINVAL; break; }
    for (int part = 0; part < 2 && !j->result; part++) {
      uint64_t to = part == 0 ? cOff : cOff + cLen;
      if (part == 1 && !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) { j->result = -EIO; break; }
      while (pos < to && !j->result) {
        size_t want = to - pos < bs ? (size_t)(to - pos) : bs;
        ssize_t r = pread(j->fd, buf, want, (off_t)pos);
        if (r < 0) { if (errno == EINTR) continue; j->result = -errno; break; }
        if (r == 0) { j->result = -EBADMSG; break; }
        if (part == 0 ? !all_zero(buf, (size_t)r) : !EVP_DigestUpdate(ctx, buf, (size_t)r)) j->result = part == 0 ? -EBADMSG : -EIO;
        pos += (uint64_t)r;
      }
      if (part == 1 && k < j->n && !j->result) {
        unsigned char md[32];
        unsigned int mdlen = 0;
        if (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 32) j->result = -EIO;
        else if (memcmp(md, j->ranges + k * VR_REC + 16, 32) != 0) j->result = -EBADMSG;
      }
    }
  }
out:
  EVP_MD_CTX_free(ctx);
  free(buf);
}

static void vr_complete(napi_env env, napi_status status, void *arg) {
  vr_job_t *j = (vr_job_t *)arg;
  async_job_settle_int(env, &j->job, status == napi_ok ? j->result : -EIO);
  free(j->ranges);
  free(j);
}

// verifyRanges(fd, start, end, ranges: Buffer) -> Promise<0 | -errno>. The caller keeps fd open until it resolves.
static napi_value js_verify_ranges(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], promise;
  int32_t fd = -1;
  double start = -1, end = -1;
  void *data = NULL;
  size_t len = 0;
  bool isbuf = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[1], &start) != napi_ok ||
      napi_get_value_double(env, argv[2], &end) != napi_ok || napi_is_buffer(env, argv[3], &isbuf) != napi_ok || !isbuf ||
      napi_get_buffer_info(env, argv[3], &data, &len) != napi_ok || fd < 0 || start < 0 || end < start || len % VR_REC) {
    napi_throw_type_error(env, NULL, "verifyRanges(fd, start, end, ranges)");
    return NULL;
  }
  vr_job_t *j = calloc(1, sizeof(*j));
  if (j) j->ranges = malloc(len ? len : 1);
  if (!j || !j->ranges) { if (j) free(j); napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  // A copy: the job runs after this call returns, and JS may reuse the buffer.
  memcpy(j->ranges, data, len);
  j->fd = fd;
  j->start = (uint64_t)start;
  j->end = (uint64_t)end;
  j->n = len / VR_REC;
  if (!(promise = async_job_start(env, &j->job, "thinfs.verifyRanges", NULL, vr_execute, vr_complete))) { free(j->ranges); free(j); }
  return promise;
}

static void ov_complete(napi_env env, napi_status status, void *arg) {
  rv_job_t *j = (rv_job_t *)arg;
  if (status == napi_ok && j->result == 0) async_job_settle_int(env, &j->job, j->fd);
  else {
    if (j->fd >= 0) close(j->fd);
    async_job_settle_int(env, &j->job, j->result ? j->result : -EIO);
  }
  free(j->path);
  free(j);
}

static void rv_complete(napi_env env, napi_status status, void *arg) {
  rv_job_t *j = (rv_job_t *)arg;
  napi_value v;
  if (status == napi_ok && j->result == 0 && async_job_take_bytes(env, (void **)&j->data, j->size, &v) == 0) async_job_settle(env, &j->job, v);
  else async_job_settle_int(env, &j->job, status == napi_ok && j->result == 0 ? -ENOMEM : j->result ? j->result : -EIO);
  free(j->data);
  free(j->path);
  free(j);
}

// readVerified(path, size, sha256hex) -> Promise<Buffer | -errno>
// openVerified(path, size, sha256hex | "") -> Promise<fd | -errno>: "" checks the size only (the caller closes fd).
static napi_value start_job(napi_env env, napi_callback_info info, int open_only) {
  size_t argc = 3;
  napi_value argv[3], promise;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) {
    napi_throw_type_error(env, NULL, "readVerified/openVerified(path, size, sha256hex)");
    return NULL;
  }
  rv_job_t *j = calloc(1, sizeof(*j));
  size_t plen = 0;
  char hex[66];
  double size;
  size_t hlen = 0;
  if (!j) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  napi_get_value_string_utf8(env, argv[0], NULL, 0, &plen);
  j->path = malloc(plen + 1);
  if (!j->path) { free(j); napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  napi_get_value_string_utf8(env, argv[0], j->path, plen + 1, &plen);
  napi_get_value_double(env, argv[1], &size);
  // One byte more than a hash: a longer string is refused, not cut to 64.
  napi_get_value_string_utf8(env, argv[2], hex, sizeof(hex), &hlen);
  j->verify = !(open_only && hlen == 0);
  if (j->verify && hexdigest_parse(hex, hlen, j->want) < 0) size = -1;
  if (size < 0) {
    free(j->path); free(j);
    napi_throw_range_error(env, NULL, "readVerified: bad size or hash");
    return NULL;
  }
  j->size = (size_t)size;
  promise = open_only ? async_job_start(env, &j->job, "thinfs.openVerified", NULL, ov_execute, ov_complete)
                      : async_job_start(env, &j->job, "thinfs.readVerified", NULL, rv_execute, rv_complete);
  if (!promise) { free(j->path); free(j); }
  return promise;
}

static napi_value js_read_verified(napi_env env, napi_callback_info info) { return start_job(env, info, 0); }
static napi_value js_open_verified(napi_env env, napi_callback_info info) { return start_job(env, info, 1); }

typedef struct {
  async_job_t job;  // keeps data alive
  const unsigned char *data;
  size_t len;
  char *tmp, *dest;
  int result;
} wa_job_t;

static void wa_execute(napi_env env, void *arg) {
  wa_job_t *j = (wa_job_t *)arg;
  (void)env;
  int fd = open(j->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) { j->result = -errno; return; }
  size_t put = 0;
  while (put < j->len) {
    ssize_t n = write(fd, j->data + put, j->len - put);
    if (n < 0) { if (errno == EINTR) continue; j->result = -errno; break; }
    put += (size_t)n;
  }
  if (close(fd) < 0 && !j->result) j->result = -errno;
  if (!j->result && rename(j->tmp, j->dest) < 0) {
    if (errno == ENOENT) {
      // The fan-out directory (<2 hex>/) is made on first use, private like the rest of the cache.
      char *slash = strrchr(j->dest, '/');
      if (slash) { *slash = 0; mkdir(j->dest, 0700); *slash = '/'; }
      if (rename(j->tmp, j->dest) < 0) j->result = -errno;
    } else j->result = -errno;
  }
  if (j->result) unlink(j->tmp);
}

static void wa_complete(napi_env env, napi_status status, void *arg) {
  wa_job_t *j = (wa_job_t *)arg;
  async_job_settle_int(env, &j->job, status == napi_ok ? j->result : -EIO);
  free(j->tmp);
  free(j->dest);
  free(j);
}

static char *str_arg(napi_env env, napi_value v) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) return NULL;
  char *p = malloc(n + 1);
  if (p) napi_get_value_string_utf8(env, v, p, n + 1, &n);
  return p;
}

// writeAtomic(tmp, dest, data: Buffer) -> Promise<0 | -errno>. data must not change until it settles.
static napi_value js_write_atomic(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise;
  bool isbuf = false;
  void *data = NULL;
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_is_buffer(env, argv[2], &isbuf) != napi_ok || !isbuf || napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "writeAtomic(tmp, dest, data)");
    return NULL;
  }
  wa_job_t *j = calloc(1, sizeof(*j));
  if (j) { j->tmp = str_arg(env, argv[0]); j->dest = str_arg(env, argv[1]); }
  if (!j || !j->tmp || !j->dest) {
    if (j) { free(j->tmp); free(j->dest); free(j); }
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  j->data = data;
  j->len = len;
  if (!(promise = async_job_start(env, &j->job, "thinfs.writeAtomic", argv[2], wa_execute, wa_complete))) { free(j->tmp); free(j->dest); free(j); }
  return promise;
}

// Writes data to tmp and renames it to dest (the fan-out directory made if missing); the file's identity after the
// rename (which changes its ctime). 0 or -errno. The cache directory is private to the daemon's user: nothing else
// writes there between the write and the fstat.
static int write_place(const char *tmp, char *dest, const unsigned char *data, size_t len, file_id_t *id) {
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  int r = 0;
  size_t put = 0;
  while (put < len) {
    ssize_t n = write(fd, data + put, len - put);
    if (n < 0) { if (errno == EINTR) continue; r = -errno; break; }
    put += (size_t)n;
  }
  if (!r && rename(tmp, dest) < 0) {
    if (errno == ENOENT) {
      char *slash = strrchr(dest, '/');
      if (slash) { *slash = 0; mkdir(dest, 0700); *slash = '/'; }
      if (rename(tmp, dest) < 0) r = -errno;
    } else r = -errno;
  }
  struct stat st;
  if (!r && fstat(fd, &st) < 0) r = -errno;
  if (!r && (size_t)st.st_size != len) r = -EIO;
  if (!r) file_id_of(&st, id);
  if (close(fd) < 0 && !r) r = -errno;
  if (r) unlink(tmp);
  return r;
}

#define LAND_WRITE -1000  // verified, but the cache file could not be written (errno in write_err)

typedef struct {
  async_job_t job;
  char *obj, *tmp, *dest;
  unsigned char want[32];
  double size;
  int result;
  int write_err;
  size_t file_len;
  file_id_t id;
} land_job_t;

static void land_execute(napi_env env, void *arg) {
  land_job_t *j = (land_job_t *)arg;
  (void)env;
  uint8_t *out = NULL;
  size_t out_len = 0;
  j->result = decode_object_file(j->obj, j->want, j->size, &out, &out_len, &j->file_len);
  if (j->result != DEC_OK) return;
  int w = write_place(j->tmp, j->dest, out, out_len, &j->id);
  free(out);
  if (w < 0) { j->result = LAND_WRITE; j->write_err = -w; }
}

static void land_complete(napi_env env, napi_status status, void *arg) {
  land_job_t *j = (land_job_t *)arg;
  napi_value v, b, n;
  void *p;
  if (status == napi_ok && j->result == DEC_OK && napi_create_buffer_copy(env, sizeof(j->id), &j->id, &p, &b) == napi_ok) {
    napi_create_array_with_length(env, 2, &v);
    napi_set_element(env, v, 0, b);
    napi_create_double(env, (double)j->file_len, &n);
    napi_set_element(env, v, 1, n);
    async_job_settle(env, &j->job, v);
  } else async_job_settle_int(env, &j->job, status == napi_ok ? j->result : DEC_NOMEM);
  free(j->obj);
  free(j->tmp);
  free(j->dest);
  free(j);
}

// landObject(objectPath, sha256hex, size, tmp, dest) -> Promise<[identity: Buffer(32), framed bytes read] | 1 (decode it
// in JS) | negative (decode.h's refusals; -1000: verified but not written)>.
static napi_value js_land_object(napi_env env, napi_callback_info info) {
  size_t argc = 5, hlen = 0;
  napi_value argv[5], promise;
  char hex[66];
  double size = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 ||
      napi_get_value_string_utf8(env, argv[1], hex, sizeof(hex), &hlen) != napi_ok || hlen != 64 ||
      napi_get_value_double(env, argv[2], &size) != napi_ok) {
    napi_throw_type_error(env, NULL, "landObject(objectPath, sha256hex, size, tmp, dest)");
    return NULL;
  }
  land_job_t *j = calloc(1, sizeof(*j));
  if (j) { j->obj = str_arg(env, argv[0]); j->tmp = str_arg(env, argv[3]); j->dest = str_arg(env, argv[4]); }
  if (!j || !j->obj || !j->tmp || !j->dest) {
    if (j) { free(j->obj); free(j->tmp); free(j->dest); free(j); }
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  if (hexdigest_parse(hex, hlen, j->want) < 0) {
    free(j->obj); free(j->tmp); free(j->dest); free(j);
    napi_throw_range_error(env, NULL, "landObject: bad hash");
    return NULL;
  }
  j->size = size;
  if (!(promise = async_job_start(env, &j->job, "thinfs.landObject", NULL, land_execute, land_complete))) { free(j->obj); free(j->tmp); free(j->dest); free(j); }
  return promise;
}

typedef struct {
  async_job_t job;
  char *path;
  size_t size;
  unsigned char want[32];
  int result;
  file_id_t id;
} idv_job_t;

static void idv_execute(napi_env env, void *arg) {
  idv_job_t *j = (idv_job_t *)arg;
  (void)env;
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { j->result = -errno; return; }
  struct stat st;
  if (fstat(fd, &st) < 0) j->result = -errno;
  else if ((size_t)st.st_size != j->size) j->result = -EBADMSG;
  else {
    file_id_of(&st, &j->id);  // taken before the bytes are read: a change while hashing changes it
    j->result = hash_matches(fd, j->size, j->want);
  }
  close(fd);
}

static void idv_complete(napi_env env, napi_status status, void *arg) {
  idv_job_t *j = (idv_job_t *)arg;
  napi_value v;
  void *p;
  if (status == napi_ok && j->result == 0 && napi_create_buffer_copy(env, sizeof(j->id), &j->id, &p, &v) == napi_ok)
    async_job_settle(env, &j->job, v);
  else async_job_settle_int(env, &j->job, status == napi_ok && j->result ? j->result : -EIO);
  free(j->path);
  free(j);
}

// identifyVerified(path, size, sha256hex) -> Promise<identity: Buffer(32) | -errno (-EBADMSG: size or hash differ)>.
static napi_value js_identify_verified(napi_env env, napi_callback_info info) {
  size_t argc = 3, hlen = 0;
  napi_value argv[3], promise;
  char hex[66];
  double size = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_double(env, argv[1], &size) != napi_ok || size < 0 ||
      napi_get_value_string_utf8(env, argv[2], hex, sizeof(hex), &hlen) != napi_ok || hlen != 64) {
    napi_throw_type_error(env, NULL, "identifyVerified(path, size, sha256hex)");
    return NULL;
  }
  idv_job_t *j = calloc(1, sizeof(*j));
  if (j) j->path = str_arg(env, argv[0]);
  if (!j || !j->path) { free(j); napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  if (hexdigest_parse(hex, hlen, j->want) < 0) { free(j->path); free(j); napi_throw_range_error(env, NULL, "identifyVerified: bad hash"); return NULL; }
  j->size = (size_t)size;
  if (!(promise = async_job_start(env, &j->job, "thinfs.identifyVerified", NULL, idv_execute, idv_complete))) { free(j->path); free(j); }
  return promise;
}

void readverify_init(napi_env env, napi_value exports) {
  // Chunk buffers (0.25-4 MiB) come from the heap and go back to it, instead of a fresh mmap each: first-touch page
  // faults cost more than the SHA-256 of the chunk on this kind of VM (measured: 800 -> 380 MB/s when every chunk
  // buffer was new memory).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  napi_property_descriptor p[] = {
      {"readVerified", NULL, js_read_verified, NULL, NULL, NULL, napi_default, NULL},
      {"openVerified", NULL, js_open_verified, NULL, NULL, NULL, napi_default, NULL},
      {"verifyRanges", NULL, js_verify_ranges, NULL, NULL, NULL, napi_default, NULL},
      {"writeAtomic", NULL, js_write_atomic, NULL, NULL, NULL, napi_default, NULL},
      {"landObject", NULL, js_land_object, NULL, NULL, NULL, napi_default, NULL},
      {"identifyVerified", NULL, js_identify_verified, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(p) / sizeof(p[0]), p);
}
