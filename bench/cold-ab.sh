#!/usr/bin/env bash
# Paired A/B of cold sequential reads between thinfs builds (issue 14: cold sequential from a local store): one store
# of a 512 MiB incompressible file; each round, alternating builds, a fresh daemon on an empty cache, page cache
# dropped, then `dd bs=1M` of the file through the mount. Prints every sample and the medians. On a machine loaded by
# other work only neighbouring runs compare, hence the alternation. Each sample also prints the daemon's CPU seconds.
# Usage (root): bench/cold-ab.sh ROUNDS NAME=BUILD_DIR [NAME=BUILD_DIR...]   (BUILD_DIR: a built checkout)
# COLD_AB_ARGS: extra mount arguments (e.g. --no-passthrough).
set -euo pipefail
rounds=$1; shift
work=$(mktemp -d /tmp/thinfs-cold-ab-XXXXXX)
mp=$work/mnt; mkdir -p "$mp" "$work/src/big"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; umount -l "$mp" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c $((512 << 20)) /dev/urandom > "$work/src/big/large.bin"
tar -cf "$work/tree.tar" --numeric-owner -C "$work/src" .
rm -rf "$work/src"
first=${1#*=}
node "$first/dist/src/cli/main.js" ingest "$work/tree.tar" --store "$work/store" --init --no-progress >/dev/null
rm "$work/tree.tar"
hex=$(ls "$work/store/layers" | grep '\.json$' | head -1); hex=${hex%.json}
declare -A samples
for r in $(seq "$rounds"); do
  for nb in "$@"; do
    name=${nb%%=*}; dir=${nb#*=}
    rm -rf "$work/cache" "$work/ready"
    THINFS_LOG_LEVEL=warn node "$dir/dist/src/cli/main.js" mount "$work/store" "$mp" --cache-dir "$work/cache" --ready-file "$work/ready" \
      --cache-quota 20G ${COLD_AB_ARGS:-} 2>>"$work/daemon.log" &
    pids=($!)
    for _ in $(seq 400); do [ -e "$work/ready" ] && break; sleep 0.025; done
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    dd if="$mp/layers/$hex/big/large.bin" of=/dev/null bs=1M status=none
    t1=$(date +%s.%N)
    # The daemon's CPU time (user + system, since its start): steadier than the rate on a shared machine.
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/${pids[0]}/stat")
    kill "${pids[0]}"; wait "${pids[0]}" || true; pids=()
    mbs=$(echo "536.870912 / ($t1 - $t0)" | bc -l)
    printf '%s round %d: %.0f MB/s, daemon CPU %.2f s\n' "$name" "$r" "$mbs" "$cpu"
    samples[$name]="${samples[$name]:-} $mbs"
  done
done
for nb in "$@"; do
  name=${nb%%=*}
  med=$(echo ${samples[$name]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%s: median %.0f MB/s (%s)\n' "$name" "$med" "$(echo ${samples[$name]} | xargs printf '%.0f ')"
done
tail -5 "$work/daemon.log" >&2 || true
