#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (Apache-2.0), the real S3-compatible server the backup tests upload
# to, from the Go module proxy into .cache/seaweedfs/bin/weed. tools/seaweedfs/go.mod pins it
# (a `tool` directive: weed is a main package, which cannot be imported).
#
# The binary is rebuilt only when tools/seaweedfs/go.mod or go.sum (or this script) change: a
# stamp records their hash, so a warm `make test` spends well under a second here. Go's module
# and build caches stay in their default $HOME locations, like scripts/k8s-tools.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/tools/seaweedfs"
OUT="$ROOT/.cache/seaweedfs/bin"
STAMP="$ROOT/.cache/seaweedfs/stamp"
PKG="github.com/seaweedfs/seaweedfs/weed"

log() { printf '[seaweedfs %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "go is not installed; the backup tests build weed with Go >= 1.26"

want="$(cat "$TOOLS/go.mod" "$TOOLS/go.sum" "$0" | sha256sum | cut -d' ' -f1)"

if [[ -x "$OUT/weed" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "up to date in .cache/seaweedfs/bin/weed"
    exit 0
fi

mkdir -p "$OUT"
rm -f "$STAMP"
start=$SECONDS
log "downloading modules for tools/seaweedfs ..."
(cd "$TOOLS" && go mod download) || die "go mod download failed in tools/seaweedfs (network or GOPROXY?)"
log "building weed from $PKG (a cold build takes minutes on 2 cores) ..."
# -trimpath and stripped symbols keep the link step short.
(cd "$TOOLS" && go build -trimpath -ldflags "-s -w" -o "$OUT/weed.tmp" "$PKG") \
    || die "go build of $PKG failed (see the compiler output above)"
mv -f "$OUT/weed.tmp" "$OUT/weed"
"$OUT/weed" version >&2 || die "weed does not run"
echo "$want" >"$STAMP"
log "done in $((SECONDS - start))s: .cache/seaweedfs/bin/weed"
