#!/usr/bin/env bash
# Paired A/B of container starts from a thin image between thinfs builds (issue 14: thinfs's warm start against
# podman's). The realistic image of bench/lib/realistic-image.ts (built and cached by `npm run bench -- coldstart`)
# is converted into a local store once; one warm cache per build, filled by a first start through that build. Then,
# builds alternating within every round: daemon restarted on its cache, page cache dropped, the python workload of
# bench/coldstart.ts started with `podman run --rootfs .../images/python/rootfs:O` (warm), then again (hot); also,
# each round, the same start from a local copy of the rootfs (`native`, what podman's --rootfs path costs without
# thinfs). Prints every sample, the requests that reached the daemon's JS thread in the last warm + hot pair of each
# build, and the medians.
# Usage (root): bench/start-ab.sh ROUNDS NAME=BUILD_DIR [NAME=BUILD_DIR...]   (BUILD_DIR: a built checkout)
set -euo pipefail
source "$(dirname "$0")/lib/realistic-ab.sh" "$1" tsab; shift
P=(podman --root "$work/pr" --runroot "$work/prr" --storage-driver overlay)
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; sleep 1; umount -l "$mp" 2>/dev/null || true
  "${P[@]}" system reset --force >/dev/null 2>&1 || true; rm -rf "$work"
}
trap cleanup EXIT

first=${1#*=}
node "$first/dist/src/cli/main.js" init "$work/store" >/dev/null
node "$first/dist/tools/docker2thin.js" --no-progress --store "$work/store" --name python "oci:$oci:python" >/dev/null 2>&1

mountb() { # BUILD_DIR CACHE: mount, wait until ready
  rm -f "$work/ready"
  node "$1/dist/src/cli/main.js" mount "$work/store" "$mp" --cache-dir "$2" --ready-file "$work/ready" --metrics-port 0 \
    >"$work/mount.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do [ -f "$work/ready" ] && return 0; sleep 0.05; done
  echo "mount did not become ready" >&2; cat "$work/mount.log" >&2; exit 1
}
umountb() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; umount -l "$mp" 2>/dev/null || true; }
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
start() { secs "${P[@]}" run --rm --network=none --rootfs "$1:O" "${PY[@]}"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
jsreqs() {
  local port; port=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).metricsPort)' "$work/ready")
  curl -s "localhost:$port/stats" | node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>{const o=JSON.parse(s).ops,r=o.requests,n=(k)=>r[k]?.n??0;
    console.log(`lookup ${n("lookup")} getxattr ${n("getxattr")} open ${n("open")} readdirplus ${n("readdirplus")}; answered by the transport: xattr ${o.xattrsByTransport} lookup ${o.lookupsByTransport}`)})'
}

# A warm cache per build (its own first start), and the native copy of the rootfs.
for b in "$@"; do
  name=${b%%=*}; dir=${b#*=}
  mountb "$dir" "$work/cache-$name"
  start "$mp/images/python/rootfs" >/dev/null
  [ -d "$work/rootfs" ] || cp -a "$mp/images/python/rootfs" "$work/rootfs"
  umountb
done

declare -A samples
for r in $(seq "$rounds"); do
  for b in "$@"; do
    name=${b%%=*}; dir=${b#*=}
    mountb "$dir" "$work/cache-$name"
    drop; w=$(start "$mp/images/python/rootfs"); h=$(start "$mp/images/python/rootfs")
    [ "$r" = "$rounds" ] && echo "$name: requests reaching JS (warm + hot): $(jsreqs)"
    umountb
    samples[$name-warm]+="$w "; samples[$name-hot]+="$h "
    echo "round $r $name: warm $w ms, hot $h ms (load $(cut -d' ' -f1 /proc/loadavg))"
  done
  drop; w=$(start "$work/rootfs"); h=$(start "$work/rootfs")
  samples[native-warm]+="$w "; samples[native-hot]+="$h "
  echo "round $r native: warm $w ms, hot $h ms"
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for name in $(for b in "$@"; do echo "${b%%=*}"; done) native; do
  echo "median $name: warm $(echo "${samples[$name-warm]}" | median) ms, hot $(echo "${samples[$name-hot]}" | median) ms"
done
