// readObject: the same for an object in a store on a local or shared filesystem, read in the same job (one threadpool
// trip per object instead of an open, a stat, a read and a close, and no JS buffer for the framed bytes).
// decodeObject: a stored object (src/store/codec.ts framing) decoded and checked against the hash that names it on the
// libuv threadpool, so cold reads (and catalog fetches) never decompress or hash on the JS thread, which also answers
// every FUSE request. Codec none is only hashed; zstd is decompressed into a buffer of exactly the header's length
// (and, when the caller knows it, the catalog's size: a hostile object cannot make it allocate more); raw deflate, and
// zstd when the addon was built without zstd.h, are left to the JS path. No byte comes back unless it hashes right.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include <openssl/evp.h>
#include "../../util/native/asyncjob.h"
#include "../../util/native/hexdigest.h"
#include "decode.h"
#ifdef HAVE_ZSTD
#include <zstd.h>
#endif


typedef struct {
  async_job_t job;   // keeps the input (raw) alive while the job reads it
  const uint8_t *raw;
  size_t raw_len;
  double want_size;  // < 0: unknown
  unsigned char want[32];
  uint8_t *out;      // zstd output (malloc'd), handed to JS as an external buffer
  size_t out_len;
  int result;
  char *path;        // readObject: the object's file
  size_t file_len;
} dec_job_t;

static uint64_t le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static int sha_matches(const uint8_t *p, size_t n, const unsigned char want[32]) {
  unsigned char md[32];
  unsigned int mdlen = 0;
  if (!EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) return 0;
  return memcmp(md, want, 32) == 0;
}

static void dec_execute(napi_env env, void *arg) {
  dec_job_t *j = (dec_job_t *)arg;
  (void)env;
  if (j->raw_len < HEADER_LEN || memcmp(j->raw, "TFO1", 4) != 0) { j->result = DEC_BAD_HEADER; return; }
  uint8_t codec = j->raw[4];
  uint64_t len = le64(j->raw + 8);
  const uint8_t *payload = j->raw + HEADER_LEN;
  size_t plen = j->raw_len - HEADER_LEN;
  if (j->want_size >= 0 && (double)len != j->want_size) { j->result = DEC_SIZE; return; }
  if (codec == 0) {
    if (plen != len) { j->result = DEC_LENGTH; return; }
    j->result = sha_matches(payload, plen, j->want) ? DEC_OK : DEC_HASH;
    return;
  }
#ifdef HAVE_ZSTD
  if (codec == 1) {
    // An unknown size is still bounded: no object of a layer is anywhere near this.
    if (len > ((uint64_t)1 << 32)) { j->result = DEC_SIZE; return; }
    j->out = malloc(len ? (size_t)len : 1);
    if (!j->out) { j->result = DEC_NOMEM; return; }
    size_t n = ZSTD_decompress(j->out, (size_t)len, payload, plen);
    if (ZSTD_isError(n)) { j->result = DEC_UNDECODABLE; return; }
    if (n != len) { j->result = DEC_LENGTH; return; }
    j->out_len = n;
    j->result = sha_matches(j->out, n, j->want) ? DEC_OK : DEC_HASH;
    return;
  }
#endif
  j->result = DEC_JS;
}

static int pread_all(int fd, uint8_t *p, size_t n, off_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, p + got, n - got, off + (off_t)got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

// An object file of a store on a filesystem, read, decoded and verified: DEC_OK with *out (malloc'd, *out_len bytes)
// holding bytes that hash to want, or a DEC_ code. Also used by the cache's landObject (src/cache/native/readverify.c),
// which writes the verified bytes straight into the cache directory.
int decode_object_file(const char *path, const unsigned char want[32], double want_size, uint8_t **outp, size_t *out_len,
                       size_t *file_len) {
  *outp = NULL;
  *out_len = 0;
  int result = DEC_JS;
  uint8_t *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? DEC_MISSING : DEC_IO;
  struct stat st;
  uint8_t h[HEADER_LEN];
  if (fstat(fd, &st) < 0) { result = DEC_IO; goto out; }
  *file_len = (size_t)st.st_size;
  if (want_size >= 0 && (double)st.st_size > want_size + HEADER_LEN) { result = DEC_TOO_BIG; goto out; }
  if ((size_t)st.st_size < HEADER_LEN || pread_all(fd, h, HEADER_LEN, 0) < 0 || memcmp(h, "TFO1", 4) != 0) { result = DEC_BAD_HEADER; goto out; }
  uint64_t len = le64(h + 8);
  size_t plen = (size_t)st.st_size - HEADER_LEN;
  if (want_size >= 0 && (double)len != want_size) { result = DEC_SIZE; goto out; }
  if (h[4] == 0) {
    // Stored raw: the payload is read straight into the buffer handed out.
    if (plen != len) { result = DEC_LENGTH; goto out; }
    out = malloc(plen ? plen : 1);
    if (!out) { result = DEC_NOMEM; goto out; }
    if (pread_all(fd, out, plen, HEADER_LEN) < 0) { result = DEC_IO; goto out; }
    *out_len = plen;
    result = sha_matches(out, plen, want) ? DEC_OK : DEC_HASH;
    goto out;
  }
#ifdef HAVE_ZSTD
  if (h[4] == 1) {
    if (len > ((uint64_t)1 << 32)) { result = DEC_SIZE; goto out; }
    uint8_t *payload = malloc(plen ? plen : 1);
    out = malloc(len ? (size_t)len : 1);
    if (!payload || !out) { free(payload); result = DEC_NOMEM; goto out; }
    if (pread_all(fd, payload, plen, HEADER_LEN) < 0) { free(payload); result = DEC_IO; goto out; }
    size_t n = ZSTD_decompress(out, (size_t)len, payload, plen);
    free(payload);
    if (ZSTD_isError(n)) { result = DEC_UNDECODABLE; goto out; }
    if (n != len) { result = DEC_LENGTH; goto out; }
    *out_len = n;
    result = sha_matches(out, n, want) ? DEC_OK : DEC_HASH;
    goto out;
  }
#endif
out:
  close(fd);
  if (result == DEC_OK) *outp = out;
  else free(out);
  return result;
}

static void read_execute(napi_env env, void *arg) {
  dec_job_t *j = (dec_job_t *)arg;
  (void)env;
  j->result = decode_object_file(j->path, j->want, j->want_size, &j->out, &j->out_len, &j->file_len);
}

static void dec_complete(napi_env env, napi_status status, void *arg) {
  dec_job_t *j = (dec_job_t *)arg;
  napi_value v, b, n;
  int32_t code = status == napi_ok ? j->result : DEC_NOMEM;
  int bytes = code == DEC_OK && j->out;  // DEC_OK without output: codec none, the input is good (resolves to 0)
  if (bytes && async_job_take_bytes(env, (void **)&j->out, j->out_len, &b) < 0) { bytes = 0; code = DEC_NOMEM; }
  if (!bytes) async_job_settle_int(env, &j->job, code);
  else {
    if (j->path) {
      // readObject: [bytes, framed size read]
      napi_create_array_with_length(env, 2, &v);
      napi_set_element(env, v, 0, b);
      napi_create_double(env, (double)j->file_len, &n);
      napi_set_element(env, v, 1, n);
    } else v = b;
    async_job_settle(env, &j->job, v);
  }
  free(j->out);
  free(j->path);
  free(j);
}

// decodeObject(raw: Buffer, sha256hex, size | -1) -> Promise<Buffer (zstd) | 0 (codec none: the payload is good) |
// 1 (decode it in JS) | negative (refused)>. raw must not be changed until the promise settles.
static napi_value js_decode_object(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise;
  void *data = NULL;
  size_t len = 0, hlen = 0;
  char hex[66];
  double size = -1;
  bool isbuf = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_is_buffer(env, argv[0], &isbuf) != napi_ok || !isbuf || napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], hex, sizeof(hex), &hlen) != napi_ok || hlen != 64 ||
      napi_get_value_double(env, argv[2], &size) != napi_ok) {
    napi_throw_type_error(env, NULL, "decodeObject(raw, sha256hex, size)");
    return NULL;
  }
  dec_job_t *j = calloc(1, sizeof(*j));
  if (!j) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  if (hexdigest_parse(hex, hlen, j->want) < 0) { free(j); napi_throw_range_error(env, NULL, "decodeObject: bad hash"); return NULL; }
  j->raw = data;
  j->raw_len = len;
  j->want_size = size;
  if (!(promise = async_job_start(env, &j->job, "thinfs.decodeObject", argv[0], dec_execute, dec_complete))) free(j);
  return promise;
}

// readObject(path, sha256hex, size | -1) -> Promise<[Buffer, framed bytes] | 1 (decode it in JS) | negative>.
static napi_value js_read_object(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise;
  size_t plen = 0, hlen = 0;
  char hex[66];
  double size = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_string_utf8(env, argv[0], NULL, 0, &plen) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], hex, sizeof(hex), &hlen) != napi_ok || hlen != 64 ||
      napi_get_value_double(env, argv[2], &size) != napi_ok) {
    napi_throw_type_error(env, NULL, "readObject(path, sha256hex, size)");
    return NULL;
  }
  dec_job_t *j = calloc(1, sizeof(*j));
  if (j) j->path = malloc(plen + 1);
  if (!j || !j->path) { free(j); napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  napi_get_value_string_utf8(env, argv[0], j->path, plen + 1, &plen);
  if (hexdigest_parse(hex, hlen, j->want) < 0) {
    free(j->path);
    free(j);
    napi_throw_range_error(env, NULL, "readObject: bad hash");
    return NULL;
  }
  j->want_size = size;
  if (!(promise = async_job_start(env, &j->job, "thinfs.readObject", NULL, read_execute, dec_complete))) { free(j->path); free(j); }
  return promise;
}

void decode_init(napi_env env, napi_value exports) {
  napi_property_descriptor p[] = {
      {"decodeObject", NULL, js_decode_object, NULL, NULL, NULL, napi_default, NULL},
      {"readObject", NULL, js_read_object, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, p);
}
