#!/usr/bin/env bash
# A long fuzzing session over every parser of outside data (src/fuzz_tests/:
# config, store answers and a hostile store, canary answers, Kubernetes
# objects). Usage: scripts/fuzz.sh [CASES_PER_PROPERTY] (default 20000).
# Failures are saved to proptest-regressions/fuzz_tests/, one file per source file (commit them: every
# later `cargo test` replays them first). Prints the wall time and result.
set -uo pipefail
cd "$(dirname "$0")/.."
cases="${1:-20000}"
mkdir -p target/fuzz
log="target/fuzz/fuzz-$(date -u +%Y%m%dT%H%M%SZ)-${cases}.log"
cargo test -p secret-canary --lib fuzz_tests --no-run --quiet || exit 2
start=$(date +%s)
PROPTEST_CASES="$cases" cargo test -p secret-canary --lib fuzz_tests -- --test-threads=2 >"$log" 2>&1
status=$?
end=$(date +%s)
grep -E "^test |test result" "$log"
echo "fuzz: ${cases} cases per property, 16 properties, $((end - start)) s, exit ${status} (log: ${log})"
exit "$status"
