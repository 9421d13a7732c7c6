#!/usr/bin/env bash
# Paired A/B of warm reads between thinfs builds (issue 10: whole-file verification must not cost warm reads more
# than 10%). Each build gets its own warm cache of the same store (filled by that build: the cache layouts may
# differ); then, alternating builds within every round, each workload runs after a daemon restart and
# `echo 3 > /proc/sys/vm/drop_caches`: `dd` of a 512 MiB incompressible file, and reading every file of the tree
# (python stdlib + that file). Prints every sample and the medians. On a machine loaded by other work only
# neighbouring runs compare, hence the alternation.
# Usage (root): bench/warm-ab.sh ROUNDS NAME=BUILD_DIR [NAME=BUILD_DIR...]   (BUILD_DIR: a built checkout)
# WARM_AB_SHARED=1: every build uses one warm cache, filled by the first (same files on disk: no layout difference
# between builds; needs builds with the same cache layout).
# WARM_AB_DELAY=S waits S seconds after the restart before each workload (e.g. 3: a reader arriving while the
# background re-verification of whole-file copies is under way).
set -euo pipefail
rounds=$1; shift
work=$(mktemp -d /tmp/thinfs-warm-ab-XXXXXX)
mp=$work/mnt; mkdir -p "$mp" "$work/src/big"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; umount -l "$mp" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

py=$(ls -d /usr/lib/python3.* | sort | tail -1)
cp -a "$py" "$work/src/pylib"
head -c $((512 << 20)) /dev/urandom > "$work/src/big/large.bin"
tar -cf "$work/tree.tar" --numeric-owner --sort=name -C "$work/src" .
rm -rf "$work/src"
first=${1#*=}
node "$first/dist/src/cli/main.js" ingest "$work/tree.tar" --store "$work/store" --init --no-progress >/dev/null
rm "$work/tree.tar"
hex=$(ls "$work/store/layers" | grep '\.json$' | head -1); hex=${hex%.json}
layer=$mp/layers/$hex

start() { # build cache
  rm -f "$work/ready"
  THINFS_LOG_LEVEL=warn node "$1/dist/src/cli/main.js" mount "$work/store" "$mp" --cache-dir "$2" --ready-file "$work/ready" \
    --cache-quota 20G --metrics-port 0 2>>"$work/daemon.log" &
  pids=($!)
  for _ in $(seq 400); do [ -e "$work/ready" ] && return; sleep 0.025; done
  echo "mount did not become ready" >&2; exit 1
}
stop() { kill "${pids[0]}"; wait "${pids[0]}" || true; pids=(); }
secs() { local t0 t1; t0=$(date +%s.%N); bash -c "$1" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }
stat() { local port; port=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).metricsPort)' "$work/ready")
  node -e 'fetch(process.argv[1]).then((r) => r.json()).then((j) => console.log(eval(process.argv[2])))' "http://127.0.0.1:$port/stats" "$1"; }
assembling() { stat 'j.cache.assembling'; }
# How the big file was opened (the counters that exist in this build).
opened() { stat '`passthrough ${j.ops.opensPassthrough}, hashed at open ${j.cache.filesVerifiedAtOpen ?? "-"}, trusted ${j.cache.filesTrustedAtOpen ?? "-"}, re-verified ${j.cache.filesReverified ?? "-"}`'; }

cache() { if [ -n "${WARM_AB_SHARED:-}" ]; then echo "$work/cache-shared"; else echo "$work/cache-$1"; fi; }
fillers=("$@"); [ -n "${WARM_AB_SHARED:-}" ] && fillers=("$1")
for nb in "${fillers[@]}"; do # fill each build's warm cache: a full read, then wait for the whole-file copies
  start "${nb#*=}" "$(cache "${nb%%=*}")"
  (cd "$layer" && find . -type f -print0 | xargs -0 cat | wc -c >/dev/null)
  # A copy is queued by a read reaching the end with every chunk local: the first read's last chunks may still be
  # being written, so read the big file again until its copy exists.
  for _ in $(seq 20); do
    for _ in $(seq 600); do [ "$(assembling)" = 0 ] && break; sleep 0.1; done
    [ "$(stat 'j.cache.filesAssembled')" -ge 1 ] && break
    cat "$layer/big/large.bin" >/dev/null; sleep 1
  done
  stop
done

declare -A dd ra
for r in $(seq "$rounds"); do
  # Rotate the order each round so no build always runs first.
  builds=("$@"); k=$(( (r - 1) % $# )); builds=("${builds[@]:k}" "${builds[@]:0:k}")
  for nb in "${builds[@]}"; do
    n=${nb%%=*} b=${nb#*=}
    start "$b" "$(cache "$n")"; sync; echo 3 > /proc/sys/vm/drop_caches; sleep "${WARM_AB_DELAY:-0}"
    t=$(secs "dd if='$layer/big/large.bin' of=/dev/null bs=1M status=none"); how=$(opened); stop
    start "$b" "$(cache "$n")"; sync; echo 3 > /proc/sys/vm/drop_caches; sleep "${WARM_AB_DELAY:-0}"
    a=$(secs "cd '$layer' && find . -type f -print0 | xargs -0 -n 200 cat | wc -c"); stop
    mbs=$(awk -v t="$t" 'BEGIN { print 536.870912 / t }')
    dd[$n]+="$(printf '%.0f' "$mbs") "; ra[$n]+="$(printf '%.2f' "$a") "
    printf 'round %d %-10s dd %6.0f MB/s  read-all %5.2f s  (load %s; dd: %s)\n' "$r" "$n" "$mbs" "$a" "$(cut -d' ' -f1 /proc/loadavg)" "$how" | tee -a "$work/rows"
  done
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
for nb in "$@"; do n=${nb%%=*}; echo "median $n: dd $(echo "${dd[$n]}" | med) MB/s  read-all $(echo "${ra[$n]}" | med) s  [dd: ${dd[$n]}| read-all: ${ra[$n]}]"; done
# The steadier figure on a loaded machine: the median of each round's ratio to the first build (same minute).
node -e '
  const rows = {}; for (const l of require("fs").readFileSync(process.argv[1], "utf8").split("\n")) {
    const m = /^round (\d+) (\S+)\s+dd\s+(\d+) MB\/s\s+read-all\s+([\d.]+)/.exec(l); if (m) (rows[m[1]] ??= {})[m[2]] = [+m[3], +m[4]]; }
  const med = (xs) => { xs = xs.slice().sort((a, b) => a - b); const h = xs.length >> 1; return xs.length % 2 ? xs[h] : (xs[h - 1] + xs[h]) / 2; };
  const [base, ...rest] = process.argv.slice(2);
  for (const n of rest) { const rs = Object.values(rows).filter((r) => r[n] && r[base]);
    console.log(`paired ${n}/${base}: dd x${med(rs.map((r) => r[n][0] / r[base][0])).toFixed(2)}, read-all time x${med(rs.map((r) => r[n][1] / r[base][1])).toFixed(2)} (${rs.length} rounds)`); }
' "$work/rows" "${@%%=*}"
grep -c 'failed' "$work/daemon.log" | sed 's/^/daemon log lines with "failed": /' || true
