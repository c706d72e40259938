#!/usr/bin/env bash
# Starts a real one-node Kubernetes on this machine, or reuses the one already running:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (runc, bridge CNI),
# kubelet, kube-proxy (nftables), CoreDNS as a Deployment in kube-system, a StorageClass `local`
# of static local PersistentVolumes, and the images the pods run imported into the node's
# containerd (pause, CoreDNS, busybox: scripts/node-images.sh; and localhost/limedb:dev when
# `make image` made it).
#
# Prints progress on stderr and `KUBECONFIG=<path>` as the last line of stdout.
#   scripts/kube-up.sh                 start or reuse; re-import a changed limedb image, renew
#                                      Released PVs
#   scripts/kube-up.sh --import-only   only (re-)import the images into the running cluster
# scripts/kube-down.sh stops it all and puts back what it changed. docs/kubernetes.md has more.
set -euo pipefail
# shellcheck source=scripts/kube-env.sh
source "$(dirname "$0")/kube-env.sh"

import_only=0
case "${1:-}" in
    "") ;;
    --import-only) import_only=1 ;;
    *) kube_die "usage: $0 [--import-only]" ;;
esac
[[ "$(id -u)" == 0 ]] || kube_die "a kubelet needs root"

exec 9>"$KLOCK"
flock 9

wait_until() {  # wait_until <seconds> <what> <command...>: polls the command until it succeeds
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            kube_log "ERROR: no $what after ${limit}s; logs in $KRUN/logs"
            return 1
        fi
        sleep 0.3
    done
}

running() {  # every component alive and the API server ready
    local c
    for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
    kctl get --raw /readyz >/dev/null 2>&1
}

start() {  # start <component> <command...>: in a session of its own, so it outlives this script
    local name=$1
    shift
    # 9>&-: a daemon holding the lock's descriptor would hold the lock for its whole life.
    (exec setsid "$@" </dev/null >>"$KRUN/logs/$name.log" 2>&1 9>&-) &
    echo $! >"$KRUN/pids/$name.pid"
}

# --- certificates and kubeconfigs -----------------------------------------------------------

ssl() { openssl "$@" 2>>"$KRUN/logs/openssl.log"; }

make_cert() {  # make_cert <name> <subject> <extensions>
    local name=$1 pki="$KRUN/pki"
    ssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key"
    ssl req -new -key "$pki/$name.key" -subj "$2" -out "$pki/$name.csr"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' \
        "$3" >"$pki/$name.ext"
    ssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.crt"
}

write_kubeconfig() {  # write_kubeconfig <file> <cert name>
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: limedb
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $KRUN/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $KRUN/pki/$2.crt
    client-key: $KRUN/pki/$2.key
contexts:
- name: limedb
  context: {cluster: limedb, user: $2}
current-context: limedb
EOF
}

make_pki() {
    local pki="$KRUN/pki" client="extendedKeyUsage=clientAuth"
    mkdir -p "$pki"
    chmod 700 "$pki"
    ssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key"
    ssl req -x509 -new -key "$pki/ca.key" -days 30 -subj /CN=limedb-kube-ca -out "$pki/ca.crt"
    make_cert apiserver /CN=kube-apiserver "extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    make_cert kubelet-serving "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    make_cert admin /O=system:masters/CN=limedb-kube-admin "$client"
    make_cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client "$client"
    make_cert controller-manager /CN=system:kube-controller-manager "$client"
    make_cert scheduler /CN=system:kube-scheduler "$client"
    make_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    make_cert kube-proxy /CN=system:kube-proxy "$client"
    ssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key"
    ssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
    local n
    for n in admin controller-manager scheduler kubelet kube-proxy; do
        write_kubeconfig "$KRUN/$n.kubeconfig" "$n"
    done
}

# --- configuration files --------------------------------------------------------------------

write_configs() {
    local pause_ref=$1
    mkdir -p "$KRUN/containerd" "$KRUN/cni/net.d" "$KRUN/kubelet" "$KRUN/pod-logs"
    mkdir -p "$CONTAINERD_ROOT"
    echo "$CONTAINERD_ROOT" >"$KRUN/containerd/root"
    cat >"$KRUN/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$KRUN/containerd/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$KRUN/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # root here lacks CAP_SYS_RESOURCE: without this, runc cannot lower a container's
  # oom_score_adj and every sandbox fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$KRUN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$KRUN/cni/net.d"
    max_conf_num = 1
EOF
    # The bridge is kube-up's own (made before anything starts, so the API server and the
    # kubelet have their address). Pods get a route to the Services and none to the outside
    # (no default route, no masquerade): nothing in the cluster talks beyond this machine.
    cat >"$KRUN/cni/net.d/10-limedb.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "limedb",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "${NODE_IP%.*}.10",
                     "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}],
        "dataDir": "$KRUN/cni/ipam"
      }
    }
  ]
}
EOF
    cat >"$KRUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $KRUN/pki/kubelet-serving.crt
tlsPrivateKeyFile: $KRUN/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $KRUN/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
# The cgroups here are hybrid v1 (no systemd as init).
failCgroupV1: false
cgroupDriver: cgroupfs
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: $KRUN/pod-logs
failSwapOn: false
serializeImagePulls: false
# No registry is reachable: an image the kubelet removed could never come back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
maxPods: 110
rotateCertificates: false
serverTLSBootstrap: false
shutdownGracePeriod: 0s
EOF
    cat >"$KRUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_SUBNET
clientConnection: {kubeconfig: $KRUN/kube-proxy.kubeconfig}
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
# Zeros leave the machine's conntrack settings as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# --- images ---------------------------------------------------------------------------------

image_ref() { cut -d' ' -f1 "$KIMAGES/$1.ref"; }

import_archive() {  # import_archive <archive> <what>: imports unless this very file already was
    # The marks live in the running containerd's root: they go with the images they record.
    local archive=$1 what=$2 sig mark marks
    marks="$(cat "$KRUN/containerd/root")/limedb-imported"
    sig="$(stat -c '%s %Y %i' "$archive")"
    mark="$marks/$(basename "$archive")"
    [[ -f "$mark" && "$(cat "$mark")" == "$sig" ]] && return 0
    kube_log "importing $what ($(du -h "$archive" | cut -f1)) into the node's containerd ..."
    kctr images import "$archive" >>"$KRUN/logs/import.log" 2>&1 \
        || kube_die "ctr images import $archive failed (see $KRUN/logs/import.log)"
    mkdir -p "$marks"
    echo "$sig" >"$mark"
}

import_images() {
    local name
    for name in pause coredns busybox; do
        import_archive "$KIMAGES/$(cut -d' ' -f2 "$KIMAGES/$name.ref")" "the $name image"
    done
    if [[ -s "$LIMEDB_IMAGE_TAR" ]]; then
        import_archive "$LIMEDB_IMAGE_TAR" "localhost/limedb:dev"
    else
        kube_log "no $LIMEDB_IMAGE_TAR: run \`make image\`, then \`$0 --import-only\`"
    fi
}

# --- cluster add-ons ------------------------------------------------------------------------

coredns_manifest() {
    cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # Cluster names only: nothing outside this machine is reachable, so there is no forward.
  # Port 1053 lets CoreDNS run as non-root without capabilities (the Service maps 53).
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            ttl 5
        }
        cache 5
        loadbalance
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: coredns
        image: $(image_ref coredns)
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 1053, protocol: UDP}
        - {name: dns-tcp, containerPort: 1053, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 10
          failureThreshold: 5
        resources:
          requests: {cpu: 20m, memory: 32Mi}
          limits: {memory: 128Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
EOF
}

storage_class_manifest() {
    cat <<EOF
# Static local PersistentVolumes (directories kube-up made), bound by the real PV controller.
# Not the hostPath provisioner: its 0750 root-owned directories ignore fsGroup, local ones don't.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
}

pv_manifest() {  # pv_manifest <name>
    cat <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $1
  labels: {limedb.io/local-pv: "true"}
spec:
  capacity: {storage: $PV_SIZE}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  volumeMode: Filesystem
  local: {path: $KRUN/pv/$1}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}
EOF
}

reconcile_pvs() {
    # Released volumes (their claim was deleted) are emptied and offered again, as the Delete
    # reclaim policy of a provisioner would; missing ones (of PV_COUNT) are made.
    local name phase i want=()
    declare -A have=()
    while read -r name phase; do
        [[ -n "$name" ]] || continue
        if [[ "$phase" == Released || "$phase" == Failed ]]; then
            kctl delete pv "$name" --wait=true >/dev/null
            rm -rf "${KRUN:?}/pv/$name"
            kube_log "renewed $phase volume $name"
        else
            have[$name]=1
        fi
    done < <(kctl get pv -l limedb.io/local-pv=true \
        -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}')
    for ((i = 0; i < PV_COUNT; i++)); do
        name="$(printf 'pv%02d' "$i")"
        [[ -n "${have[$name]:-}" ]] && continue
        mkdir -p "$KRUN/pv/$name"
        chmod 0755 "$KRUN/pv/$name"
        want+=("$(pv_manifest "$name")" "---")
    done
    if ((${#want[@]})); then
        printf '%s\n' "${want[@]}" | kctl apply -f - >/dev/null
    fi
}

# --- the node's network and kernel settings -------------------------------------------------

save_sysctls() {
    local key value
    : >"$KRUN/sysctl.saved"
    for key in "${SYSCTLS[@]}"; do
        value="$(sysctl -n "$key" 2>/dev/null)" || continue
        printf '%s=%s\n' "$key" "$value" >>"$KRUN/sysctl.saved"
    done
}

# Each pod sandbox's network namespace is a file under /run/netns with the namespace mounted on
# it. The first `ip netns add` on a machine (the tests' own namespaces, tests/support/netns.py)
# turns /run/netns into a recursive bind mount of itself; done while pods run, that copies
# their mounts, containerd's unmount later removes only the copy, the file stays a mount point
# underneath and cannot be removed (EBUSY): the pod hangs in Terminating for good (seen on a
# freshly booted machine: a rolling restart never finished). So /run/netns is made that
# mount point before containerd starts, as iproute2 would.
shared_netns_dir() {
    mkdir -p /run/netns
    if ! mountpoint -q /run/netns; then
        mount --rbind /run/netns /run/netns
    fi
    mount --make-shared /run/netns
}

make_bridge() {
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

node_ready() {
    [[ "$(kctl get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# --- main -----------------------------------------------------------------------------------

t0=$SECONDS
if running; then
    import_images
    if ((import_only == 0)); then
        # The add-ons converge too: a rebuilt CoreDNS image rolls its Deployment.
        kctl apply -f - >/dev/null < <(storage_class_manifest; echo ---; coredns_manifest)
        reconcile_pvs
        kube_log "reusing the running cluster ($((SECONDS - t0))s)"
    fi
    echo "KUBECONFIG=$KUBECONFIG_PATH"
    exit 0
fi
((import_only == 0)) || kube_die "no cluster is running: \`make kube-up\` starts one"
if [[ -e "$KRUN" ]] || ip link show "$BRIDGE" >/dev/null 2>&1 || [[ -n "$(cluster_pids)" ]]; then
    kube_log "a cluster is partly up (or was not taken down): taking it down first"
    flock -u 9
    bash "$(dirname "$0")/kube-down.sh" >&2
    flock 9
fi

for b in "${COMPONENTS[@]}" kubectl coredns; do
    [[ "$b" == containerd ]] && continue
    [[ -x "$KBIN/$b" ]] || kube_die "$KBIN/$b is missing: run \`make k8s-tools\`"
done
for b in containerd containerd-shim-runc-v2 runc ctr openssl ip nft; do
    command -v "$b" >/dev/null || kube_die "$b is missing: run \`make system-deps\`"
done
CNI_BIN=/usr/lib/cni
[[ -x "$CNI_BIN/bridge" ]] || kube_die "$CNI_BIN/bridge is missing: run \`make system-deps\`"
for n in pause coredns busybox; do
    [[ -f "$KIMAGES/$n.ref" ]] || kube_die "$KIMAGES/$n.ref is missing: run \`make k8s-tools\`"
done

failed() {
    # A half-started cluster helps nobody: keep its logs, then take it down.
    local code=$? saved log
    ((code != 0)) || return 0
    saved="$(mktemp -d /tmp/limedb-kube-failed.XXXXXX)"
    cp -r "$KRUN/logs/." "$saved/" 2>/dev/null
    for log in "$saved"/*.log; do
        [[ "$log" == */openssl.log ]] && continue
        [[ -s "$log" ]] || continue
        printf -- '--- last lines of %s\n' "$log" >&2
        tail -n 8 "$log" >&2
    done
    kube_log "kube-up failed (exit $code); logs kept in $saved; taking the cluster down"
    flock -u 9
    bash "$(dirname "$0")/kube-down.sh" >&2 || true
    exit "$code"
}
trap failed EXIT

mkdir -p "$KRUN/logs" "$KRUN/pids" "$KRUN/pv"
echo "$ROOT" >"$KRUN/root"
save_sysctls
nft list tables 2>/dev/null | LC_ALL=C sort >"$KRUN/nft-tables.before" || true
nft_chains >"$KRUN/nft-chains.before" || true
shared_netns_dir
make_bridge
kube_log "certificates ..."
make_pki
write_configs "$(image_ref pause)"

kube_log "etcd, kube-apiserver ..."
start etcd "$KBIN/etcd" --name limedb --data-dir "$KRUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "limedb=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
# containerd starts alongside: it needs nothing of the API server, and the images can be
# imported while the control plane comes up.
start containerd containerd --config "$KRUN/containerd/config.toml"
start kube-apiserver "$KBIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$KRUN/pki/apiserver.crt" --tls-private-key-file "$KRUN/pki/apiserver.key" \
    --client-ca-file "$KRUN/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$KRUN/pki/sa.pub" \
    --service-account-signing-key-file "$KRUN/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$KRUN/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$KRUN/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --profiling=false
wait_until 30 "containerd socket" kctr version
import_images
wait_until 120 "ready API server" kctl get --raw /readyz

kube_log "kube-controller-manager, kube-scheduler, kubelet, kube-proxy ..."
start kube-controller-manager "$KBIN/kube-controller-manager" \
    --kubeconfig "$KRUN/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$KRUN/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$KRUN/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$KRUN/pki/sa.key" \
    --root-ca-file "$KRUN/pki/ca.crt" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller' \
    --profiling=false
start kube-scheduler "$KBIN/kube-scheduler" \
    --kubeconfig "$KRUN/scheduler.kubeconfig" \
    --authentication-kubeconfig "$KRUN/scheduler.kubeconfig" \
    --authorization-kubeconfig "$KRUN/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
    --profiling=false
start kubelet "$KBIN/kubelet" --config "$KRUN/kubelet/config.yaml" \
    --kubeconfig "$KRUN/kubelet.kubeconfig" --root-dir "$KRUN/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
start kube-proxy "$KBIN/kube-proxy" --config "$KRUN/kube-proxy.yaml"

kctl apply -f - >/dev/null < <(storage_class_manifest; echo ---; coredns_manifest)
wait_until 120 "Ready node $NODE_NAME" node_ready
reconcile_pvs
# Pods are refused until their namespace's "default" ServiceAccount exists.
wait_until 60 "default ServiceAccount" kctl -n default get serviceaccount default
kube_log "waiting for CoreDNS ..."
kctl -n kube-system rollout status deployment/coredns --timeout=180s >&2 9>&- \
    || kube_die "CoreDNS did not become ready (kubectl -n kube-system describe pod)"
for c in "${COMPONENTS[@]}"; do
    pid_of "$c" >/dev/null || kube_die "$c exited; see $KRUN/logs/$c.log"
done
trap - EXIT
kube_log "up in $((SECONDS - t0))s: node $NODE_NAME, API https://$NODE_IP:$API_PORT"
echo "KUBECONFIG=$KUBECONFIG_PATH"
