# shellcheck shell=bash
# The real node of `e2e/testenv.sh up --node`, sourced by testenv.sh: containerd (with
# runc and Debian's CNI plugins), kubelet, kube-scheduler and kube-proxy, built or
# installed from Debian like the control plane, started, recorded and stopped the same way.
# One node environment per machine: the pod bridge and kube-proxy's iptables chains are
# machine-wide.
#
# Pods reach the host on the pod bridge's gateway (NODE_GW): the API server advertises it
# (the `kubernetes` Service), the plain registry listens there too, and the kubelet binds
# to it. Everything stays inside this machine.

readonly NODE_PROC_NAMES=(kube-proxy kubelet kube-scheduler containerd)
readonly NODE_HOSTNAME=ocisync-node
readonly POD_CIDR=10.88.0.0/16
readonly NODE_GW=10.88.0.1
readonly NODE_BRIDGE=ocisync0
NODE_STATE=$STATE/node
CTRD_SOCK=$NODE_STATE/containerd/containerd.sock

node_packages() {
	# build-essential, not gcc alone: `gcc -static` needs libc6-dev, only recommended by gcc
	echo containerd:containerd runc:runc iptables:iptables gcc:build-essential busybox:busybox-static \
		ip:iproute2 sysctl:procps pgrep:procps
}

node_ready() {
	[[ $(kubectl_local get node "$NODE_HOSTNAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

node_healthy() {
	local n
	for n in "${NODE_PROC_NAMES[@]}"; do is_alive "$n" || return 1; done
	node_ready
}

ensure_debs() { # packages that provide no command
	local pkg
	for pkg in "$@"; do
		dpkg -s "$pkg" >/dev/null 2>&1 && continue
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >>"$LOGS/apt.log" 2>&1 ||
			die "apt-get install $pkg failed (see $LOGS/apt.log)"
	done
}

# The pod bridge with the gateway address, made before the API server starts so that it
# can advertise an address pods reach. The CNI bridge plugin adopts it.
ensure_bridge() {
	ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || as_root ip link add "$NODE_BRIDGE" type bridge
	ip -4 addr show dev "$NODE_BRIDGE" | grep -q "inet $NODE_GW/" ||
		as_root ip addr add "$NODE_GW/16" dev "$NODE_BRIDGE"
	as_root ip link set "$NODE_BRIDGE" up
	as_root sysctl -qw net.ipv4.ip_forward=1
	[[ -x /usr/lib/cni/bridge ]] || ensure_debs containernetworking-plugins
}

registry_has() {
	[[ $(http_code -I -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		"http://127.0.0.1:$REG_PLAIN_PORT/v2/$1/manifests/$2") == 200 ]]
}

# The pause image (built from the Kubernetes tree, static) and a busybox image for test
# consumers, pushed to the plain registry.
node_images() {
	local d=$NODE_STATE/images a
	if ! registry_has e2e/pause 3.2; then
		rm -rf "$d/pause" && mkdir -p "$d/pause"
		gcc -static -O2 -DVERSION=3.2 -o "$d/pause/pause" "$K8S_WORK/kubernetes/build/pause/linux/pause.c" ||
			die "cannot build the pause binary"
		python3 "$E2E_DIR/python/image.py" "$d/pause" "127.0.0.1:$REG_PLAIN_PORT/e2e/pause:3.2" --entrypoint /pause >/dev/null
	fi
	if ! registry_has e2e/busybox 1; then
		rm -rf "$d/busybox" && mkdir -p "$d/busybox/bin"
		cp "$(command -v busybox)" "$d/busybox/bin/busybox"
		for a in sh cat sleep ls; do ln -sf busybox "$d/busybox/bin/$a"; done
		python3 "$E2E_DIR/python/image.py" "$d/busybox" "127.0.0.1:$REG_PLAIN_PORT/e2e/busybox:1" --entrypoint /bin/sh >/dev/null
	fi
}

write_node_configs() {
	mkdir -p "$NODE_STATE"/{containerd,cni,kubelet,kubelet-pki}
	printf '%s\n' \
		'version = 2' \
		"root = \"$NODE_STATE/containerd/root\"" \
		"state = \"$NODE_STATE/containerd/state\"" \
		'[grpc]' \
		"  address = \"$CTRD_SOCK\"" \
		'[plugins."io.containerd.grpc.v1.cri"]' \
		"  sandbox_image = \"127.0.0.1:$REG_PLAIN_PORT/e2e/pause:3.2\"" \
		'  restrict_oom_score_adj = true' \
		'  [plugins."io.containerd.grpc.v1.cri".cni]' \
		'    bin_dir = "/usr/lib/cni"' \
		"    conf_dir = \"$NODE_STATE/cni\"" \
		'  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]' \
		'    runtime_type = "io.containerd.runc.v2"' \
		"  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"127.0.0.1:$REG_PLAIN_PORT\"]" \
		"    endpoint = [\"http://127.0.0.1:$REG_PLAIN_PORT\"]" \
		>"$NODE_STATE/containerd.toml"
	printf '%s\n' \
		'{"cniVersion": "0.4.0", "name": "ocisync-e2e", "plugins": [' \
		"  {\"type\": \"bridge\", \"bridge\": \"$NODE_BRIDGE\", \"isGateway\": true, \"ipMasq\": false," \
		"   \"ipam\": {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"$POD_CIDR\", \"gateway\": \"$NODE_GW\"}]], \"routes\": [{\"dst\": \"0.0.0.0/0\"}], \"dataDir\": \"$NODE_STATE/cni-ipam\"}}," \
		'  {"type": "portmap", "capabilities": {"portMappings": true}}]}' \
		>"$NODE_STATE/cni/10-ocisync.conflist"
	printf '%s\n' \
		'apiVersion: kubelet.config.k8s.io/v1beta1' \
		'kind: KubeletConfiguration' \
		'cgroupDriver: cgroupfs' \
		'failSwapOn: false' \
		"address: $NODE_GW" \
		"port: $KUBELET_PORT" \
		'healthzBindAddress: 127.0.0.1' \
		"healthzPort: $KUBELET_HEALTHZ_PORT" \
		'readOnlyPort: 0' \
		'authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}' \
		'authorization: {mode: AlwaysAllow}' \
		'evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}' \
		'imageGCHighThresholdPercent: 100' \
		'serializeImagePulls: false' \
		'syncFrequency: 10s' \
		>"$NODE_STATE/kubelet.yaml"
}

start_node() {
	stop_node
	choose_port KUBELET_PORT
	choose_port KUBELET_HEALTHZ_PORT
	choose_port SCHED_PORT
	choose_port PROXY_HEALTHZ_PORT
	choose_port PROXY_METRICS_PORT
	node_images
	write_node_configs
	log "starting containerd (socket $CTRD_SOCK)"
	start_proc containerd containerd --config "$NODE_STATE/containerd.toml"
	wait_for containerd "its socket" test -S "$CTRD_SOCK"
	log "starting kube-scheduler, kube-proxy and kubelet (node $NODE_HOSTNAME)"
	start_proc kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$STATE/kubeconfig" \
		--leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --port 0
	start_proc kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig "$STATE/kubeconfig" \
		--proxy-mode iptables --cluster-cidr "$POD_CIDR" --hostname-override "$NODE_HOSTNAME" \
		--conntrack-max-per-core 0 --healthz-bind-address "127.0.0.1:$PROXY_HEALTHZ_PORT" \
		--metrics-bind-address "127.0.0.1:$PROXY_METRICS_PORT"
	start_proc kubelet "$K8S_BIN/kubelet" --config "$NODE_STATE/kubelet.yaml" \
		--container-runtime remote --container-runtime-endpoint "unix://$CTRD_SOCK" \
		--kubeconfig "$STATE/kubeconfig" --hostname-override "$NODE_HOSTNAME" \
		--root-dir "$NODE_STATE/kubelet" --cert-dir "$NODE_STATE/kubelet-pki" --node-ip "$NODE_GW"
	wait_for kubelet "node $NODE_HOSTNAME Ready" node_ready
}

# stop_node [--all]: pods' containers first (through containerd), then the processes, then
# what the kubelet mounted under its root dir. Only what this environment started.
stop_node() {
	local t pid m
	if is_alive containerd && command -v ctr >/dev/null 2>&1; then
		for t in $(ctr -a "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
			ctr -a "$CTRD_SOCK" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
		done
	fi
	stop_names "${NODE_PROC_NAMES[@]}"
	# containerd's shims outlive it; they carry our state dir in their command line
	for pid in $(pgrep -f "containerd-shim.*$NODE_STATE" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
	if [[ -d $NODE_STATE/kubelet ]]; then
		awk -v root="$NODE_STATE/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r |
			while read -r m; do as_root umount -l "$m" 2>/dev/null || true; done
	fi
	# with --all (from `down`): kube-proxy's iptables rules and the pod bridge are ours too
	if [[ ${1:-} == --all ]]; then
		[[ ! -x $K8S_BIN/kube-proxy ]] || as_root "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
		! ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || as_root ip link del "$NODE_BRIDGE" 2>/dev/null || true
	fi
	return 0
}
