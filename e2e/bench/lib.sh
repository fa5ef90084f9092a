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
