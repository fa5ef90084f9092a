#!/usr/bin/env bash
# Builds and runs the fuzz targets with libFuzzer on the stable toolchain: libfuzzer-sys
# links libFuzzer, and rustc's SanitizerCoverage pass (`-Cpasses=sancov-module`, stable
# flags) instruments the code; no sanitizer (that would need nightly), so findings are
# panics (failed invariants, overflow and debug assertions), timeouts and memory over the
# RSS limit.
#
#   fuzz/run.sh build                 build every target
#   fuzz/run.sh smoke                 each target FUZZ_SECONDS (default 15) from the committed
#                                     seeds and regressions; fails on any finding
#   fuzz/run.sh campaign              each target FUZZ_SECONDS (default 3600), one at a time,
#                                     working corpus in target/fuzz-corpus, statistics in
#                                     target/fuzz-stats/<target>.json
#   fuzz/run.sh minimize              merge the working corpora into fuzz/corpus (minimised)
#   fuzz/run.sh stats                 fuzz/STATS.md from target/fuzz-stats/*.json
#   fuzz/run.sh repro TARGET FILE...  run inputs once (a finding's reproducer)
#
# FUZZ_TARGETS (space-separated) narrows the targets; FUZZ_TIMEOUT (seconds per input,
# default 10) and FUZZ_RSS_MB (default 2048) bound each input: a hang or a run over the
# limit is a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz
ALL_TARGETS=(reference manifest unpack content_check falco_config glob_names label_selector agent_paths)
read -r -a TARGETS <<<"${FUZZ_TARGETS:-${ALL_TARGETS[*]}}"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=$ROOT/target/fuzz-build
# release for campaigns; the smoke builds the quicker `smoke` profile (see Cargo.toml)
PROFILE=${FUZZ_PROFILE:-release}
bin() { echo "$CARGO_TARGET_DIR/$TRIPLE/$PROFILE/$1"; }
WORK=$ROOT/target/fuzz-corpus
ARTIFACTS=$ROOT/target/fuzz-artifacts
STATS=$ROOT/target/fuzz-stats
SHARED=${OCISYNC_SHARED_TESTDATA:-$ROOT/../shared/testdata}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}

build() {
	# --target: the flags then reach only the target's code, not build scripts and
	# proc macros (which run on the host without libFuzzer).
	local flags=(-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4
		-Cllvm-args=-sanitizer-coverage-inline-8bit-counters
		-Cllvm-args=-sanitizer-coverage-pc-table
		-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing)
	RUSTFLAGS="${flags[*]}" cargo build --locked --profile "$PROFILE" --manifest-path "$FUZZ/Cargo.toml" \
		--target "$TRIPLE" "${TARGETS[@]/#/--bin=}"
}

# Inputs made at run time from what is not committed: the upstream Falco rules in
# shared/testdata (content checks, and as a rules layer for the unpacker).
add_shared_seeds() {
	local falco=$SHARED/falco f base
	[[ -d $falco ]] || return 0
	mkdir -p "$WORK/content_check" "$WORK/unpack"
	for f in "$falco"/*.yaml; do
		[[ -f $f ]] || continue
		base=$(basename "$f" .yaml)
		{ printf '\x00'; cat "$f"; } >"$WORK/content_check/shared-$base"
		{ printf '\x01'; tar -C "$falco" -czf - "$(basename "$f")"; } >"$WORK/unpack/shared-$base"
	done
}

# libFuzzer options every run shares; the working corpus comes first (new inputs go there).
common_options() {
	local t=$1
	mkdir -p "$ARTIFACTS/$t"
	printf '%s\n' "-timeout=$TIMEOUT" "-rss_limit_mb=$RSS_MB" "-malloc_limit_mb=$RSS_MB" \
		"-max_len=${FUZZ_MAX_LEN:-262144}" "-artifact_prefix=$ARTIFACTS/$t/" "-print_final_stats=1"
}

seed_dirs() {
	local t=$1 d
	for d in "$FUZZ/corpus/$t" "$FUZZ/regressions/$t"; do
		[[ -d $d ]] && echo "$d"
	done
	return 0
}

# One target for $2 seconds; the log in target/fuzz-stats/<target>.log.
run_one() {
	local t=$1 seconds=$2 log
	mkdir -p "$WORK/$t" "$STATS"
	log=$STATS/$t.log
	local options seeds
	mapfile -t options < <(common_options "$t")
	mapfile -t seeds < <(seed_dirs "$t")
	echo "fuzz: $t for ${seconds}s" >&2
	local status=0
	"$(bin "$t")" "${options[@]}" -max_total_time="$seconds" "$WORK/$t" "${seeds[@]}" >"$log" 2>&1 ||
		status=$?
	write_stats "$t" "$seconds" "$log" "$status"
	return "$status"
}

# target/fuzz-stats/<target>.json: what libFuzzer reported at the end of the run.
write_stats() {
	local t=$1 seconds=$2 log=$3 status=$4
	local execs rate cov ft corpus crashes slow
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
	ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
	corpus=$(find "$WORK/$t" -type f | wc -l)
	# findings: crashes, timeouts, out-of-memory; a slow unit (over 10 s of wall time, which
	# a niced fuzzer on a busy machine also reports) is counted apart, to be timed again
	crashes=$(find "$ARTIFACTS/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
	slow=$(find "$ARTIFACTS/$t" -type f -name 'slow-unit-*' | wc -l)
	cat >"$STATS/$t.json" <<-EOF
		{"target": "$t", "seconds": $seconds, "execs": ${execs:-0}, "execs_per_sec": ${rate:-0}, "coverage": ${cov:-0}, "features": ${ft:-0}, "corpus": $corpus, "crashes": $crashes, "slow_units": $slow, "exit": $status}
	EOF
	cat "$STATS/$t.json" >&2
}

smoke() {
	local seconds=${FUZZ_SECONDS:-15} t failed=()
	# the smoke starts from the committed seeds alone, and keeps nothing but its logs
	WORK=$(mktemp -d)
	trap 'rm -rf "$WORK"' EXIT
	STATS=$ROOT/target/fuzz-smoke
	ARTIFACTS=$STATS/artifacts
	rm -rf "$STATS"
	for t in "${TARGETS[@]}"; do
		run_one "$t" "$seconds" || { failed+=("$t"); tail -40 "$STATS/$t.log" >&2; }
	done
	if ((${#failed[@]})); then
		echo "fuzz smoke: findings in ${failed[*]} (reproducers in $ARTIFACTS)" >&2
		return 1
	fi
	echo "fuzz smoke: ${#TARGETS[@]} targets, ${seconds}s each, no finding" >&2
}

campaign() {
	local seconds=${FUZZ_SECONDS:-3600} t failed=()
	add_shared_seeds
	for t in "${TARGETS[@]}"; do
		run_one "$t" "$seconds" || failed+=("$t")
	done
	if ((${#failed[@]})); then
		echo "fuzz: findings in ${failed[*]} (reproducers in $ARTIFACTS)" >&2
		return 1
	fi
}

# Merges the working corpus into a fresh, minimised fuzz/corpus/<target>, leaving out the
# inputs made from shared/testdata (not ours to commit) and inputs over FUZZ_KEEP_BYTES.
minimize() {
	local t keep=${FUZZ_KEEP_BYTES:-16384}
	for t in "${TARGETS[@]}"; do
		[[ -d $WORK/$t ]] || continue
		local fresh=$ROOT/target/fuzz-min/$t pool=$ROOT/target/fuzz-pool/$t
		rm -rf "$fresh" "$pool"
		mkdir -p "$fresh" "$pool"
		find "$WORK/$t" "$FUZZ/corpus/$t" -maxdepth 1 -type f ! -name 'shared-*' -size -"$keep"c \
			-exec cp -t "$pool" {} + 2>/dev/null || true
		"$(bin "$t")" -merge=1 "-timeout=$TIMEOUT" "-rss_limit_mb=$RSS_MB" "$fresh" "$pool" \
			>"$STATS/$t.merge.log" 2>&1
		drop_shared "$fresh" "$WORK/$t"
		rm -rf "$FUZZ/corpus/$t"
		mkdir -p "$FUZZ/corpus/$t"
		cp "$fresh"/* "$FUZZ/corpus/$t/" 2>/dev/null || true
		echo "fuzz: $t corpus $(find "$FUZZ/corpus/$t" -type f | wc -l) inputs" >&2
	done
}

# Removes from $1 every input that holds 32 bytes in a row of shared/testdata or of the
# inputs made from it (shared-* in $2): what was made from upstream files is not committed.
drop_shared() {
	local dir=$1 work=$2
	[[ -d $SHARED ]] || return 0
	python3 - "$dir" "$SHARED" "$work" <<-'PY'
		import os, sys
		dir, shared, work = sys.argv[1:]
		W = 32
		sources = [os.path.join(r, f) for r, _, fs in os.walk(shared) for f in fs]
		sources += [os.path.join(work, f) for f in os.listdir(work) if f.startswith("shared-")]
		windows = set()
		for path in sources:
		    data = open(path, "rb").read()
		    windows.update(data[i:i + W] for i in range(0, max(len(data) - W + 1, 0)))
		for f in os.listdir(dir):
		    data = open(os.path.join(dir, f), "rb").read()
		    if any(data[i:i + W] in windows for i in range(0, max(len(data) - W + 1, 0))):
		        os.remove(os.path.join(dir, f))
	PY
}

# fuzz/STATS.md: a table of the last campaign's target/fuzz-stats/*.json.
stats_table() {
	local f
	{
		echo "# Fuzzing campaign"
		echo
		echo "Written by \`fuzz/run.sh stats\` from target/fuzz-stats/*.json; $(date -u +%Y-%m-%d), $(nproc) cores. How each target's run went (when, beside what, from which commit): bench/FAULTS.md."
		echo
		echo "| target | seconds | execs | exec/s | coverage (cov) | features (ft) | corpus | crashes | slow units |"
		echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
		for f in "$STATS"/*.json; do
			[[ -f $f ]] || continue
			python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.setdefault("slow_units", "-"); print("| {target} | {seconds} | {execs} | {execs_per_sec} | {coverage} | {features} | {corpus} | {crashes} | {slow_units} |".format(**d))' "$f"
		done
	} >"$FUZZ/STATS.md"
	cat "$FUZZ/STATS.md"
}

repro() {
	local t=$1
	shift
	"$(bin "$t")" "-timeout=$TIMEOUT" "-rss_limit_mb=$RSS_MB" "$@"
}

case ${1:-} in
build) build ;;
smoke) PROFILE=${FUZZ_PROFILE:-smoke} && cargo fmt --manifest-path "$FUZZ/Cargo.toml" -- --check && build && smoke ;;
campaign) build && campaign ;;
minimize) minimize ;;
stats) stats_table ;;
repro) shift && repro "$@" ;;
*)
	sed -n '2,20p' "$0" >&2
	exit 2
	;;
esac
