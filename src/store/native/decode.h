// The store's object decoding shared with the cache's native jobs (decode.c owns it): an object file of a store on a
// filesystem read, decoded and checked against the hash that names it.
#ifndef THINFS_DECODE_H
#define THINFS_DECODE_H
#include <stddef.h>
#include <stdint.h>

#define HEADER_LEN 16
// Results (negative: refused; the JS side words the error).
#define DEC_OK 0
#define DEC_JS 1           // not handled here: decode in JS
#define DEC_BAD_HEADER -1
#define DEC_UNDECODABLE -2
#define DEC_LENGTH -3
#define DEC_HASH -4
#define DEC_SIZE -5        // header length differs from the size the caller expects
#define DEC_NOMEM -6
#define DEC_TOO_BIG -7     // the file is bigger than the expected size allows
#define DEC_MISSING -8     // no such object
#define DEC_IO -9          // another error reading it: the JS path reads it again and reports

int decode_object_file(const char *path, const unsigned char want[32], double want_size, uint8_t **out, size_t *out_len,
                       size_t *file_len);
#endif
