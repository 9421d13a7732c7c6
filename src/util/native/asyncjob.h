// A promise settled by one job on the libuv threadpool: what the native modules' asynchronous calls share (the store's
// decodeObject/readObject, the cache's readVerified/openVerified/verifyRanges/writeAtomic/landObject/identifyVerified,
// the transport's replyChunks). A job struct starts with an
// async_job_t; its execute callback runs off the JS thread, its complete callback settles the promise with
// async_job_settle and frees the rest of the job.
#ifndef THINFS_ASYNCJOB_H
#define THINFS_ASYNCJOB_H
#include <stddef.h>
#include <stdlib.h>
#include <node_api.h>

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref keep;  // a JS value the job reads (a Buffer), kept alive until the promise settles; or NULL
} async_job_t;

/**
 * Queues the job (name: what async hooks call it) and returns its promise; keep: a value to hold while the job runs,
 * or NULL. NULL with an exception pending when N-API refuses (the job was not queued: the caller frees it).
 */
static inline napi_value async_job_start(napi_env env, async_job_t *job, const char *name, napi_value keep,
                                         napi_async_execute_callback execute, napi_async_complete_callback complete) {
  napi_value promise, resource;
  job->keep = NULL;
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource) != napi_ok ||
      napi_create_async_work(env, NULL, resource, execute, complete, job, &job->work) != napi_ok) {
    napi_throw_error(env, NULL, "cannot create a threadpool job");
    return NULL;
  }
  if (keep) napi_create_reference(env, keep, 1, &job->keep);
  napi_create_promise(env, &job->deferred, &promise);
  napi_queue_async_work(env, job->work);
  return promise;
}

/** Resolves the job's promise with v and lets go of what the job held (its work, the kept value). */
static inline void async_job_settle(napi_env env, async_job_t *job, napi_value v) {
  napi_resolve_deferred(env, job->deferred, v);
  if (job->keep) napi_delete_reference(env, job->keep);
  napi_delete_async_work(env, job->work);
}

/** The same with a number (the calls' result codes: 0, -errno, or a module's own). */
static inline void async_job_settle_int(napi_env env, async_job_t *job, int32_t n) {
  napi_value v;
  napi_create_int32(env, n, &v);
  async_job_settle(env, job, v);
}

static inline void async_job_free_bytes(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  free(data);
}

/** *bytes (malloc'd, len) as a Buffer the GC frees: *bytes then NULL. 0, or -1 (*bytes still the caller's). */
static inline int async_job_take_bytes(napi_env env, void **bytes, size_t len, napi_value *out) {
  if (napi_create_external_buffer(env, len, *bytes, async_job_free_bytes, NULL, out) != napi_ok) return -1;
  *bytes = NULL;
  return 0;
}

#endif
