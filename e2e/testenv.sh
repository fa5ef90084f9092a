#!/usr/bin/env bash
# ocisync end-to-end test environment.
#
#   e2e/testenv.sh up [--node]   start (or reuse) the environment, print export lines;
#                                --node adds a real node (e2e/node.sh: containerd, kubelet,
#                                kube-scheduler, kube-proxy) so pods run
#   e2e/testenv.sh env           print the export lines of the running environment
#   e2e/testenv.sh status        say which recorded processes are alive
#   e2e/testenv.sh down [--purge]  stop the recorded processes (--purge: remove the state dir)
#
# The environment is a Kubernetes v1.20.2 control plane (etcd, kube-apiserver,
# kube-controller-manager; no kubelet) built from Debian's `kubernetes` source
# package, plus two CNCF Distribution registries (Debian's `docker-registry`):
# one plain-HTTP and anonymous, one TLS (own CA) with htpasswd basic auth.
# Everything listens on 127.0.0.1 only. Progress goes to stderr, export lines to
# stdout, so `eval "$(e2e/testenv.sh up)"` works.
#
# If KUBECONFIG is set and points to a reachable cluster (kind, k3d, a real one),
# `up` uses that cluster instead of starting its own and only starts the registries.
#
# Settings (environment):
#   OCISYNC_TESTENV_DIR      state dir (default /tmp/ocisync-testenv)
#   OCISYNC_CACHE            cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/ocisync)
#   OCISYNC_TESTENV_TIMEOUT  seconds to wait for each component (default 60)
set -euo pipefail
# iptables, sysctl, ip live in sbin, which a user's PATH may lack
export PATH=$PATH:/usr/sbin:/sbin

readonly K8S_VERSION=v1.20.2
readonly REG_USER=ocisync

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

STATE=$(abspath "${OCISYNC_TESTENV_DIR:-/tmp/ocisync-testenv}")
STATE=${STATE%/}
CACHE_ROOT=$(abspath "${OCISYNC_CACHE:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/ocisync}")
readonly STATE CACHE_ROOT
readonly K8S_CACHE=$CACHE_ROOT/k8s-$K8S_VERSION
readonly K8S_BIN=$K8S_CACHE/bin
readonly K8S_WORK=$K8S_CACHE/work
readonly PIDS=$STATE/pids
readonly LOGS=$STATE/logs
readonly MARKER=$STATE/.ocisync-testenv
readonly TIMEOUT=${OCISYNC_TESTENV_TIMEOUT:-60}
readonly STOP_TIMEOUT=15
readonly CLUSTER_NAMES=(kube-controller-manager kube-apiserver etcd)
readonly REGISTRY_NAMES=(registry-plain registry-tls)
# The Service range the API server allocates ClusterIPs from; with the real node's pod range
# (e2e/node.sh's POD_CIDR) it may not leave the machine: see ensure_blackholes.
readonly SERVICE_CIDR=10.0.0.0/24
readonly BLACKHOLE_CHAIN=OCISYNC-TESTENV-DROP

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly E2E_DIR
STARTED=()        # processes started by this invocation (stopped again if `up` fails)
UP_RUNNING=0
APT_UPDATED=0

log() { printf 'testenv: %s\n' "$*" >&2; }
die() {
	printf 'testenv: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat >&2 <<'EOF'
usage: e2e/testenv.sh up|env|status|down [--purge]
  up [--node]     start (or reuse) the test environment and print its export lines;
                  --node adds a real node (containerd, kubelet, scheduler, proxy)
  env             print the export lines of the running environment
  status          show which recorded processes are alive
  down [--purge]  stop the recorded processes; --purge also removes the state dir
  kill NAME       SIGKILL one process of the environment (etcd, kube-apiserver,
                  kube-controller-manager, registry-plain, registry-tls): fault tests
  start NAME      start it again on its recorded ports and data, and wait until it serves
EOF
}

# ---------------------------------------------------------------- helpers

as_root() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root or sudo to run: $*"
	fi
}

# ensure_commands CMD:PACKAGE... -- installs the Debian packages of missing commands.
ensure_commands() {
	local pair cmd pkg aptlog=$LOGS/apt.log
	local -a pkgs=()
	for pair in "$@"; do
		cmd=${pair%%:*} pkg=${pair#*:}
		command -v "$cmd" >/dev/null 2>&1 && continue
		[[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
	done
	((${#pkgs[@]})) || return 0
	command -v apt-get >/dev/null 2>&1 || die "missing packages (${pkgs[*]}) and no apt-get to install them"
	log "installing Debian packages: ${pkgs[*]} (log: $aptlog)"
	if ((!APT_UPDATED)); then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$aptlog" 2>&1 ||
			{ tail -n 20 "$aptlog" >&2; die "apt-get update failed (see $aptlog)"; }
		APT_UPDATED=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$aptlog" 2>&1 ||
		{ tail -n 20 "$aptlog" >&2; die "apt-get install ${pkgs[*]} failed (see $aptlog)"; }
}

# proc_running PID: the process exists and is not a zombie.
proc_running() {
	local stat
	[[ $1 =~ ^[0-9]+$ ]] || return 1
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

recorded_pid() {
	local f=$PIDS/$1.pid pid
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	printf '%s\n' "$pid"
}

# is_alive NAME: the recorded process runs and is one of ours (its command line
# mentions the state dir), so a recycled PID is never mistaken for it.
is_alive() {
	local pid
	pid=$(recorded_pid "$1") || return 1
	proc_running "$pid" || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE/"
}

# stop_names NAME...: TERM the recorded processes, wait, then KILL; remove pid files.
stop_names() {
	local name pid deadline
	local -a pids=()
	for name in "$@"; do
		if is_alive "$name"; then
			pid=$(recorded_pid "$name")
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done
	deadline=$((SECONDS + STOP_TIMEOUT))
	for pid in "${pids[@]}"; do
		while proc_running "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
		if proc_running "$pid"; then
			log "pid $pid did not stop within ${STOP_TIMEOUT}s: sending KILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	local d=$((SECONDS + 5))
	for pid in "${pids[@]}"; do
		while proc_running "$pid" && ((SECONDS < d)); do sleep 0.1; done
		proc_running "$pid" && continue
		wait "$pid" 2>/dev/null || true # reap it if it is our own child
		# Otherwise init reaps it; give it a moment so no zombie is left listed.
		while [[ -e /proc/$pid ]] && ((SECONDS < d)); do sleep 0.1; done
	done
	for name in "$@"; do rm -f "$PIDS/$name.pid"; done
}

# start_proc NAME CMD...: start CMD detached (own session), output appended to logs/NAME.log.
start_proc() {
	local name=$1
	shift
	# Close the lock descriptors: a child holding them would keep the lock forever.
	setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 8>&- 9>&- &
	printf '%s\n' "$!" >"$PIDS/$name.pid"
	STARTED+=("$name")
}

tail_log() {
	local f=$LOGS/$1.log
	[[ -f $f ]] || return 0
	log "last lines of $f:"
	tail -n "${2:-25}" "$f" >&2 || true
}

# wait_for NAME DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds; fail
# when the process exits or the deadline passes.
wait_for() {
	local name=$1 desc=$2 pid deadline
	shift 2
	pid=$(recorded_pid "$name") || die "no pid recorded for $name"
	deadline=$((SECONDS + TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		if ! proc_running "$pid"; then
			tail_log "$name"
			die "$name exited while waiting for $desc (log: $LOGS/$name.log)"
		fi
		if ((SECONDS >= deadline)); then
			tail_log "$name"
			die "$name: timed out after ${TIMEOUT}s waiting for $desc (log: $LOGS/$name.log)"
		fi
		sleep 0.5
	done
}

# ------------------------------------------------------------------ ports

port_free() {
	if command -v python3 >/dev/null 2>&1; then
		python3 - "$1" 2>/dev/null <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
	else
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 1; fi
	fi
}

new_port() {
	local p
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
	else
		for _ in $(seq 200); do
			p=$((20000 + RANDOM % 30000))
			port_free "$p" && { printf '%s\n' "$p"; return 0; }
		done
		die "found no free loopback port"
	fi
}

readonly PORT_VARS=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT REG_PLAIN_PORT REG_TLS_PORT
	KUBELET_PORT KUBELET_HEALTHZ_PORT SCHED_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT)
ETCD_PORT='' ETCD_PEER_PORT='' APISERVER_PORT='' KCM_PORT='' REG_PLAIN_PORT='' REG_TLS_PORT=''
KUBELET_PORT='' KUBELET_HEALTHZ_PORT='' SCHED_PORT='' PROXY_HEALTHZ_PORT='' PROXY_METRICS_PORT=''

load_ports() {
	local key val
	[[ -f $STATE/ports ]] || return 0
	while IFS='=' read -r key val; do
		if [[ " ${PORT_VARS[*]} " == *" $key "* && $val =~ ^[0-9]+$ ]]; then
			printf -v "$key" '%s' "$val"
		fi
	done <"$STATE/ports"
}

save_ports() {
	local v
	for v in "${PORT_VARS[@]}"; do printf '%s=%s\n' "$v" "${!v}"; done >"$STATE/ports.tmp"
	mv -f "$STATE/ports.tmp" "$STATE/ports"
}

# choose_port VAR: keep the recorded port when it is free, else pick a new one
# that differs from every other recorded port.
choose_port() {
	local var=$1 p=${!1} v taken
	if [[ -n $p ]] && port_free "$p"; then return 0; fi
	for _ in $(seq 50); do
		p=$(new_port)
		taken=0
		for v in "${PORT_VARS[@]}"; do [[ $v != "$var" && ${!v} == "$p" ]] && taken=1; done
		((taken)) || break
	done
	printf -v "$var" '%s' "$p"
	save_ports
}

# ------------------------------------------------------ kubernetes binaries

# Bumped when the build changes, so cached binaries from an older recipe are rebuilt.
readonly K8S_BUILD_REV=2
NODE=0 # `up --node`: also kubelet, kube-scheduler, kube-proxy and containerd
k8s_targets() {
	echo kube-apiserver kube-controller-manager
	((NODE)) && echo kubelet kube-scheduler kube-proxy
	return 0
}
have_k8s_bins() {
	local b
	for b in $(k8s_targets); do [[ -x $K8S_BIN/$b ]] || return 1; done
	[[ $(cat "$K8S_BIN/.build-rev" 2>/dev/null) == "$K8S_BUILD_REV" ]]
}

# Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, which calls the runtime's
# reflect.mapiterinit with its pre-Go-1.18 signature. Built with Debian's Go 1.19, the API
# server then crashes ("fatal error: fault" in json-iterator) on the first custom resource
# it encodes. Make the vendored copy use the Go 1.18+ calling convention: the caller
# allocates the whole iterator (runtime.hiter's Go 1.19 layout) and passes it in.
patch_reflect2() {
	local dir=$1/vendor/github.com/modern-go/reflect2
	grep -q 'ocisync-testenv' "$dir/unsafe_map.go" && return 0
	echo "== patching vendored reflect2 for Go >= 1.18 map iteration"
	grep -q 'ocisync-testenv' "$dir/unsafe_link.go" || perl -0pi -e '
		s{func mapiterinit\(rtype unsafe\.Pointer, m unsafe\.Pointer\) \*hiter}
		 {func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter) // ocisync-testenv: Go 1.18+ signature}
		  or die "mapiterinit declaration not found\n";
		s{type hiter struct \{.*?\n\}}{type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}}s or die "hiter struct not found\n";
	' "$dir/unsafe_link.go"
	perl -0pi -e '
		s{return &UnsafeMapIterator\{\n\t\thiter:      mapiterinit\(type2\.rtype, \*\(\*unsafe\.Pointer\)\(obj\)\),}
		 {it := new(hiter) // ocisync-testenv: caller-allocated iterator\n\tmapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), it)\n\treturn &UnsafeMapIterator\{\n\t\thiter:      it,}
		  or die "UnsafeIterate not found\n";
	' "$dir/unsafe_map.go"
}

# Write deb-src entries derived from the machine's Debian apt sources into $1.
make_deb_src_dir() {
	local out=$1 f n=0
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		grep -qiE '^URIs:.*debian' "$f" || continue
		sed -E 's/^Types:.*/Types: deb-src/I' "$f" >"$out/$(basename "$f")"
		n=$((n + 1))
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		if grep -E '^[[:space:]]*deb[[:space:]].*debian' "$f" |
			sed -E 's/^[[:space:]]*deb[[:space:]]/deb-src /' >>"$out/debian-src.list"; then
			n=$((n + 1))
		fi
	done
	((n > 0)) || die "found no Debian entry in /etc/apt to derive a deb-src source from"
}

# Runs inside a subshell whose output goes to the build log.
k8s_build_steps() {
	local apt_dir=$K8S_WORK/apt src_dir=$K8S_WORK/src tree=$K8S_WORK/kubernetes tarball top
	mkdir -p "$src_dir"
	if ! compgen -G "$src_dir/kubernetes_*.orig.tar.*" >/dev/null; then
		echo "== fetching Debian source package 'kubernetes' (private deb-src dir $apt_dir)"
		rm -rf "$apt_dir"
		mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
		make_deb_src_dir "$apt_dir/sources.list.d"
		local -a aptopts=(
			-o "Dir::Etc::SourceList=/dev/null"
			-o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
			-o "Dir::State::Lists=$apt_dir/lists"
			-o "Dir::Cache=$apt_dir/cache"
			-o "APT::Sandbox::User=root"
		)
		apt-get "${aptopts[@]}" update
		(cd "$src_dir" && apt-get "${aptopts[@]}" source --download-only kubernetes)
	fi
	tarball=$(compgen -G "$src_dir/kubernetes_*.orig.tar.*" | head -n 1)
	[[ -n $tarball ]] || die "no kubernetes orig tarball in $src_dir"
	if [[ ! -f $tree/.unpacked ]]; then
		echo "== unpacking $tarball"
		rm -rf "$tree" "$K8S_WORK/unpack"
		mkdir -p "$K8S_WORK/unpack"
		tar -xf "$tarball" -C "$K8S_WORK/unpack"
		top=$(find "$K8S_WORK/unpack" -mindepth 1 -maxdepth 1 -type d | head -n 1)
		[[ -f $top/hack/lib/golang.sh && -d $top/vendor ]] || die "unexpected layout of $tarball"
		mv "$top" "$tree"
		rm -rf "$K8S_WORK/unpack"
		touch "$tree/.unpacked"
	fi
	# The source is not a git checkout: give the build its version explicitly.
	local ver=${K8S_VERSION#v}
	local minor=${ver#*.}
	cat >"$K8S_WORK/version.env" <<EOF
KUBE_GIT_VERSION='$K8S_VERSION'
KUBE_GIT_MAJOR='${ver%%.*}'
KUBE_GIT_MINOR='${minor%%.*}'
KUBE_GIT_TREE_STATE='clean'
EOF
	# Kubernetes 1.20 builds in GOPATH mode: the tree must sit at GOPATH/src/k8s.io/kubernetes.
	mkdir -p "$K8S_WORK/gopath/src/k8s.io"
	ln -sfn "$tree" "$K8S_WORK/gopath/src/k8s.io/kubernetes"
	cd "$K8S_WORK/gopath/src/k8s.io/kubernetes"
	patch_reflect2 "$tree"
	rm -rf _output # a failed build leaves broken generator binaries behind
	local b what=""
	for b in $(k8s_targets); do what+=" cmd/$b"; done
	echo "== make WHAT='${what# }' ($(go version))"
	env -u GOFLAGS -u GOBIN -u GOOS -u GOARCH \
		GOPATH="$K8S_WORK/gopath" GOCACHE="$K8S_WORK/gocache" GOPROXY=off GOTOOLCHAIN=local \
		CGO_ENABLED=0 KUBE_GIT_VERSION_FILE="$K8S_WORK/version.env" \
		make WHAT="${what# }"
	mkdir -p "$K8S_BIN"
	for b in $(k8s_targets); do
		[[ -x _output/bin/$b ]] || die "_output/bin/$b was not built"
		"_output/bin/$b" --version
		install -m 0755 "_output/bin/$b" "$K8S_BIN/.$b.tmp"
		mv -f "$K8S_BIN/.$b.tmp" "$K8S_BIN/$b"
	done
	echo "$K8S_BUILD_REV" >"$K8S_BIN/.build-rev"
	echo "== done"
}

build_k8s() {
	have_k8s_bins && return 0
	mkdir -p "$K8S_WORK"
	exec 8>"$K8S_CACHE/.build.lock"
	flock -w 1800 8 || die "another build holds $K8S_CACHE/.build.lock"
	if have_k8s_bins; then exec 8>&-; return 0; fi
	local buildlog=$K8S_WORK/build.log t0=$SECONDS
	: >"$buildlog"
	log "building Kubernetes $K8S_VERSION $(k8s_targets | tr '\n' ' ')(about 5 min on 2 cores from scratch; log: $buildlog)"
	# A background subshell keeps `set -e` in force inside the build steps.
	(k8s_build_steps) >>"$buildlog" 2>&1 &
	if ! wait "$!"; then
		log "last lines of $buildlog:"
		tail -n 40 "$buildlog" >&2
		die "building Kubernetes $K8S_VERSION failed (full log: $buildlog); 'up' retries from a clean _output/"
	fi
	have_k8s_bins || die "build finished but binaries are missing in $K8S_BIN"
	log "built Kubernetes $K8S_VERSION in $((SECONDS - t0)) s into $K8S_BIN"
	exec 8>&-
}

# ----------------------------------------------------------------- secrets

rand_hex() { openssl rand -hex "$1"; }

ADMIN_TOKEN='' REG_PASSWORD='' REG_HTTP_SECRET=''

ensure_secrets() {
	local f=$STATE/secrets
	if [[ ! -f $f ]]; then
		(
			umask 077
			printf 'ADMIN_TOKEN=%s\nREG_PASSWORD=%s\nREG_HTTP_SECRET=%s\n' \
				"$(rand_hex 24)" "$(rand_hex 16)" "$(rand_hex 16)" >"$f.tmp"
		)
		mv -f "$f.tmp" "$f"
	fi
	local key val
	while IFS='=' read -r key val; do
		case $key in ADMIN_TOKEN | REG_PASSWORD | REG_HTTP_SECRET) printf -v "$key" '%s' "$val" ;; esac
	done <"$f"
	[[ -n $ADMIN_TOKEN && -n $REG_PASSWORD && -n $REG_HTTP_SECRET ]] || die "$f is incomplete: run 'down --purge' then 'up'"
}

ensure_cluster_files() {
	(
		umask 077
		[[ -f $STATE/tokens.csv ]] || printf '%s,admin,admin,system:masters\n' "$ADMIN_TOKEN" >"$STATE/tokens.csv"
		if [[ ! -f $STATE/sa.key || ! -f $STATE/sa.pub ]]; then
			openssl genrsa -out "$STATE/sa.key" 2048 2>/dev/null
			openssl rsa -in "$STATE/sa.key" -pubout -out "$STATE/sa.pub" 2>/dev/null
		fi
	)
	mkdir -p "$STATE/apiserver-certs" "$STATE/etcd-data" "$STATE/kcm-certs"
	chmod 700 "$STATE/etcd-data"
	ensure_apiserver_cert
}

# The API server's serving certificate, made here rather than by the API server: a CA and a
# leaf valid for loopback, the pod bridge's gateway (a real node's pods) and the
# `kubernetes` Service, written as leaf + CA the way kube-apiserver writes its own.
ensure_apiserver_cert() {
	local d=$STATE/apiserver-certs
	if [[ -s $d/apiserver.crt && -s $d/apiserver.key ]] &&
		openssl x509 -in "$d/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:10.88.0.1"; then
		return 0
	fi
	(
		umask 077
		openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout "$d/ca.key" -out "$d/ca.crt" \
			-subj "/CN=ocisync testenv apiserver CA" -addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
		openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$d/apiserver.key" -out "$d/apiserver.csr" \
			-subj "/CN=kube-apiserver" 2>/dev/null
		printf '%s\n' \
			"subjectAltName=IP:127.0.0.1,IP:10.88.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
			"basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
			"extendedKeyUsage=serverAuth" >"$d/apiserver.ext"
		openssl x509 -req -sha256 -days 825 -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
			-set_serial "0x$(rand_hex 12)" -extfile "$d/apiserver.ext" -out "$d/leaf.crt" 2>/dev/null
		cat "$d/leaf.crt" "$d/ca.crt" >"$d/apiserver.crt"
		rm -f "$d/apiserver.csr" "$d/leaf.crt"
	) || die "openssl could not make the API server certificate"
}

# The API server makes its own serving certificate (and CA) in its --cert-dir on first
# start; once it exists the kubeconfig trusts it, so clients verify TLS for real.
write_kubeconfig() {
	local crt=$STATE/apiserver-certs/apiserver.crt tls="insecure-skip-tls-verify: true"
	[[ -s $crt ]] && tls="certificate-authority-data: $(base64 -w0 "$crt")"
	(
		umask 077
		cat >"$STATE/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ocisync-testenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    $tls
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: ocisync-testenv
  context:
    cluster: ocisync-testenv
    user: admin
    namespace: default
current-context: ocisync-testenv
EOF
	)
	mv -f "$STATE/kubeconfig.tmp" "$STATE/kubeconfig"
}

ensure_registry_files() {
	local d=$STATE/registry-certs
	mkdir -p "$d" "$STATE/registry-plain" "$STATE/registry-tls"
	if [[ ! -f $d/ca.crt || ! -f $d/ca.key ]]; then
		openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
			-keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=ocisync testenv CA" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
			die "openssl could not create the registry CA"
		rm -f "$d/server.crt"
	fi
	if [[ ! -f $d/server.crt || ! -f $d/server.key ]]; then
		openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$d/server.key" \
			-out "$d/server.csr" -subj "/CN=localhost" 2>/dev/null
		printf '%s\n' \
			"subjectAltName=IP:127.0.0.1,DNS:localhost" \
			"basicConstraints=critical,CA:FALSE" \
			"keyUsage=critical,digitalSignature,keyEncipherment" \
			"extendedKeyUsage=serverAuth" >"$d/server.ext"
		openssl x509 -req -sha256 -days 825 -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
			-set_serial "0x$(rand_hex 12)" -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null ||
			die "openssl could not sign the registry server certificate"
		rm -f "$d/server.csr"
	fi
	if [[ ! -f $STATE/htpasswd ]]; then
		htpasswd -Bbn "$REG_USER" "$REG_PASSWORD" >"$STATE/htpasswd.tmp"
		mv -f "$STATE/htpasswd.tmp" "$STATE/htpasswd"
	fi
}

# --------------------------------------------------------------- cluster

kubectl_local() { kubectl --kubeconfig "$STATE/kubeconfig" --request-timeout=5s "$@"; }
apiserver_ready() { kubectl_local get --raw /readyz; }
default_sa_exists() { kubectl_local -n default get serviceaccount default; }
etcd_healthy() { curl --noproxy '*' -fsS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

cluster_healthy() {
	local n
	for n in "${CLUSTER_NAMES[@]}"; do is_alive "$n" || return 1; done
	[[ -f $STATE/kubeconfig ]] && apiserver_ready >/dev/null 2>&1 && default_sa_exists >/dev/null 2>&1
}

start_cluster() {
	stop_names "${CLUSTER_NAMES[@]}"
	ensure_cluster_files
	choose_port ETCD_PORT
	choose_port ETCD_PEER_PORT
	choose_port APISERVER_PORT
	choose_port KCM_PORT
	start_etcd
	write_kubeconfig
	start_apiserver
	write_kubeconfig
	start_kcm
}

start_etcd() {
	log "starting etcd on 127.0.0.1:$ETCD_PORT"
	start_proc etcd etcd \
		--name ocisync-testenv \
		--data-dir "$STATE/etcd-data" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "ocisync-testenv=http://127.0.0.1:$ETCD_PEER_PORT"
	wait_for etcd "etcd /health" etcd_healthy
}

start_apiserver() {
	log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
	# With a real node, pods reach the API server through the `kubernetes` Service, whose
	# endpoint is the advertised address: the pod bridge's gateway, not loopback.
	local bind=127.0.0.1 advertise=127.0.0.1
	((NODE)) && bind=0.0.0.0 advertise=$NODE_GW
	echo "$NODE" >"$STATE/cluster-node-mode"
	start_proc kube-apiserver "$K8S_BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address "$bind" \
		--advertise-address "$advertise" \
		--secure-port "$APISERVER_PORT" \
		--insecure-port 0 \
		--cert-dir "$STATE/apiserver-certs" \
		--token-auth-file "$STATE/tokens.csv" \
		--authorization-mode RBAC \
		--service-account-issuer https://kubernetes.default.svc \
		--service-account-key-file "$STATE/sa.pub" \
		--service-account-signing-key-file "$STATE/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--allow-privileged=true
	wait_for kube-apiserver "/readyz" apiserver_ready
}

start_kcm() {
	log "starting kube-controller-manager"
	start_proc kube-controller-manager "$K8S_BIN/kube-controller-manager" \
		--kubeconfig "$STATE/kubeconfig" \
		--service-account-private-key-file "$STATE/sa.key" \
		--root-ca-file "$STATE/apiserver-certs/apiserver.crt" \
		--bind-address 127.0.0.1 \
		--secure-port "$KCM_PORT" \
		--port 0 \
		--cert-dir "$STATE/kcm-certs" \
		--leader-elect=false
	wait_for kube-controller-manager "the default/default ServiceAccount" default_sa_exists
}

# ensure_blackholes: a packet to a ClusterIP that no kube-proxy rule rewrote, or to a pod
# address no bridge serves, would follow the default route off this machine. A chain of
# ours in the filter table's OUTPUT and FORWARD drops it instead. Not a blackhole route:
# the host's own connect() to a ClusterIP looks up the route before kube-proxy's OUTPUT
# DNAT, and a blackhole route fails it (EINVAL). Packets kube-proxy rewrote carry conntrack
# state DNAT and pass (the host's own, rewritten from a ClusterIP to a pod, still show the
# default route's interface here: the pod-range rule must let them pass too); pod
# addresses pass out of the node's bridge. When a range overlaps
# an address of this host, nothing is dropped for it (said so): that is the host's network.
ensure_blackholes() {
	command -v iptables >/dev/null 2>&1 || ensure_debs iptables
	remove_blackholes
	as_root iptables -w -N "$BLACKHOLE_CHAIN" || die "cannot create iptables chain $BLACKHOLE_CHAIN (needs root)"
	local cidr
	if host_overlaps "$SERVICE_CIDR"; then
		log "the Service range $SERVICE_CIDR overlaps this host's addresses: not dropping it"
	else
		as_root iptables -w -A "$BLACKHOLE_CHAIN" -d "$SERVICE_CIDR" -m conntrack ! --ctstate DNAT -j DROP
	fi
	for cidr in "$POD_CIDR"; do
		if host_overlaps "$cidr" "$NODE_BRIDGE"; then
			log "the pod range $cidr overlaps this host's addresses: not dropping it"
			continue
		fi
		as_root iptables -w -A "$BLACKHOLE_CHAIN" -d "$cidr" ! -o "$NODE_BRIDGE" -m addrtype ! --dst-type LOCAL \
			-m conntrack ! --ctstate DNAT -j DROP
	done
	as_root iptables -w -I OUTPUT 1 -j "$BLACKHOLE_CHAIN"
	as_root iptables -w -I FORWARD 1 -j "$BLACKHOLE_CHAIN"
}

remove_blackholes() {
	command -v iptables >/dev/null 2>&1 || return 0
	local table_chain
	for table_chain in OUTPUT FORWARD; do
		while as_root iptables -w -D "$table_chain" -j "$BLACKHOLE_CHAIN" 2>/dev/null; do :; done
	done
	as_root iptables -w -F "$BLACKHOLE_CHAIN" 2>/dev/null || true
	as_root iptables -w -X "$BLACKHOLE_CHAIN" 2>/dev/null || true
	# the routes an earlier version added
	local cidr
	for cidr in "$SERVICE_CIDR" "$POD_CIDR"; do
		as_root ip route del blackhole "$cidr" metric 4242 2>/dev/null || true
	done
}

# host_overlaps CIDR [EXCEPT_DEV]: an address of this host (other than on EXCEPT_DEV) lies
# in CIDR, or CIDR in its network.
host_overlaps() {
	ip -4 -o addr show | awk -v except="${2:-}" '$2 != except {print $4}' |
		python3 -c 'import ipaddress, sys
r = ipaddress.ip_network(sys.argv[1])
sys.exit(0 if any(ipaddress.ip_interface(l.strip()).network.overlaps(r) for l in sys.stdin if l.strip()) else 1)' "$1"
}

# -------------------------------------------------------------- registries

http_code() { curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" || true; }

registry_plain_ready() { [[ $(http_code "http://127.0.0.1:$REG_PLAIN_PORT/v2/") == 200 ]]; }
registry_tls_ready() {
	local url=https://127.0.0.1:$REG_TLS_PORT/v2/ ca=$STATE/registry-certs/ca.crt
	[[ $(http_code --cacert "$ca" "$url") == 401 ]] &&
		[[ $(http_code --cacert "$ca" -u "$REG_USER:$REG_PASSWORD" "$url") == 200 ]]
}

# The plain registry also serves pods (on the bridge gateway) when there is a real node.
registry_bind() { if ((NODE)) && [[ $1 == registry-plain ]]; then echo 0.0.0.0; else echo 127.0.0.1; fi; }

# write_registry_config NAME PORT (TLS settings when NAME is registry-tls)
write_registry_config() {
	local name=$1 port=$2 cfg=$STATE/$1.yml
	{
		cat <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
  fields:
    service: $name
storage:
  filesystem:
    rootdirectory: $STATE/$name
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $(registry_bind "$name"):$port
  secret: $REG_HTTP_SECRET
  headers:
    X-Content-Type-Options: [nosniff]
EOF
		if [[ $name == registry-tls ]]; then
			cat <<EOF
  tls:
    certificate: $STATE/registry-certs/server.crt
    key: $STATE/registry-certs/server.key
auth:
  htpasswd:
    realm: ocisync-testenv
    path: $STATE/htpasswd
EOF
		fi
	} >"$cfg.tmp"
	mv -f "$cfg.tmp" "$cfg"
}

ensure_registry() {
	local name=$1 var check
	case $name in
	registry-plain) var=REG_PLAIN_PORT check=registry_plain_ready ;;
	registry-tls) var=REG_TLS_PORT check=registry_tls_ready ;;
	esac
	if is_alive "$name" && [[ -n ${!var} ]] && "$check" &&
		grep -q "addr: $(registry_bind "$name"):" "$STATE/$name.yml" 2>/dev/null; then
		log "$name already running on 127.0.0.1:${!var}"
		return 0
	fi
	stop_names "$name"
	choose_port "$var"
	write_registry_config "$name" "${!var}"
	log "starting $name on 127.0.0.1:${!var}"
	start_proc "$name" docker-registry serve "$STATE/$name.yml"
	wait_for "$name" "/v2/ to answer" "$check"
}

# -------------------------------------------------------------------- env

emit() { printf 'export %s=%q\n' "$1" "$2"; }

write_env() {
	local external=$1 kubeconfig=$2
	{
		emit KUBECONFIG "$kubeconfig"
		emit OCISYNC_TESTENV_DIR "$STATE"
		emit OCISYNC_TESTENV_EXTERNAL_CLUSTER "$external"
		if ((external)); then
			emit OCISYNC_APISERVER ""
			emit OCISYNC_ADMIN_TOKEN ""
			emit OCISYNC_TOKEN_FILE ""
		else
			emit OCISYNC_APISERVER "https://127.0.0.1:$APISERVER_PORT"
			emit OCISYNC_ADMIN_TOKEN "$ADMIN_TOKEN"
			emit OCISYNC_TOKEN_FILE "$STATE/tokens.csv"
		fi
		emit OCISYNC_REGISTRY_PLAIN "127.0.0.1:$REG_PLAIN_PORT"
		emit OCISYNC_REGISTRY_PLAIN_ROOT "$STATE/registry-plain"
		emit OCISYNC_REGISTRY_PLAIN_LOG "$LOGS/registry-plain.log"
		emit OCISYNC_REGISTRY_TLS "127.0.0.1:$REG_TLS_PORT"
		emit OCISYNC_REGISTRY_TLS_ROOT "$STATE/registry-tls"
		emit OCISYNC_REGISTRY_TLS_LOG "$LOGS/registry-tls.log"
		emit OCISYNC_REGISTRY_CA "$STATE/registry-certs/ca.crt"
		emit OCISYNC_REGISTRY_USER "$REG_USER"
		emit OCISYNC_REGISTRY_PASSWORD "$REG_PASSWORD"
		emit OCISYNC_K8S_BIN "$K8S_BIN"
		if ((NODE)); then
			emit OCISYNC_NODE "$NODE_HOSTNAME"
			emit OCISYNC_NODE_REGISTRY "$NODE_GW:$REG_PLAIN_PORT"
			emit OCISYNC_NODE_STATE "$NODE_STATE"
		else
			emit OCISYNC_NODE ""
		fi
	} >"$STATE/env.tmp"
	chmod 600 "$STATE/env.tmp"
	mv -f "$STATE/env.tmp" "$STATE/env"
}

env_external() { sed -n "s/^export OCISYNC_TESTENV_EXTERNAL_CLUSTER=//p" "$STATE/env" 2>/dev/null; }

expected_names() {
	[[ $(env_external) == 1 ]] || printf '%s\n' "${CLUSTER_NAMES[@]}"
	printf '%s\n' "${REGISTRY_NAMES[@]}"
	[[ -z $(sed -n "s/^export OCISYNC_NODE=//p" "$STATE/env" 2>/dev/null) ]] || printf '%s\n' "${NODE_PROC_NAMES[@]}"
}

# --------------------------------------------------------------- commands

lock_state() {
	exec 9>"$STATE/.lock"
	flock -w 600 9 || die "another e2e/testenv.sh run holds $STATE/.lock"
}

on_exit() {
	local rc=$?
	if ((rc != 0 && UP_RUNNING && ${#STARTED[@]})); then
		log "'up' failed: stopping the processes it started (${STARTED[*]}); logs stay in $LOGS"
		stop_names "${STARTED[@]}" || true
	fi
	exit "$rc"
}

same_file_path() { [[ $(realpath -m -- "$1") == "$(realpath -m -- "$2")" ]]; }

cmd_up() {
	local t0=$SECONDS external=0 kubeconfig=$STATE/kubeconfig
	mkdir -p "$STATE" "$PIDS" "$LOGS"
	chmod 700 "$STATE"
	touch "$MARKER"
	lock_state
	UP_RUNNING=1
	trap on_exit EXIT

	local -a cmds=(kubectl:kubernetes-client docker-registry:docker-registry htpasswd:apache2-utils
		openssl:openssl curl:curl jq:jq flock:util-linux setsid:util-linux)
	# An already reachable cluster in KUBECONFIG (that is not our own) is used as is.
	if [[ -n ${KUBECONFIG:-} ]] && ! same_file_path "$KUBECONFIG" "$STATE/kubeconfig"; then
		ensure_commands kubectl:kubernetes-client
		if kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
			external=1 kubeconfig=$KUBECONFIG
		else
			log "KUBECONFIG=$KUBECONFIG does not answer /readyz: starting the local cluster instead"
		fi
	fi
	if ((NODE && external)); then
		log "--node ignored: KUBECONFIG's cluster brings its own nodes"
		NODE=0
	fi
	if ((NODE)); then
		read -ra more <<<"$(node_packages)"
		cmds+=("${more[@]}")
	fi
	if ((!external)); then
		cmds+=(etcd:etcd-server ip:iproute2 iptables:iptables python3:python3)
		have_k8s_bins || cmds+=(go:golang-go rsync:rsync make:make gcc:build-essential)
	fi
	ensure_commands "${cmds[@]}"

	load_ports
	# `up` after `up --node`: the running node environment is reused as it is
	if ((!NODE && !external)) && [[ $(cat "$STATE/cluster-node-mode" 2>/dev/null) == 1 ]] && node_healthy; then
		NODE=1
	fi
	((NODE)) && ensure_bridge
	ensure_secrets
	if ((external)); then
		log "KUBECONFIG=$KUBECONFIG reaches a running cluster: using it, not starting etcd/kube-apiserver/kube-controller-manager"
		stop_names "${CLUSTER_NAMES[@]}"
	else
		ensure_blackholes
		build_k8s
		if cluster_healthy && [[ $(cat "$STATE/cluster-node-mode" 2>/dev/null || echo 0) == "$NODE" ]]; then
			log "cluster already running on https://127.0.0.1:$APISERVER_PORT"
		else
			start_cluster
		fi
	fi

	ensure_registry_files
	ensure_registry registry-plain
	ensure_registry registry-tls
	if ((NODE)); then
		if node_healthy; then
			log "node $NODE_HOSTNAME already Ready"
		else
			start_node
		fi
	fi

	write_env "$external" "$kubeconfig"
	log "environment up in $((SECONDS - t0)) s (state: $STATE; stop with: e2e/testenv.sh down)"
	UP_RUNNING=0
	cat "$STATE/env"
}

cmd_env() {
	[[ -f $STATE/env ]] || die "no test environment in $STATE: run 'e2e/testenv.sh up'"
	local n
	for n in $(expected_names); do
		is_alive "$n" || die "test environment in $STATE is not running ($n is down): run 'e2e/testenv.sh up'"
	done
	cat "$STATE/env"
}

cmd_status() {
	if [[ ! -d $PIDS ]] || ! compgen -G "$PIDS/*.pid" >/dev/null; then
		echo "no recorded processes in $STATE (environment is down)"
		return 1
	fi
	local f name pid rc=0
	echo "state dir: $STATE"
	for f in "$PIDS"/*.pid; do
		name=$(basename "$f" .pid)
		pid=$(recorded_pid "$name" || echo '?')
		if is_alive "$name"; then
			printf '  %-24s running (pid %s)\n' "$name" "$pid"
		else
			printf '  %-24s NOT running (recorded pid %s)\n' "$name" "$pid"
			rc=1
		fi
	done
	for name in $(expected_names); do
		[[ -f $PIDS/$name.pid ]] || { printf '  %-24s not started\n' "$name"; rc=1; }
	done
	return "$rc"
}

cmd_down() {
	local purge=0 t0=$SECONDS
	case ${1:-} in
	"") ;;
	--purge) purge=1 ;;
	*) usage; die "unknown option for down: $1" ;;
	esac
	if [[ ! -d $STATE ]]; then
		log "nothing to stop: $STATE does not exist"
		return 0
	fi
	[[ -f $MARKER ]] || die "$STATE is not an ocisync test environment (no $(basename "$MARKER")): refusing to touch it"
	lock_state
	[[ -d $NODE_STATE ]] && stop_node --all
	local -a names=()
	local f
	if [[ -d $PIDS ]]; then
		for f in "$PIDS"/*.pid; do [[ -f $f ]] && names+=("$(basename "$f" .pid)"); done
	fi
	if ((${#names[@]})); then
		# etcd last, so the API server shuts down cleanly.
		local -a first=() last=()
		local n
		for n in "${names[@]}"; do if [[ $n == etcd ]]; then last+=("$n"); else first+=("$n"); fi; done
		((${#first[@]} == 0)) || stop_names "${first[@]}"
		((${#last[@]} == 0)) || stop_names "${last[@]}"
		log "stopped: ${names[*]} ($((SECONDS - t0)) s)"
	else
		log "no recorded processes in $STATE"
	fi
	remove_blackholes
	rm -f "$STATE/env"
	if ((purge)); then
		rm -rf -- "$STATE"
		log "removed $STATE"
	fi
}

# The fault tests' handles on the environment's own processes (never a KUBECONFIG cluster).
readonly RESTARTABLE=(etcd kube-apiserver kube-controller-manager registry-plain registry-tls)

restartable() {
	[[ " ${RESTARTABLE[*]} " == *" $1 "* ]] || die "not one of ${RESTARTABLE[*]}: ${1:-}"
	[[ -f $STATE/env ]] || die "no test environment in $STATE"
	[[ $(env_external) != 1 ]] || die "KUBECONFIG's cluster is not ours to kill"
}

# kill NAME: SIGKILL one of the environment's processes (a crash, not a shutdown).
cmd_kill() {
	local name=${1:-} pid
	restartable "$name"
	lock_state
	pid=$(recorded_pid "$name") || die "$name has no recorded pid"
	is_alive "$name" || die "$name is not running"
	kill -KILL "$pid"
	while proc_running "$pid"; do sleep 0.1; done
	log "killed $name (pid $pid)"
}

# start NAME: start a killed process again on its recorded ports and data, and wait for it.
cmd_start() {
	local name=${1:-}
	restartable "$name"
	lock_state
	load_ports
	NODE=$(cat "$STATE/cluster-node-mode" 2>/dev/null || echo 0)
	is_alive "$name" && die "$name is running"
	case $name in
	etcd) start_etcd ;;
	kube-apiserver) start_apiserver ;;
	kube-controller-manager) start_kcm ;;
	registry-*) ensure_registry "$name" ;;
	esac
}

# shellcheck source=e2e/node.sh
source "$E2E_DIR/node.sh"

main() {
	local cmd=${1:-}
	[[ $# -gt 0 ]] && shift
	case $cmd in
	up)
		case ${1:-} in
		"") ;;
		--node) NODE=1 ;;
		*) usage; die "unknown option for up: $1" ;;
		esac
		cmd_up
		;;
	env) cmd_env ;;
	status) cmd_status ;;
	down) cmd_down "$@" ;;
	kill) cmd_kill "$@" ;;
	start) cmd_start "$@" ;;
	-h | --help | help) usage ;;
	*) usage; exit 2 ;;
	esac
}

main "$@"
