// thinfuse: thinfs's own FUSE transport, the kernel's low-level protocol spoken over /dev/fuse. This header is what its
// parts share: the session (session.c: the reader thread and the requests it answers itself), mounting (mount.c),
// listing pages (listing.c, pure), the listings it keeps (listings-cache.c) and the N-API glue (addon.c, the only part that knows Node).
#ifndef THINFUSE_H
#define THINFUSE_H
#define _GNU_SOURCE
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "../../util/native/fileid.h"
#include "listings-cache.h"

#define BUF_SIZE ((1u << 20) + 4096u)
// Pseudo opcodes delivered for events that are not requests.
#define EV_CLOSED 0
// A handed-over listing was first served by the reader thread: JS hands over that directory's subdirectories next.
#define EV_DIR_LISTED 0xfff0

// Where each immutable directory's listing ends, as JS reported it: the READDIR that asks past the end (every
// listing ends with one) is answered here, without a trip to JS. Direct-mapped: a collision only costs that trip.
#define EOF_SLOTS 65536
typedef struct { uint64_t nodeid; uint64_t eof; } dir_eof_t;

// How a node's file is being opened: through our READ replies (backing_id 0) or passed through to a backing file.
// The kernel forbids mixing the two on one inode, so an entry lives while the node has opens; a passthrough entry
// lives on until the kernel forgets the node (its next opens reuse the backing file without asking JS).
#define OPEN_BUCKETS 65536
// Without passthrough, an entry may instead hold a descriptor of a verified local copy (read_fd >= 0): the reader thread
// answers the node's READs from it (fileread.c). Such an entry too lives until the kernel forgets the node (or JS lets
// go of the copy); one without either is dropped at the last release, so the next open is decided again.
// Without a copy, an open node's READs may still be answered here from its chunks' cached files, one by one as JS
// lands them (fetched, verified, written to the cache: src/cache/): the node's byte range, the file, and the file's
// identity when its bytes were verified (checked before every read: a changed file is let go of, JS verifies again).
typedef struct {
  uint64_t off;
  uint32_t len;
  file_id_t id;
  char *path;
  int reported;  // JS heard of a READ of it answered by the reader thread (EV_READ_NATIVE)
} chunk_ext_t;
#define EXT_MAX 65536
typedef struct open_entry {
  uint64_t nodeid;
  int32_t backing_id;
  int32_t opens;
  int forgotten;
  // JS let go of the node's file (the cache evicted it): dropped at the last release whatever opens came meanwhile;
  // unlike forgotten, a new OPEN does not clear it (the next first open is decided by JS again).
  int let_go;
  int read_fd;
  uint64_t read_size;
  // The copy's identity when handed over: a write, truncate or replacement since changes it (then JS serves the node).
  uint64_t read_ino;
  int64_t read_mtime_ns, read_ctime_ns;
  uint64_t read_ahead_to;  // the copy's pages asked of the disk up to here (fileread.c)
  uint8_t *mem;            // or a tiny file's bytes (inline in the catalog), handed over with its listing
  size_t mem_len;
  chunk_ext_t *ext;        // sorted by off, not overlapping
  size_t n_ext, cap_ext;
  uint64_t ext_size;       // the node's size
  struct open_entry *next;
} open_entry_t;

// Files handed over by JS before the kernel opens them (the one-chunk files of a directory being listed: a reader opens
// them next): the cached chunk holding the file's bytes and its SHA-256. The reader thread answers the first OPEN of
// such a node itself, after hashing the chunk (fileread.c): with passthrough, by handing the chunk file to the kernel as
// the node's backing file; without, by answering its READs itself. JS hears of it after the reply (EV_OPENED). A
// handed-over file is used once; beyond FAHEAD_MAX entries, new ones are ignored.
#define FAHEAD_BUCKETS 16384
#define FAHEAD_MAX 65536
// Only files up to this size are hashed on the reader thread (bigger ones go to JS, which hashes on the threadpool).
#define FAHEAD_FILE_MAX ((uint64_t)1 << 20)
typedef struct file_ahead {
  uint64_t nodeid, size;
  unsigned char sha[32];
  char *path;
  uint8_t *mem;  // a tiny file's bytes themselves (inline in the catalog): path is NULL
  struct file_ahead *chain;
} file_ahead_t;
// Event: the reader thread opened a handed-over file (nodeid) and answers its reads.
#define EV_OPENED 0xfff1
// Event: the reader thread answered a READ of a node from its landed chunks, one of them not reported yet or reaching the
// file's end (unique carries the READ's offset, the body its length, u32): JS keeps fetching ahead of the reader, counts
// the chunks as read, and builds the file's whole copy at its end.
#define EV_READ_NATIVE 0xfff2

// A request (or event) for the JS thread.
typedef struct {
  uint32_t opcode;
  double unique;
  double nodeid;
  uint32_t uid, gid, pid;
  size_t len;
  char *body;  // malloc'd, copied into a Buffer
  int err;     // for EV_CLOSED: the errno that ended the loop (ENODEV = unmounted)
  double t_ns; // CLOCK_MONOTONIC when read from the kernel (process.hrtime's clock): queueing delay metrics
} request_t;

// Nodes without xattrs (xattrless.c), direct-mapped by node id.
#define NOXATTR_SLOTS 65536

typedef struct session {
  int fd;
  int passthrough_wanted;
  int passthrough;  // negotiated
  int native_reads; // without passthrough: JS decides first opens and may hand a verified copy to answer READs here
  uint8_t *read_out;  // the reader thread's buffer for READs it answers (fileread.c)
  uint64_t native_read_reqs, native_read_bytes;  // READs answered here (atomics: JS reads them)
  file_ahead_t **fahead;
  size_t fahead_count;
  pthread_mutex_t fahead_lock;
  int no_opendir;   // the kernel opens directories without asking (FUSE_NO_OPENDIR_SUPPORT, Linux >= 5.1)
  // Node ids below this are directories whose listings change (the mount's synthetic ones): never cached by the
  // kernel, never answered here. Set by the caller at mount; the mount owns the rule.
  uint64_t uncached_below;
  open_entry_t **opens;
  pthread_mutex_t open_lock;
  dir_eof_t *eofs;
  pthread_mutex_t eof_lock;
  uint64_t *noxattr;            // xattrless.c
  uint64_t noxattr_answered;    // GETXATTR/LISTXATTR answered from it
  listings_t listings;          // listings-cache.c: READDIR handed ahead, LOOKUP
  pthread_t thread;
  uint32_t max_readahead;
  uint32_t max_pages;
  uint32_t max_background;
  uint32_t ttl;  // entry and attribute lifetime of immutable nodes, seconds
  // The owner's side (addon.c): deliver hands a request to it (and frees it if it cannot); finished is called once
  // when the reader thread ends, after the EV_CLOSED event.
  void (*deliver)(struct session *s, request_t *r);
  void (*finished)(struct session *s);
  void *owner;
} session_t;

// ---- session.c ----
session_t *session_new(void);
void session_free(session_t *s);
// Starts the reader thread on s->fd. 0 or -errno.
int session_start(session_t *s);
int session_reply(session_t *s, uint64_t unique, int error, const struct iovec *data, int ndata);
int session_notify_store(session_t *s, uint64_t nodeid, uint64_t offset, const void *p, uint32_t n);
int32_t session_open_reply(session_t *s, uint64_t unique, uint64_t nodeid, int32_t backing_fd);
void session_forget_node(session_t *s, uint64_t nodeid);
void session_let_go_node(session_t *s, uint64_t nodeid);
void session_set_eof(session_t *s, uint64_t nodeid, uint64_t off);
// The open table (callers hold open_lock).
open_entry_t *session_open_find(session_t *s, uint64_t nodeid);
void session_reply_open(session_t *s, uint64_t unique, int32_t backing_id);
// Registers fd as a passthrough backing file (the kernel takes its own reference): its id, or -errno.
int32_t session_backing_open(session_t *s, int fd);
int session_reply_buf(session_t *s, uint64_t unique, const void *p, size_t n);
void session_post(session_t *s, request_t *r);

// ---- fileread.c ----
// An entry takes its own descriptor of fd (a verified local copy of the node's bytes): 1, or -errno.
int fileread_attach(open_entry_t *e, int fd);
void fileread_detach(open_entry_t *e);
// The first OPEN of a node handed over with fileread_ahead: answered here (1), or 0 for JS to answer.
int fileread_open(session_t *s, uint64_t unique, uint64_t nodeid);
void fileread_ahead(session_t *s, uint64_t nodeid, const char *path, uint64_t size, const unsigned char sha[32]);
void fileread_ahead_bytes(session_t *s, uint64_t nodeid, const uint8_t *data, size_t len);
// A READ of a node whose entry holds a copy or landed chunks: answered here (1), or 0 for JS to answer.
int fileread_serve(session_t *s, uint64_t unique, uint64_t nodeid, uint64_t offset, uint32_t size);
// A chunk of an open node landed in a verified cache file: its READs may be answered from it. 1, or 0 (not open).
int fileread_chunk(session_t *s, uint64_t nodeid, uint64_t node_size, uint64_t off, uint32_t len, const char *path,
                   const file_id_t *id);
// A READ JS holds, answered from the node's landed chunks into buf (BUF_SIZE bytes; any thread): 1, or 0.
int fileread_reply_chunks(session_t *s, uint64_t unique, uint64_t nodeid, uint64_t offset, uint32_t size, uint8_t *buf);

// ---- mount.c ----
// Mounts a FUSE filesystem at mnt and returns the /dev/fuse descriptor (close-on-exec), or -1 with why filled in.
// opts: a comma list; ro, suid/nosuid, dev/nodev become mount flags (nosuid,nodev unless named), the rest is data.
int fuse_mount(const char *mnt, const char *fsname, const char *opts, char *why, size_t whylen);
// Lazy detach (root). 0 or -errno.
int fuse_unmount(const char *mnt);

// ---- xattrless.c ----
void noxattr_init(session_t *s);
void noxattr_free(session_t *s);
void session_set_noxattr(session_t *s, uint64_t nodeid);
void session_noxattr_listing(session_t *s, const uint8_t *blk, size_t blen, uint64_t base);
struct fuse_in_header;
int session_noxattr_answer(session_t *s, const struct fuse_in_header *ih, const char *body);

// ---- listings-cache.c ----
void listings_init(session_t *s, size_t budget);
void listings_free(session_t *s);
int session_listing_keep(session_t *s, uint64_t nodeid, const uint8_t *blk, size_t blen, uint64_t base, int ahead);
struct fuse_read_in;
int listings_readdir(session_t *s, const struct fuse_in_header *ih, const struct fuse_read_in *in);
int listings_lookup(session_t *s, const struct fuse_in_header *ih, const char *body, size_t blen);
void listings_stats(session_t *s, double out[4]);

// ---- listing.c ----
#define LISTING_RECORD_HEADER 50u
// A record's mode field: the entry has no xattrs (src/format/listing.ts); the low 16 bits are st_mode.
#define LISTING_NO_XATTRS 0x80000000u
// One page of a pre-encoded listing (src/format/listing.ts) from cookie on, into out. See listing.c.
struct fuse_entry_out;
uint32_t listing_entry(const uint8_t *r, uint64_t base, uint64_t ttl, struct fuse_entry_out *e);
long listing_find(const uint8_t *blk, size_t blen, const uint8_t *name, size_t nl);
long listing_page(const uint8_t *blk, size_t blen, uint64_t cookie, uint8_t *out, size_t olen, int plus, uint64_t base,
                  uint64_t ttl, uint64_t self, size_t *next);

#endif
