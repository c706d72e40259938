#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks drive as real peers:
# redis-server / redis-tools (RESP differential tests), nftables + iproute2 (partition tests), wrk,
# libfaketime + gcc (clock-skew tests: a node's wall clock offset at run time), buildah, runc and
# mmdebstrap (make image), chromium (the dashboard test drives it headless through playwright;
# playwright's own browsers are not used); the node of the one-node Kubernetes
# (scripts/kube-up.sh): containerd, runc, the CNI plugins, conntrack, iptables (kube-proxy
# probes it), openssl (its certificates; also the TLS tests' and benchmarks' CAs and node
# certificates, tests/support/certs.py), busybox-static (the image of its own tests),
# prometheus (the monitoring kit's alerts evaluated by a real Prometheus, tests/support/prometheus.py).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v wrk >/dev/null || need+=(wrk)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
command -v gcc >/dev/null || need+=(gcc libc6-dev)  # builds tests/support/faketime_sleep.c
# make image (scripts/image.sh): buildah builds Dockerfile with runc (crun refuses hybrid
# cgroups v1) on a Debian base made by mmdebstrap.
command -v buildah >/dev/null || need+=(buildah)
command -v runc >/dev/null || need+=(runc)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v chromium >/dev/null || need+=(chromium)
command -v containerd >/dev/null || need+=(containerd)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v conntrack >/dev/null || need+=(conntrack)
command -v iptables >/dev/null || need+=(iptables)
command -v openssl >/dev/null || need+=(openssl)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v prometheus >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The distribution's redis-server starts a service on install; tests start their own.
systemctl stop redis-server >/dev/null 2>&1 || true
systemctl stop prometheus >/dev/null 2>&1 || true
