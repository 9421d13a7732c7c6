# Set-up shared by the A/B scripts that start containers from the realistic image (bench/start-ab.sh,
# bench/native-ab.sh); sourced, with the rounds as $1 and the temp dir's prefix as $2 (the caller shifts its own args).
# The image is the one bench/lib/realistic-image.ts builds and caches (`npm run bench -- coldstart`).
rounds=$1
oci=${THINFS_BENCH_CACHE:-/var/cache/thinfs-bench}/realistic-v1/oci
[ -d "$oci" ] || { echo "no realistic image at $oci: run 'npm run bench -- coldstart' once" >&2; exit 2; }
work=$(mktemp -d "/tmp/$2-XXXXXX")  # short: podman refuses a runroot path over 50 characters
mp=$work/mnt; mkdir -p "$mp"
pid=
# The python workload of bench/coldstart.ts.
PY=(/usr/bin/python3 -c 'import json,email,http.client,asyncio,decimal,sqlite3')
