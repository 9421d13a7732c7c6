// A local file's identity (inode, size, mtime, ctime): bytes verified once stay trusted while it is unchanged (the
// rule of src/cache/copy-trust.ts). Made by the cache's native jobs when they write or verify a chunk file, handed to
// JS as 32 opaque bytes, and checked by the transport (src/fuse/native/fileread.c) before each read of the file.
#ifndef THINFS_FILEID_H
#define THINFS_FILEID_H
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

typedef struct { uint64_t ino, size; int64_t mtime_ns, ctime_ns; } file_id_t;

static inline void file_id_of(const struct stat *st, file_id_t *id) {
  id->ino = (uint64_t)st->st_ino;
  id->size = (uint64_t)st->st_size;
  id->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  id->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static inline int file_id_same(const struct stat *st, const file_id_t *id) {
  file_id_t now;
  file_id_of(st, &now);
  return memcmp(&now, id, sizeof(now)) == 0;
}
#endif
