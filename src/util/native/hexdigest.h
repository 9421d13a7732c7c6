// A SHA-256 as the JS side names it (64 lowercase hex digits, the store's object names) turned into its 32 bytes:
// one parser for the native modules that verify what they read against that name (store decode, cache reads).
#ifndef THINFS_HEXDIGEST_H
#define THINFS_HEXDIGEST_H
#include <stddef.h>

static inline int hexdigest_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/** 0 with out filled when hex is exactly 64 lowercase hex digits; -1 otherwise (out then undefined). */
static inline int hexdigest_parse(const char *hex, size_t len, unsigned char out[32]) {
  if (len != 64) return -1;
  for (int i = 0; i < 32; i++) {
    int hi = hexdigest_nibble(hex[2 * i]), lo = hexdigest_nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  return 0;
}
#endif
