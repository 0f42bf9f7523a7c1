#!/usr/bin/env bash
# The demo: a lab cluster (API server, ESO, Reloader, Deployment controller,
# kubelet, Bank-Vaults) on a real OpenBao, and the prober measuring its three
# chains, with metrics on http://127.0.0.1:${PORT:-9850}/metrics.
# Ctrl-C stops everything. `--cluster real`: the real control plane, ESO
# and kubectl built from their Go modules (scripts/build-real.sh; cached
# after the first build).
set -euo pipefail
cluster=sim
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) cluster=${2:?--cluster sim|real}; shift 2 ;;
    --cluster=*) cluster=${1#--cluster=}; shift ;;
    *) echo "usage: $0 [--cluster sim|real]" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --workspace --bins --quiet
[ "$cluster" = real ] && scripts/build-real.sh
# A recent kubectl when one is built (scripts/build-real.sh), else the machine's.
if kbin=$(scripts/build-real.sh --bin-dir 2>/dev/null); then PATH="$kbin:$PATH"; fi

dir=${LAB_DIR:-$root/.lab/demo}
port=${PORT:-9850}
rm -rf "$dir"
mkdir -p "$dir"
bin=$root/target/debug

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped"
}
trap cleanup INT TERM EXIT

"$bin/secret-canary-lab" up --dir "$dir" --cluster "$cluster" --canary-bin "$bin/secret-canary" > "$dir/lab.out" 2> "$dir/lab.log" &
pids+=($!)
for _ in $(seq 1 900); do [ -s "$dir/lab.json" ] && break; sleep 0.1; done
[ -s "$dir/lab.json" ] || { echo "the lab did not start; see $dir/lab.log"; tail -n 20 "$dir/lab.log"; exit 1; }
cat "$dir/lab.out"

export KUBECONFIG=$dir/kubeconfig
echo
echo "== the scenario (kubectl --kubeconfig $dir/kubeconfig get deploy,pods,secrets,externalsecrets -A)"
for _ in $(seq 1 100); do
  ready=$(kubectl get deploy -n canary -o jsonpath='{range .items[*]}{.status.availableReplicas}{" "}{end}' 2>/dev/null | wc -w)
  [ "$ready" -ge 3 ] && break
  sleep 0.2
done
kubectl get deploy,pods,secrets,externalsecrets -A || true

if [ -x "$bin/secret-canary" ] && grep -q ' run ' <<<"$("$bin/secret-canary" --help 2>/dev/null)"; then
  echo
  echo "== the first rotations: secret-canary once --config $dir/prober.yaml"
  echo "   (each probe writes a fresh value to OpenBao and times every hop; the table is what a pipeline gate sees)"
  "$bin/secret-canary" once --config "$dir/prober.yaml" --progress none 2> "$dir/once.log" ||
    echo "(a probe failed: the table above names the stage and reason; logs in $dir/once.log)"
  echo
  echo "== the prober: secret-canary run --config $dir/prober.yaml --listen 127.0.0.1:$port"
  "$bin/secret-canary" run --config "$dir/prober.yaml" --listen "127.0.0.1:$port" 2> "$dir/prober.log" &
  pids+=($!)
  echo "metrics:  http://127.0.0.1:$port/metrics"
  echo "last runs: http://127.0.0.1:$port/probes"
  echo "logs:     $dir/prober.log   ground truth: $dir/truth.jsonl"
fi
echo
if [ "$cluster" = real ]; then
  echo "faults: $bin/secret-canary-lab fault --dir $dir eso-stop on   (and off; the error lists the others)"
else
  echo "faults: $bin/secret-canary-lab fault --dir $dir eso-stall on   (and off)"
fi
echo "Ctrl-C to stop."
wait "${pids[0]}"
