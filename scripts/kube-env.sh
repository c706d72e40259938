# Sourced by scripts/kube-up.sh and scripts/kube-down.sh: where the one-node Kubernetes lives.
# One cluster per machine: its addresses, ports and /run/limedb-kube are fixed, so every
# worktree and test session that calls kube-up shares the same running cluster.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KBIN="$ROOT/.cache/k8s/bin"
KIMAGES="$ROOT/.cache/k8s/images"
LIMEDB_IMAGE_TAR="$ROOT/.cache/image/limedb-dev.tar"
KRUN=/run/limedb-kube             # everything of one cluster's life; kube-down removes it
# containerd's root (the unpacked images) outlives the cluster, so that the next kube-up need
# not import unchanged images again; kube-down removes every container from it.
CONTAINERD_ROOT="$ROOT/.cache/kube/containerd"
KLOCK=/run/limedb-kube.lock       # serialises kube-up and kube-down
KUBECONFIG_PATH="$KRUN/admin.kubeconfig"
SOCK="$KRUN/containerd/containerd.sock"

NODE_NAME=limedb-node
BRIDGE=limedb0
NODE_IP=10.215.0.1                # the bridge's address: node IP, API server, kubelet
POD_SUBNET=10.215.0.0/24
SERVICE_CIDR=10.216.0.0/24
API_SERVICE_IP=10.216.0.1
DNS_IP=10.216.0.10
API_PORT=6443
ETCD_PORT=23790
ETCD_PEER_PORT=23800
KCM_PORT=10357
SCHEDULER_PORT=10359
KUBELET_HEALTHZ_PORT=10348
PROXY_HEALTHZ_PORT=10356
PROXY_METRICS_PORT=10349
PV_COUNT="${LIMEDB_KUBE_PVS:-32}"
PV_SIZE="${LIMEDB_KUBE_PV_SIZE:-20Gi}"

# Started in this order, stopped in the reverse one.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
# Kernel settings the node changes (the kubelet: panic, overcommit; the bridge plugin and
# kube-proxy: forwarding, conntrack): kube-up records them, kube-down puts them back.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
    net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding net.ipv4.conf.all.route_localnet
    kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes
    net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
    net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
    net.netfilter.nf_conntrack_tcp_timeout_close_wait net.netfilter.nf_conntrack_tcp_be_liberal)

kube_log() { printf '[kube %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
kube_die() { kube_log "ERROR: $*"; exit 1; }

kctl() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
kctr() { ctr --address "$SOCK" -n k8s.io "$@"; }

pid_of() {  # pid_of <component>: its pid if it is running
    local pid
    pid="$(cat "$KRUN/pids/$1.pid" 2>/dev/null)" || return 1
    [[ -n "$pid" ]] && alive "$pid" || return 1
    # A pid the kernel gave to another program since is not ours to signal.
    [[ "$(exe_name "$pid")" == "$1" ]] || return 1
    echo "$pid"
}

exe_name() {  # exe_name <pid>: the file name of its program (also once it was rebuilt)
    local exe
    exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
    exe="${exe% (deleted)}"
    echo "${exe##*/}"
}

alive() {  # alive <pid>: running (a zombie waiting for init to reap it is not)
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]]
}

cluster_pids() {
    # Every process of the cluster, found by what it runs and its arguments naming $KRUN:
    # the components and the runc shims of its containerd (these name its socket).
    local file pid name
    for file in $(grep -lsF -- "$KRUN/" /proc/[0-9]*/cmdline); do
        pid="${file#/proc/}"
        pid="${pid%/cmdline}"
        name="$(exe_name "$pid")" || continue
        case " ${COMPONENTS[*]} containerd-shim-runc-v2 " in
            *" $name "*) alive "$pid" && echo "$pid" ;;
        esac
    done
}

nft_chains() {  # every nftables chain as "family table chain", one a line, sorted
    nft -j list chains 2>/dev/null | python3 -c '
import json, sys
for item in json.load(sys.stdin)["nftables"]:
    if "chain" in item:
        print(item["chain"]["family"], item["chain"]["table"], item["chain"]["name"])
' | LC_ALL=C sort
}
