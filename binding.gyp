{
  "targets": [
    {
      "target_name": "thinfuse",
      "sources": ["src/fuse/native/thinfuse.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    }
  ]
}
