{
  "targets": [
    {
      "target_name": "thinfs_native",
      "sources": ["src/fuse/native/addon.c", "src/fuse/native/session.c", "src/fuse/native/mount.c", "src/fuse/native/listing.c", "src/fuse/native/xattrless.c", "src/fuse/native/listings-cache.c", "src/fuse/native/fileread.c", "src/cache/native/readverify.c", "src/store/native/decode.c", "src/chunker/native/gear.c", "src/cli/native/module.c"],
      "conditions": [
        ["<!(test -f /usr/include/zstd.h && echo 1 || echo 0)==1", {"defines": ["HAVE_ZSTD"], "libraries": ["-lzstd"]}]
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    }
  ]
}
