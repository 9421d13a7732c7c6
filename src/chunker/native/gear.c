// The FastCDC boundary scan (src/chunker/fastcdc.ts) in C: the same gear table (handed over by JS, which defines the
// store format), the same masks and normalization. The JS loop ran at ~0.5 GB/s and was a fifth of ingest CPU.
#include <stdint.h>
#include <string.h>
#include <node_api.h>

static uint32_t gear[256];
static int gear_set = 0;

// setGear(Uint32Array(256))
static napi_value js_set_gear(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_typedarray_type t;
  size_t len;
  void *data;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_typedarray_info(env, argv[0], &t, &len, &data, NULL, NULL) != napi_ok || t != napi_uint32_array || len != 256) {
    napi_throw_type_error(env, NULL, "setGear(Uint32Array(256))");
    return NULL;
  }
  memcpy(gear, data, sizeof(gear));
  gear_set = 1;
  return NULL;
}

// gearScan(buf, from, normEnd, hardEnd, h, maskS, maskL): index after the first cut point in [from, hardEnd), testing
// maskS before normEnd and maskL after; -1 - h when there is none (h = the rolling hash to carry on with).
static napi_value js_gear_scan(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7], ret;
  void *data;
  size_t n;
  uint32_t from, norm_end, hard_end, h, mask_s, mask_l;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (!gear_set || argc < 7 || napi_get_buffer_info(env, argv[0], &data, &n) != napi_ok) {
    napi_throw_type_error(env, NULL, "gearScan(buf, from, normEnd, hardEnd, h, maskS, maskL) after setGear");
    return NULL;
  }
  napi_get_value_uint32(env, argv[1], &from);
  napi_get_value_uint32(env, argv[2], &norm_end);
  napi_get_value_uint32(env, argv[3], &hard_end);
  napi_get_value_uint32(env, argv[4], &h);
  napi_get_value_uint32(env, argv[5], &mask_s);
  napi_get_value_uint32(env, argv[6], &mask_l);
  if (hard_end > n) hard_end = (uint32_t)n;
  if (norm_end > hard_end) norm_end = hard_end;
  const uint8_t *p = (const uint8_t *)data;
  uint32_t i = from;
  double r;
  for (; i < norm_end; i++) {
    h = (h << 1) + gear[p[i]];
    if (!(h & mask_s)) { napi_create_double(env, (double)(i + 1), &ret); return ret; }
  }
  for (; i < hard_end; i++) {
    h = (h << 1) + gear[p[i]];
    if (!(h & mask_l)) { napi_create_double(env, (double)(i + 1), &ret); return ret; }
  }
  r = -1.0 - (double)h;
  napi_create_double(env, r, &ret);
  return ret;
}

void gear_init(napi_env env, napi_value exports) {
  napi_property_descriptor p[] = {
      {"setGear", NULL, js_set_gear, NULL, NULL, NULL, napi_default, NULL},
      {"gearScan", NULL, js_gear_scan, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, p);
}
