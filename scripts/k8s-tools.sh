#!/usr/bin/env bash
# Builds the real Kubernetes the k8s test tier runs from the Go module proxy into .cache/k8s/bin,
# skipping work already done: the control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), the node (kubelet, kube-proxy), CoreDNS, kubectl and helm. Then the node's
# images its pods run: the sandbox ("pause") image from the project's own tools/pause/pause.c and
# CoreDNS's (scripts/node-images.sh).
#
# The binaries are rebuilt only when tools/k8s/**/go.mod or go.sum change (a stamp records
# their hash), so a warm `make test` spends well under a second here. Go's module and build
# caches stay in their default $HOME locations, which makes a rebuild after a pin change cheap.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/tools/k8s"
OUT="$ROOT/.cache/k8s/bin"
STAMP="$ROOT/.cache/k8s/stamp"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd
    helm coredns)
K8S_VERSION="v1.36.3"

log() { printf '[k8s-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "go is not installed; the k8s tier builds its binaries with Go >= 1.26"

want="$(cat "$TOOLS/go.mod" "$TOOLS/go.sum" "$TOOLS/helm/go.mod" "$TOOLS/helm/go.sum" \
    "$TOOLS/coredns/go.mod" "$TOOLS/coredns/go.sum" "$TOOLS/coredns/main.go" "$0" | sha256sum | cut -d' ' -f1)"

all_present() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done
}

if all_present && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "up to date in .cache/k8s/bin (${BINARIES[*]})"
    exec bash "$ROOT/scripts/node-images.sh"
fi

mkdir -p "$OUT"
rm -f "$STAMP"
start=$SECONDS
# -trimpath and stripped symbols keep the link step (the slow part of each binary) short;
# the version stamp makes `kube-apiserver --version` and /version report the pinned release.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36"

build() {  # build <module dir> <output name> <package> [VAR=value for go build ...]
    local dir="$1" name="$2" pkg="$3" t0=$SECONDS
    log "building $name from $pkg (cold builds take minutes on 2 cores) ..."
    (cd "$dir" && env "${@:4}" go build -trimpath -ldflags "$ldflags" -o "$OUT/$name.tmp" "$pkg") \
        || die "go build of $pkg failed (see the compiler output above)"
    mv -f "$OUT/$name.tmp" "$OUT/$name"
    log "built $name in $((SECONDS - t0))s"
}

log "downloading modules for tools/k8s ..."
(cd "$TOOLS" && go mod download) || die "go mod download failed in tools/k8s (network or GOPROXY?)"
(cd "$TOOLS/helm" && go mod download) || die "go mod download failed in tools/k8s/helm"
(cd "$TOOLS/coredns" && go mod download) || die "go mod download failed in tools/k8s/coredns"

build "$TOOLS" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build "$TOOLS" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build "$TOOLS" kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build "$TOOLS" kubelet k8s.io/kubernetes/cmd/kubelet
build "$TOOLS" kube-proxy k8s.io/kubernetes/cmd/kube-proxy
build "$TOOLS" kubectl k8s.io/kubernetes/cmd/kubectl
build "$TOOLS" etcd go.etcd.io/etcd/server/v3
build "$TOOLS/helm" helm helm.sh/helm/v3/cmd/helm
# CoreDNS with the plugins tools/k8s/coredns/main.go names. It runs in a pod, from an image
# holding nothing but this binary: static, without cgo.
ldflags="-s -w"
build "$TOOLS/coredns" coredns . CGO_ENABLED=0

for b in "${BINARIES[@]}"; do
    [[ -x "$OUT/$b" ]] || die "$b missing after the build"
done
"$OUT/kube-apiserver" --version >&2 || die "kube-apiserver does not run"
version=$("$OUT/etcd" --version) || die "etcd does not run"
echo "${version%%$'\n'*}" >&2  # the first line only; `| head -1` could SIGPIPE etcd under pipefail
"$OUT/helm" version --short >&2 || die "helm does not run"
"$OUT/kubelet" --version >&2 || die "kubelet does not run"
"$OUT/coredns" -version >&2 || die "coredns does not run"
echo "$want" >"$STAMP"
log "done in $((SECONDS - start))s: ${BINARIES[*]} in .cache/k8s/bin"
exec bash "$ROOT/scripts/node-images.sh"
