#!/usr/bin/env bash
# Sets up a fresh Debian (bookworm) machine for thinfs: system packages, npm deps, build.
# Idempotent: safe to run again. Needs root (apt-get, /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  fuse3                       # fusermount3: unmount, and mounts by non-root users
  git tar gzip zstd xz-utils  # GNU tar is the correctness oracle
  attr                        # getfattr/setfattr for xattr checks
  docker-registry skopeo umoci   # real registry + reference image tools (docker2thin tests)
  apache2-utils                  # htpasswd (bcrypt) for the registry basic-auth test
  podman runc buildah            # real container runtime on the result
  debootstrap                    # offline base images: Dockerfile build test, podman bench
  uidmap                         # newuidmap/newgidmap: rootless podman test
  systemd                        # systemd-analyze verify of deploy/thinfs-mount.service
  squashfs-tools squashfuse      # bench baseline
  nginx                          # HTTP store backend tests
  squid                          # site cache (forward proxy) for the HTTP store tests and the sitecache bench
  awscli                         # real S3 client (publisher tests)
  fio hyperfine
  debootstrap gnuplot-nox         # the realistic bench image; the cold-start chart
  strace                         # the flush-before-publish order of small transactions (ingest-writes test)
  time                           # /usr/bin/time: peak RSS of an ingest (memory-bound tests); CPU time in the convert bench
  isal pigz                      # igzip (fastest gzip decoder here), pigz (fallback): layer decompression off the main thread
  nfs-kernel-server              # NFS over loopback for the many-converters test (needs a kernel with nfsd/nfs)
  libzstd-dev                    # zstd.h: stored objects decoded and verified on the threadpool (src/store/native/decode.c)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# podman on this cgroup-v1 host: runc, not crun, and no ulimit raising (no CAP_SYS_RESOURCE).
mkdir -p /etc/containers
if ! grep -q 'runtime = "runc"' /etc/containers/containers.conf 2>/dev/null; then
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
CONF
fi
[ -e /dev/fuse ] || mknod -m 666 /dev/fuse c 10 229
modprobe overlay 2>/dev/null || true

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build
# `thinfs` and `docker2thin` on PATH (README commands; deploy/thinfs-mount.service runs /usr/local/bin/thinfs)
bash scripts/install-bin.sh
