{
  "targets": [
    {
      "target_name": "thinfs_native",
      "sources": ["src/fuse/native/addon.c", "src/fuse/native/session.c", "src/fuse/native/mount.c", "src/fuse/native/listing.c", "src/fuse/native/xattrless.c", "src/fuse/native/lookups.c", "src/cache/native/readverify.c", "src/chunker/native/gear.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    }
  ]
}
