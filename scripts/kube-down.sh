#!/usr/bin/env bash
# Stops the one-node Kubernetes of scripts/kube-up.sh and puts the machine back as kube-up found
# it: every process it started (and every container) ends, the pods' network namespaces and
# mounts go, the bridge and its routes go, kube-proxy's nftables tables go, the kernel settings
# the kubelet and the bridge plugin changed get their old values, and /run/limedb-kube (etcd's
# data, the volumes, the logs) is removed. The binaries and image archives under .cache/ stay.
# Safe to run when nothing is up. Exits non-zero if something could not be put back.
set -uo pipefail
# shellcheck source=scripts/kube-env.sh
source "$(dirname "$0")/kube-env.sh"
[[ "$(id -u)" == 0 ]] || kube_die "kube-down needs root"

exec 9>"$KLOCK"
flock 9
t0=$SECONDS
problems=()

stop() {  # stop <seconds> <component>...: SIGTERM to all, SIGKILL to those still running then
    local grace=$1 c pid pids=() deadline
    shift
    deadline=$((SECONDS + grace))
    for c in "$@"; do
        pid="$(pid_of "$c")" || continue
        kill -TERM "$pid" 2>/dev/null
        pids+=("$pid")
    done
    for pid in "${pids[@]}"; do
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                kill -KILL "$pid" 2>/dev/null
            fi
            sleep 0.1
        done
    done
}

remove_containers() {
    # Every task and container in containerd's k8s.io namespace is the kubelet's; the pod
    # sandboxes' network namespaces are named in their specs and unmounted after.
    local id ns
    if ! pid_of containerd >/dev/null; then
        # Crashed or killed: the containers it left still run. Start it again to end them.
        [[ -f "$KRUN/containerd/config.toml" ]] || return 0
        kube_log "containerd is not running: starting it to remove the containers left behind"
        (exec setsid containerd --config "$KRUN/containerd/config.toml" </dev/null \
            >>"$KRUN/logs/containerd.log" 2>&1 9>&-) &
        echo $! >"$KRUN/pids/containerd.pid"
        local deadline=$((SECONDS + 30))
        until kctr version >/dev/null 2>&1; do
            ((SECONDS < deadline)) || { problems+=("containerd does not restart"); return 0; }
            sleep 0.3
        done
    fi
    for id in $(kctr containers ls -q 2>/dev/null); do
        ns="$(kctr containers info "$id" 2>/dev/null \
            | grep -o '"path": *"/[^"]*/netns/[^"]*"' | head -1 | sed 's/.*"\(\/[^"]*\)"$/\1/')"
        [[ -n "$ns" ]] && echo "$ns" >>"$KRUN/netns.list"
    done
    for id in $(kctr tasks ls -q 2>/dev/null); do
        kctr tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1
    done
    for id in $(kctr tasks ls -q 2>/dev/null); do
        kctr tasks delete --force "$id" >/dev/null 2>&1
    done
    for id in $(kctr containers ls -q 2>/dev/null); do
        kctr containers delete "$id" >/dev/null 2>&1
    done
}

kill_leftovers() {
    # Whatever of the cluster still runs (a shim, or a component whose pid file was lost).
    local pid deadline
    for pid in $(cluster_pids); do
        kube_log "ending $(exe_name "$pid") (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
    done
    deadline=$((SECONDS + 15))
    while [[ -n "$(cluster_pids)" ]] && ((SECONDS < deadline)); do sleep 0.2; done
    for pid in $(cluster_pids); do kill -KILL "$pid" 2>/dev/null; done
    # Containers' processes whose task containerd could not end: the kubelet put every one
    # in a cgroup under kubepods/.
    for pid in $(pod_pids); do kill -KILL "$pid" 2>/dev/null; done
    sleep 0.2
    [[ -z "$(cluster_pids)$(pod_pids)" ]] \
        || problems+=("processes $(cluster_pids | tr '\n' ' ')$(pod_pids | tr '\n' ' ')survive")
}

pod_pids() {
    find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs \
        -exec cat {} + 2>/dev/null | sort -u
}

unmount_all() {
    local target ns
    if [[ -f "$KRUN/netns.list" ]]; then
        while read -r ns; do
            umount "$ns" 2>/dev/null
            rm -f "$ns"
        done <"$KRUN/netns.list"
    fi
    # Deepest first: volumes inside pod dirs, overlay roots inside containerd's state.
    while read -r target; do
        umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null \
            || problems+=("cannot unmount $target")
    done < <(findmnt -rn -o TARGET | grep -F "$KRUN/" | sort -r)
}

remove_cgroups() {
    # The kubelet made kubepods/ in every hierarchy (cgroupfs driver); empty once pods are gone.
    local dir
    for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [[ -d "$dir" ]] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ -d "$dir" ]] && problems+=("cgroup $dir is still in use")
    done
}

remove_kube_chains() {  # remove_kube_chains <iptables|ip6tables>
    # The kubelet's own iptables chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT)
    # and the rules that jump to them; KUBE-* is Kubernetes' prefix, nothing else here uses it.
    local cmd=$1 table rule chain
    for table in filter nat mangle; do
        while read -r rule; do
            # shellcheck disable=SC2086  # a rule as iptables -S prints it, split into words
            "$cmd" -t "$table" -D ${rule#-A } 2>/dev/null
        done < <("$cmd" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-')
        for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
            "$cmd" -t "$table" -F "$chain" 2>/dev/null
        done
        for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
            "$cmd" -t "$table" -X "$chain" 2>/dev/null || problems+=("$cmd -t $table chain $chain")
        done
    done
}

remove_nft_tables() {
    # kube-proxy (nftables mode) owns its tables; the kubelet adds iptables chains (iptables-nft
    # tables). Tables that were not there before kube-up and are empty now go too.
    local family table line
    for family in ip ip6; do
        nft list table "$family" kube-proxy >/dev/null 2>&1 \
            && { nft delete table "$family" kube-proxy || problems+=("nft table $family kube-proxy"); }
    done
    command -v iptables >/dev/null && remove_kube_chains iptables
    command -v ip6tables >/dev/null && remove_kube_chains ip6tables
    [[ -f "$KRUN/nft-tables.before" ]] || return 0
    local chain
    # Chains iptables-nft made for the kubelet's rules (INPUT, OUTPUT, ...): now empty, gone.
    while read -r family table chain; do
        [[ -n "$chain" ]] || continue
        nft list chain "$family" "$table" "$chain" 2>/dev/null \
            | grep -qv '^[[:space:]]*\(table\|chain\|type\|}\|$\)' && continue
        nft delete chain "$family" "$table" "$chain" 2>/dev/null \
            || kube_log "note: chain $family $table $chain appeared meanwhile (in use, kept)"
    done < <(LC_ALL=C comm -13 "$KRUN/nft-chains.before" <(nft_chains))
    while read -r line; do
        [[ -n "$line" ]] || continue
        read -r _ family table <<<"$line"
        if ! nft list table "$family" "$table" 2>/dev/null | grep -q '^[[:space:]]*\(chain\|set\|map\) '; then
            nft delete table "$family" "$table" 2>/dev/null || problems+=("nft table $family $table")
        fi
    done < <(LC_ALL=C comm -13 "$KRUN/nft-tables.before" <(nft list tables 2>/dev/null | LC_ALL=C sort))
    if nft list ruleset 2>/dev/null | grep -q 'KUBE-\|kube-proxy'; then
        problems+=("Kubernetes rules are left in the nftables ruleset")
    fi
}

restore_sysctls() {
    local key value now
    [[ -f "$KRUN/sysctl.saved" ]] || return 0
    # In the saved order: ip_forward first, as writing it resets the per-interface forwarding.
    while IFS='=' read -r key value; do
        now="$(sysctl -n "$key" 2>/dev/null)" || continue
        [[ "$now" == "$value" ]] && continue
        if sysctl -qw "$key=$value" >/dev/null 2>&1; then
            kube_log "restored $key=$value (was $now)"
        else
            problems+=("cannot restore $key=$value")
        fi
    done <"$KRUN/sysctl.saved"
}

if [[ ! -e "$KRUN" ]] && ! ip link show "$BRIDGE" >/dev/null 2>&1 && [[ -z "$(cluster_pids)" ]]; then
    kube_log "no cluster is up"
    exit 0
fi
kube_log "stopping the cluster ..."
stop 10 kube-proxy kubelet
remove_containers
# The API server's graceful shutdown waits for its clients' watches: of no use here.
stop 2 kube-scheduler kube-controller-manager containerd kube-apiserver
stop 10 etcd
kill_leftovers
unmount_all
remove_cgroups
ip link show "$BRIDGE" >/dev/null 2>&1 && { ip link delete "$BRIDGE" || problems+=("bridge $BRIDGE"); }
remove_nft_tables
restore_sysctls
find /var/log/containers -maxdepth 1 -type l -lname "$KRUN/*" -delete 2>/dev/null

# What kube-down promises, checked rather than assumed.
ip link show "$BRIDGE" >/dev/null 2>&1 && problems+=("bridge $BRIDGE is still there")
findmnt -rn -o TARGET | grep -qF "$KRUN/" && problems+=("mounts under $KRUN remain")
if [[ -f "$KRUN/netns.list" ]]; then
    while read -r ns; do
        [[ -e "$ns" ]] && problems+=("network namespace $ns remains")
    done <"$KRUN/netns.list"
fi
[[ -z "$(cluster_pids)" ]] || problems+=("cluster processes remain")
if [[ -f "$KRUN/sysctl.saved" ]]; then
    while IFS='=' read -r key value; do
        now="$(sysctl -n "$key" 2>/dev/null)" || continue
        [[ "$now" == "$value" ]] || problems+=("$key is $now, was $value")
    done <"$KRUN/sysctl.saved"
fi
if ((${#problems[@]} == 0)); then
    rm -rf "$KRUN"
    kube_log "down in $((SECONDS - t0))s"
else
    kube_log "down in $((SECONDS - t0))s, but: ${problems[*]} (state kept in $KRUN)"
    exit 1
fi
