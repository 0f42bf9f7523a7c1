#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the end-to-end tests
# against the lab and a real OpenBao. Installs what is missing first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The lab's kubelet runs the product binary in canary Pods: build it before any test runs.
echo "== cargo build"
cargo build --workspace --bins --quiet
# The real cluster's components (started in the background by setup.sh): wait for them.
if command -v go >/dev/null 2>&1; then
  echo "== scripts/build-real.sh"
  scripts/build-real.sh
  # Built: the real-cluster tests must run here, not skip.
  export SECRET_CANARY_REQUIRE_REAL=1
  # Every test's kubectl (and helm) is the one built at the pinned version.
  PATH="$(scripts/build-real.sh --bin-dir):$PATH"
  export PATH
fi
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # (No doc tests exist: every example is a unit or end-to-end test.)
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "== cargo-nextest is missing (see scripts/setup.sh): falling back to cargo test"
  cargo test --workspace --no-fail-fast "$@"
fi
