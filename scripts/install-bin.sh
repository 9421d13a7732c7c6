#!/usr/bin/env bash
# Puts `thinfs` and `docker2thin` on PATH for the README's commands and deploy/thinfs-mount.service
# (ExecStart=/usr/local/bin/thinfs): small wrappers running this checkout's dist/ with this node,
# so they keep working across `npm run build` (which recreates dist/ without execute bits).
# Usage: bash scripts/install-bin.sh [DIR]   (default /usr/local/bin; run by scripts/setup.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-/usr/local/bin}
NODE=$(command -v node) || { echo "install-bin: node not found on PATH" >&2; exit 1; }
mkdir -p "$DIR"
for pair in thinfs:dist/src/cli/main.js docker2thin:dist/tools/docker2thin.js; do
  name=${pair%%:*}; main=$ROOT/${pair#*:}
  [ -f "$main" ] || { echo "install-bin: $main missing: run npm run build first" >&2; exit 1; }
  tmp=$(mktemp "$DIR/.$name.XXXXXX")
  printf '#!/bin/sh\nexec %q %q "$@"\n' "$NODE" "$main" > "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$DIR/$name"
  echo "$DIR/$name -> $main"
done
