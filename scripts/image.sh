#!/usr/bin/env bash
# Builds the LimeDB image (node and operator in one) from `Dockerfile` with `buildah bud`, tags it
# localhost/limedb:dev and writes a docker archive of it to .cache/image/limedb-dev.tar (for
# `ctr -n k8s.io images import`, `kind load image-archive` or `docker load`).
#
# No container registry is reachable here, so the Dockerfile's base (BASE_IMAGE, python:3.11-slim
# for Docker users) is replaced by a local base: a Debian root filesystem made by `mmdebstrap`
# from Debian's packages (python3, python3-venv) plus the host's CA bundle, because
# package-registry traffic may be re-signed by a local CA and pip inside the build must trust it.
#
# Both images are cached by the hash of their inputs: the base by this script's base pins and the
# CA bundle, the image by Dockerfile, pyproject.toml, README.md, node/, operator/ and the base.
# Set BASE_IMAGE to build on another base that already is in buildah's storage (no mmdebstrap).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/.cache/image"
IMAGE="localhost/limedb:dev"
ARCHIVE="$OUT/limedb-dev.tar"
# The base's pins: Debian suite and the packages it adds to the minimal base.
SUITE="bookworm"
BASE_PACKAGES="passwd,python3,python3-venv,python-is-python3"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
# buildah's default runtime (crun) refuses hybrid cgroups v1; runc works on both.
RUNTIME="${BUILDAH_RUNTIME:-/usr/bin/runc}"

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in buildah runc; do
    command -v "$tool" >/dev/null || die "$tool is not installed (make system-deps installs it)"
done
mkdir -p "$OUT"

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

build_base() {  # build_base <tag>: a Debian root filesystem with python3 as an image
    local tag="$1" t0=$SECONDS tar="$OUT/base-rootfs.tar" ctr
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (make system-deps)"
    [[ -r "$CA_BUNDLE" ]] || die "$CA_BUNDLE is missing (the ca-certificates package)"
    log "building the base $tag with mmdebstrap ($SUITE: $BASE_PACKAGES) ..."
    # The CA bundle and a pip.conf naming it: pip trusts the host's CAs inside the build.
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="mkdir -p \"\$1/etc/ssl/certs\"" \
        --customize-hook="cp $CA_BUNDLE \"\$1$CA_BUNDLE\"" \
        --customize-hook="printf '[global]\ncert = $CA_BUNDLE\n' > \"\$1/etc/pip.conf\"" \
        --customize-hook="rm -rf \"\$1\"/var/lib/apt/lists/* \"\$1\"/var/cache/apt/*" \
        "$SUITE" "$tar" || die "mmdebstrap failed"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$tar" / >/dev/null
    buildah config --env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        --env SSL_CERT_FILE="$CA_BUNDLE" --cmd python3 "$ctr"
    buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
    rm -f "$tar"
    log "base $tag built in $((SECONDS - t0))s"
}

start=$SECONDS
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base="$BASE_IMAGE"
    base_id="$base"
else
    base_hash="$({ sed -n '/^SUITE=/p;/^BASE_PACKAGES=/p' "$0"; declare -f build_base
        cat "$CA_BUNDLE"; } | sha256sum | cut -c1-16)"
    base="localhost/limedb-base:$base_hash"
    have_image "$base" || build_base "$base"
    base_id="$base_hash"
fi

want="$({ echo "$base_id"; cat "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$ROOT/pyproject.toml" \
    "$ROOT/README.md"
    cd "$ROOT" && find node operator -type f -not -path '*/__pycache__/*' \
        -not -name '*.pyc' -not -path '*.egg-info*' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -d' ' -f1)"
STAMP="$OUT/limedb-dev.stamp"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$ARCHIVE" ]] && have_image "$IMAGE"; then
    log "up to date: $IMAGE ($ARCHIVE)"
else
    rm -f "$STAMP"
    old_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
    log "building $IMAGE from Dockerfile on $base ..."
    t0=$SECONDS
    # --network host: pip reaches the package registry without a CNI network for the build.
    buildah bud --quiet --runtime "$RUNTIME" --pull=never --network host --layers \
        --build-arg BASE_IMAGE="$base" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null \
        || die "buildah bud failed"
    log "built in $((SECONDS - t0))s; writing $ARCHIVE ..."
    rm -f "$ARCHIVE.tmp"
    buildah push --quiet "$IMAGE" "docker-archive:$ARCHIVE.tmp:$IMAGE" >/dev/null \
        || die "buildah push to the archive failed"
    mv -f "$ARCHIVE.tmp" "$ARCHIVE"
    # The image this build replaced is untagged now: drop it so the storage does not grow (the
    # build's cached layers stay, for the next build).
    new_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        buildah rmi "$old_id" >/dev/null 2>&1 || true
    fi
    echo "$want" >"$STAMP"
fi
size=$(buildah inspect --type image --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo "")
[[ "$size" =~ ^[0-9]+$ ]] || size=$(stat -c %s "$ARCHIVE")
log "done in $((SECONDS - start))s"
echo "$IMAGE size $((size / 1024 / 1024)) MiB; archive $ARCHIVE ($(($(stat -c %s "$ARCHIVE") / 1024 / 1024)) MiB)"
