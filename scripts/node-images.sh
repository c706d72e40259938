#!/usr/bin/env bash
# Builds the images the one-node Kubernetes (scripts/kube-up.sh) runs besides LimeDB's own, each
# one static binary in an image made `from scratch` by buildah, saved as a docker archive for
# `ctr -n k8s.io images import` (no registry is reachable, none is involved):
#   - pause:   the sandbox of every pod, from the project's own tools/pause/pause.c;
#   - coredns: the cluster DNS, .cache/k8s/bin/coredns (scripts/k8s-tools.sh builds it);
#   - busybox: Debian's static busybox with its applets (sh, nslookup, wget, httpd, ...), the
#     image of the tests that check the cluster itself (tests/k8s/test_realkube.py).
# Cached by the hash of the files: .cache/k8s/images/NAME.ref holds the image's name
# (localhost/limedb-NAME:<hash>) and its archive's file name in that folder.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SELF="$ROOT/scripts/node-images.sh"
DIR="$ROOT/.cache/k8s/images"
BIN="$ROOT/.cache/k8s/bin"

log() { printf '[node-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

work="$(mktemp -d)"
container=""
cleanup() {
    if [[ -n "$container" ]]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

scratch_image() {  # scratch_image <name> <root filesystem dir> <entrypoint> <uid>
    local name="$1" rootfs="$2" entrypoint="$3" uid="$4" hash ref archive
    hash="$( (cd "$rootfs" && find . -printf '%p %l %m\n' | LC_ALL=C sort \
        && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 cat; cat "$SELF") \
        | sha256sum | cut -c1-16)"
    ref="localhost/limedb-$name:$hash"
    archive="$name-$hash.tar"
    if [[ -s "$DIR/$archive" && -f "$DIR/$name.ref" \
        && "$(cat "$DIR/$name.ref")" == "$ref $archive" ]]; then
        log "up to date: $ref"
        return
    fi
    container="$(buildah from scratch)"
    buildah copy --quiet "$container" "$rootfs" / >/dev/null
    buildah config --entrypoint "[\"$entrypoint\"]" --user "$uid:$uid" \
        --label org.opencontainers.image.source=limedb "$container"
    buildah commit --quiet --rm "$container" "$ref" >/dev/null
    container=""
    rm -f "$DIR/$archive.tmp"
    buildah push --quiet "$ref" "docker-archive:$DIR/$archive.tmp:$ref" >/dev/null
    mv -f "$DIR/$archive.tmp" "$DIR/$archive"
    echo "$ref $archive" >"$DIR/$name.ref"
    # Older builds of this image are of no use any more.
    find "$DIR" -name "$name-*.tar" ! -name "$archive" -delete
    buildah images --format '{{.Name}}:{{.Tag}}' "localhost/limedb-$name" 2>/dev/null \
        | grep -vxF "$ref" | xargs -r buildah rmi >/dev/null 2>&1 || true
    log "built $ref ($(du -h "$DIR/$archive" | cut -f1))"
}

static_rootfs() {  # static_rootfs <dir> <binary> <path in image>: one static binary, mode 0555
    if ldd "$2" >/dev/null 2>&1; then die "$2 is not static"; fi
    mkdir -p "$1/$(dirname "$3")"
    install -m 0555 "$2" "$1/$3"
}

command -v buildah >/dev/null || die "buildah is missing (scripts/system-deps.sh installs it)"
command -v gcc >/dev/null || die "gcc is missing (scripts/system-deps.sh installs it)"
[[ -x "$BIN/coredns" ]] || die "$BIN/coredns is missing: run scripts/k8s-tools.sh"
mkdir -p "$DIR"

gcc -static -Os -Wall -Wextra -Werror -o "$work/pause" "$ROOT/tools/pause/pause.c" \
    || die "gcc -static failed on tools/pause/pause.c (libc6-dev gives the static libc)"
strip "$work/pause"
"$work/pause" -v >/dev/null || die "the pause binary does not run"
static_rootfs "$work/pause-root" "$work/pause" /pause
scratch_image pause "$work/pause-root" /pause 65535

static_rootfs "$work/coredns-root" "$BIN/coredns" /coredns
scratch_image coredns "$work/coredns-root" /coredns 65532

[[ -x /bin/busybox ]] || die "/bin/busybox is missing (busybox-static; scripts/system-deps.sh)"
static_rootfs "$work/busybox-root" /bin/busybox /bin/busybox
for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$work/busybox-root/bin/$applet"
done
mkdir -p "$work/busybox-root/tmp"
chmod 1777 "$work/busybox-root/tmp"
scratch_image busybox "$work/busybox-root" /bin/sh 65534
