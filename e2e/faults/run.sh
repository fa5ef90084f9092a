#!/usr/bin/env bash
# `make faults`: the fault campaign. Runs the fault tests against the local test
# environment (started if needed; registry faults through e2e/faults/proxy.rs, control-plane
# and process faults on the environment's own processes), each writing one row per fault,
# then writes bench/FAULTS.md from the rows and the fuzzing figures (target/fuzz-stats,
# from `make fuzz`). Bounded: each test has its own deadlines; the whole run is cut at
# FAULTS_TIMEOUT seconds (default 1200).
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=target/faults/rows
rm -rf "$rows" && mkdir -p "$rows"
# a fault test cut short (the timeout below) may leave the API server or etcd killed:
# `up` starts whatever is down again, for whoever uses the environment next
trap 'e2e/testenv.sh up --node >/dev/null 2>&1 || echo "faults: could not restore the test environment" >&2' EXIT
env=$(e2e/testenv.sh up --node)
eval "$env"
start=$SECONDS
status=0
OCISYNC_FAULTS_DIR=$PWD/$rows OCISYNC_E2E_REQUIRED=1 timeout "${FAULTS_TIMEOUT:-1200}" \
	cargo test --locked --test faults_registry --test faults_cluster --test faults_process \
	-- --include-ignored || status=$?
echo "faults: campaign ran in $((SECONDS - start)) s (exit $status)" >&2
python3 e2e/faults/report.py "$rows" target/fuzz-stats bench/FAULTS.md --seconds $((SECONDS - start)) --exit "$status"
exit "$status"
