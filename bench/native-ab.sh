#!/usr/bin/env bash
# Paired A/B of warm container starts the way a node runs thin images (issue 14): `podman run REF` through the podman
# image store generated over the mount (`thinfs podman-store`, `thinfs podman-conf`), against the same image pulled
# into podman's own store (`own`). The realistic image of bench/lib/realistic-image.ts (built and cached by
# `npm run bench -- coldstart`) is converted into a local store once; each variant gets its own warm cache, filled by
# a first start. Then, variants alternating within every round: the daemon restarted on its cache, page cache dropped,
# the python workload of bench/coldstart.ts started (warm), then again (hot); and the same two starts from podman's
# own store. Prints every sample, the requests that reached the daemon's JS thread (count, summed time) in the last warm
# + hot pair of each variant (NAB_ALL_STATS=1: after every warm start), and the medians.
# Usage (root): bench/native-ab.sh ROUNDS NAME=BUILD_DIR[,MOUNT_FLAG...] [...]
#   e.g. bench/native-ab.sh 6 pt=. nopt=.,--no-passthrough cat=.,@catalogs   (BUILD_DIR: a built checkout; @: afterdrop)
set -euo pipefail
source "$(dirname "$0")/lib/realistic-ab.sh" "$1" tnab; shift
first=${1#*=}; first=${first%%,*}
node "$first/dist/src/cli/main.js" init "$work/store" >/dev/null
node "$first/dist/tools/docker2thin.js" --no-progress --store "$work/store" --name python "oci:$oci:python" >/dev/null 2>&1
node "$first/dist/src/cli/main.js" podman-store "$work/store" "$mp" "$work/ps" >/dev/null
node "$first/dist/src/cli/main.js" podman-conf "$work/ps" --graphroot "$work/tg" --runroot "$work/tr" -o "$work/thin.conf" >/dev/null
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$work/og" "$work/or" >"$work/own.conf"
THIN=(env CONTAINERS_STORAGE_CONF="$work/thin.conf" podman)
OWN=(env CONTAINERS_STORAGE_CONF="$work/own.conf" podman)
ref=$("${THIN[@]}" images --format '{{.Repository}}:{{.Tag}}' | head -1)
"${OWN[@]}" pull -q "oci:$oci:python" >/dev/null
"${OWN[@]}" tag "$("${OWN[@]}" images -q | head -1)" own/python:1
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; sleep 1; umount -l "$mp" 2>/dev/null || true
  "${THIN[@]}" system reset --force >/dev/null 2>&1 || true; "${OWN[@]}" system reset --force >/dev/null 2>&1 || true; rm -rf "$work"
}
trap cleanup EXIT

mountb() { # NAME=BUILD_DIR[,FLAGS]: mount on the variant's cache, wait until ready (flags starting with @ are afterdrop's)
  local name=${1%%=*} spec=${1#*=}; local dir=${spec%%,*} all=() flags=() f
  [ "$spec" != "$dir" ] && IFS=, read -r -a all <<<"${spec#*,}"
  for f in "${all[@]}"; do [ "${f:0:1}" = @ ] || flags+=("$f"); done
  rm -f "$work/ready"
  node "$dir/dist/src/cli/main.js" mount "$work/store" "$mp" --cache-dir "$work/cache-$name" --ready-file "$work/ready" --metrics-port 0 \
    "${flags[@]}" >"$work/mount.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do [ -f "$work/ready" ] && return 0; sleep 0.05; done
  echo "mount did not become ready" >&2; cat "$work/mount.log" >&2; exit 1
}
umountb() { # NAB_LOGS=DIR keeps each daemon's log (with --debug: every request) as DIR/NAME-ROUND.log
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; umount -l "$mp" 2>/dev/null || true
  [ -n "${NAB_LOGS:-}" ] && cp "$work/mount.log" "$NAB_LOGS/${1:-fill}-${2:-0}.log" || true
}
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
thin() { secs "${THIN[@]}" run --rm --network=none --pull=never --entrypoint "${PY[0]}" "$ref" "${PY[@]:1}"; }
own() { secs "${OWN[@]}" run --rm --network=none --pull=never --entrypoint "${PY[0]}" own/python:1 "${PY[@]:1}"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Variant flags for finding where a warm start's time goes: after the drop, read back into the page cache the cache
# dir's catalogs and listings (@catalogs) or its chunks and whole-file copies (@chunks).
afterdrop() {
  local name=${1%%=*} f
  for f in ${1//,/ }; do case $f in
    @catalogs) cat "$work/cache-$name"/catalogs/* >/dev/null 2>&1 || true ;;
    @chunks) find "$work/cache-$name"/chunks "$work/cache-$name"/files -type f -exec cat {} + >/dev/null 2>&1 || true ;;
  esac; done
}
jsreqs() {
  local port; port=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).metricsPort)' "$work/ready")
  curl -s "localhost:$port/stats" | node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>{const o=JSON.parse(s).ops,r=o.requests;
    console.log(Object.entries(r).filter(([,v])=>v.n>0).map(([k,v])=>`${k} ${v.n} (${(v.totalSec*1000).toFixed(0)} ms)`).join(", ")+`; by the transport: lookups ${o.lookupsByTransport}, xattrs ${o.xattrsByTransport}, opens ${o.opensByTransport ?? o.opensNative}`)})'
}

for v in "$@"; do mountb "$v"; thin >/dev/null; umountb; done  # each variant's warm cache

declare -A samples
for r in $(seq "$rounds"); do
  for v in "$@"; do
    name=${v%%=*}
    mountb "$v"
    drop; afterdrop "$v"; w=$(thin)
    [ "$r" = "$rounds" ] || [ -n "${NAB_ALL_STATS:-}" ] && echo "$name: requests reaching JS (warm): $(jsreqs)"
    h=$(thin)
    [ "$r" = "$rounds" ] && echo "$name: requests reaching JS (warm + hot): $(jsreqs)"
    umountb "$name" "$r"
    samples[$name-warm]+="$w "; samples[$name-hot]+="$h "
    echo "round $r $name: warm $w ms, hot $h ms (load $(cut -d' ' -f1 /proc/loadavg))"
  done
  drop; w=$(own); h=$(own)
  samples[own-warm]+="$w "; samples[own-hot]+="$h "
  echo "round $r own: warm $w ms, hot $h ms"
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for name in $(for v in "$@"; do echo "${v%%=*}"; done) own; do
  echo "median $name: warm $(echo "${samples[$name-warm]}" | median) ms, hot $(echo "${samples[$name-hot]}" | median) ms"
done
