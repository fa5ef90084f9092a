# Shared by the benchmark scripts (sourced). Each script appends Markdown table rows to
# $BENCH_RESULTS (when set) with `row AREA WHAT OCISYNC PEER RATIO`; e2e/bench/run.sh
# turns them into bench/RESULTS.md.
BIN=${OCISYNC_BIN:-target/release/ocisync}
PY=${OCISYNC_PYTHON:-target/pyenv/bin/python}

row() {
	if [[ -n ${BENCH_RESULTS:-} ]]; then
		printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" >>"$BENCH_RESULTS"
	fi
}

# Prints "a/b" as a ratio with two decimals.
ratio() {
	python3 -c 'import sys
a, b = map(float, sys.argv[1:])
r = a / b if b else None
print("n/a" if r is None else f"{r:.2f}x" if r >= 0.1 or r == 0 else f"{r:.3g}x (1/{1 / r:.0f})")' "$1" "$2"
}

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# Seconds between two `now` values, one decimal (or more with a third argument).
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.{int(sys.argv[3])}f}")' "$1" "$2" "${3:-1}"; }

# Peak RSS (MiB) and CPU seconds (user+system) of a running process.
peak_rss_mib() { awk '/^VmHWM:/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
rss_mib() { awk '/^VmRSS:/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (deadline in seconds) until `python3 -c CODE ARGS...` exits 0; the code polls.
wait_for() { # seconds what code args...
	local deadline=$(($(date +%s) + $1)) what=$2 code=$3
	shift 3
	until python3 -c "$code" "$@"; do
		if (($(date +%s) > deadline)); then
			echo "bench: $what not reached within the deadline" >&2
			return 1
		fi
		sleep 0.2
	done
}

# One agent process per fake Node `$ns-n1`..`$ns-n$count`, each with its own host root
# `$work/h<i>` allowed to write /etc/falco, against the controller at 127.0.0.1:$port; their
# pids are appended to the array `agents`. Waits (up to $wait seconds) until every agent
# has listed the bundles, that is, written its NodeReport.
start_agents() { # ns count work port wait
	local ns=$1 count=$2 work=$3 port=$4 i
	for i in $(seq 1 "$count"); do
		mkdir -p "$work/h$i/etc/falco"
		RUST_LOG=warn "$BIN" agent --node-name "$ns-n$i" --host-root "$work/h$i" --allowed-dir /etc/falco \
			--controller-url "http://127.0.0.1:$port" --listen 127.0.0.1:0 2>>"$work/agents.log" &
		agents+=($!)
	done
	wait_for "$5" "all agents up" 'import json, subprocess, sys
out = subprocess.run(["kubectl", "get", "nodereports", "-o", "json"], capture_output=True, check=True).stdout
n = sum(1 for i in json.loads(out)["items"] if i["metadata"]["name"].startswith(sys.argv[1]))
sys.exit(0 if n >= int(sys.argv[2]) else 1)' "$ns-n" "$count"
}

# Waits (up to $4 seconds) until RuleBundle $2 in namespace $1 counts $3 nodes desired and
# updated.
rolled_out() { # ns bundle count seconds
	wait_for "$4" "every node updated" 'import json, subprocess, sys
o = json.loads(subprocess.run(["kubectl", "get", "rulebundle", sys.argv[2], "-n", sys.argv[1], "-o", "json"], capture_output=True, check=True).stdout)
n = (o.get("status") or {}).get("nodes") or {}
sys.exit(0 if n.get("updated") == int(sys.argv[3]) == n.get("desired") else 1)' "$1" "$2" "$3"
}
