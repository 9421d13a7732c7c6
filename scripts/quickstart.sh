#!/usr/bin/env bash
# README command 1: set up this machine, then run the main job on an embedded default:
# a store inside the checkout (./store), a sample layer made from this machine's own files,
# ingested, listed, mounted with FUSE, read back through the mount and checked, unmounted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

THINFS="node dist/src/cli/main.js"
DEMO=.demo
STORE=store
rm -rf "$DEMO"; mkdir -p "$DEMO"

# A sample layer: the Python standard library and Perl modules of this machine.
PY=$(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | head -1)
tar --numeric-owner -C / -czf "$DEMO/sample-layer.tar.gz" "${PY#/}" usr/share/perl5
echo "== sample layer: $(du -h "$DEMO/sample-layer.tar.gz" | cut -f1) ($DEMO/sample-layer.tar.gz)"

$THINFS init "$STORE" >/dev/null
echo "== ingest"
$THINFS ingest "$DEMO/sample-layer.tar.gz" --store "$STORE"
ID=$($THINFS ingest "$DEMO/sample-layer.tar.gz" --store "$STORE" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).diffId))')
echo "== layers in $STORE"; $THINFS layers --store "$STORE"
echo "== thinfs ls -l $ID /${PY#/}/json"; $THINFS ls -l --store "$STORE" "$ID" "/${PY#/}/json"

echo "== mount (FUSE) and read through it"
MNT="$DEMO/mnt"; mkdir -p "$MNT"
$THINFS mount "$STORE" "$MNT" --cache-dir "$DEMO/cache" --ready-file "$DEMO/ready.json" > "$DEMO/mount.log" 2>&1 &
MPID=$!
for _ in $(seq 1 100); do [ -f "$DEMO/ready.json" ] && break; sleep 0.1; done
[ -f "$DEMO/ready.json" ] || { cat "$DEMO/mount.log"; echo "mount did not come up"; exit 1; }
HEX=${ID#sha256:}
F="${PY#/}/json/decoder.py"
cmp "$MNT/layers/$HEX/$F" "/$F" && echo "   $F read through the mount matches the original"
python3 -c "import os; print('   python3 lists', len(os.listdir('$MNT/layers/$HEX/${PY#/}')), 'entries in the mounted stdlib')"
echo "   stats: $(cat "$MNT/.thinfs/stats" 2>/dev/null | head -c 400)"
$THINFS unmount "$MNT"
wait $MPID || true
echo "== done: store at ./$STORE, try: thinfs --help (installed in /usr/local/bin by scripts/setup.sh)"
