// The native addon's entry point (one .node, built by binding.gyp, loaded by src/util/native.ts). It is the one
// place that names every room's native part, so it sits with the CLI, the top layer that composes the rooms: the
// transport (L2) no longer registers the cache's, store's and chunker's functions, which pointed upward.
#include <node_api.h>

void thinfuse_init(napi_env env, napi_value exports);   // src/fuse/native/addon.c
void gear_init(napi_env env, napi_value exports);       // src/chunker/native/gear.c
void decode_init(napi_env env, napi_value exports);     // src/store/native/decode.c
void readverify_init(napi_env env, napi_value exports); // src/cache/native/readverify.c

static napi_value init(napi_env env, napi_value exports) {
  thinfuse_init(env, exports);
  gear_init(env, exports);
  decode_init(env, exports);
  readverify_init(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
