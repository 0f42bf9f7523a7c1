#!/usr/bin/env bash
# Runs the benchmarks against the lab and a real OpenBao and writes
# bench/results.md (accuracy against the lab's ground truth next to a
# kubectl-polling baseline; memory, CPU and API load; 1,000-probe scale; the
# real cluster tier: accuracy against the audit log, the prober's requests by
# verb, time to detect real faults -- skipped with a message when the Go
# components of scripts/build-real.sh are not built).
# The measured binaries are release builds. A full run takes about 10-15
# minutes on 2 cores after the build; `--quick` is a smoke run of a few minutes.
#
#   scripts/bench.sh                    # full sizes (see bench/README.md)
#   scripts/bench.sh --quick            # small sizes, to check it works
#   scripts/bench.sh --phases accuracy  # one phase; any secret-canary-bench option
#   scripts/bench.sh --phases real      # the real cluster tier alone (replaces its section)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup.sh
echo "== cargo build --release (secret-canary, secret-canary-bench)" >&2
cargo build --release --bins -p secret-canary -p secret-canary-bench --quiet
# The real tier's components, and the kubectl the baseline polls with (a new
# machine may have none): the ones built at the pinned versions.
if command -v go >/dev/null 2>&1; then
  scripts/build-real.sh
  PATH="$(scripts/build-real.sh --bin-dir):$PATH"
  export PATH
fi
# A thousand probes hold a few thousand watch connections through the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/secret-canary-bench --root "$root" "$@"
