#!/usr/bin/env bash
# Builds the real upstream components of `secret-canary-lab up --cluster real`
# from their Go modules, at the versions pinned in lab/real/versions.env, into
# a cache outside the checkout keyed by version:
#
#   ${SECRET_CANARY_CACHE:-$HOME/.cache/secret-canary}/real/<component>-<version>/
#
#   kubernetes-<v>/  kube-apiserver kube-controller-manager kube-scheduler kubectl
#   etcd-<v>/        etcd
#   helm-<v>/        helm
#   eso-<v>/         external-secrets, crds/*.yaml (from the same module version)
#   ggcr-<v>/        crane, registry (go-containerregistry: the image tooling of
#                    scripts/build-image.sh and the lab's loopback OCI registry)
#
# A component whose directory exists is skipped, so a second run is instant.
# Each build goes to a temporary directory renamed into place only when
# complete; a failed build leaves nothing behind and names the component, the
# cause and its log file. Runs are serialised by a lock, so a foreground run
# waits for a background one and then finds everything built.
#
#   scripts/build-real.sh                 build what is missing, wait for it
#   scripts/build-real.sh --background    start that in the background and return
#                                         (scripts/setup.sh does this; the log is
#                                         <cache>/real/logs/build-real.log)
#   scripts/build-real.sh --check         exit 0 when everything is built, else 1
#   scripts/build-real.sh --print-dir     print the cache directory
#   scripts/build-real.sh --bin-dir       print a directory holding the built
#                                         kubectl and helm, for PATH (exit 1
#                                         when they are not built yet)
#
# Go is a test-harness language only: nothing here is part of the product.
# Environment: SECRET_CANARY_CACHE (cache root), SECRET_CANARY_GO_JOBS (go build
# -p, default 2), GOFLAGS/GOPROXY as usual.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
real_src=$root/lab/real
say() { printf 'build-real: %s\n' "$*" >&2; }

# shellcheck source=../lab/real/versions.env
. "$real_src/versions.env"
cache=${SECRET_CANARY_CACHE:-${HOME:?HOME is not set}/.cache/secret-canary}/real
logs=$cache/logs
jobs=${SECRET_CANARY_GO_JOBS:-2}

# component -> version, in build order (the control plane first: it is needed first).
components=(kubernetes etcd helm eso ggcr)
version_of() {
  case $1 in
    kubernetes) echo "$KUBERNETES" ;;
    etcd) echo "$ETCD" ;;
    helm) echo "$HELM" ;;
    eso) echo "$ESO" ;;
    ggcr) echo "$GGCR" ;;
  esac
}
dir_of() { echo "$cache/$1-$(version_of "$1")"; }
missing() {
  local c out=()
  for c in "${components[@]}"; do [ -d "$(dir_of "$c")" ] || out+=("$c"); done
  echo "${out[*]}"
}

mode=build
case ${1:-} in
  "") ;;
  --background) mode=background ;;
  --check) mode=check ;;
  --print-dir) echo "$cache"; exit 0 ;;
  --bin-dir)
    # A recent kubectl and helm for the tests and the demo: a new machine may
    # have none, or Debian's kubectl 1.20.
    bin=$cache/bin
    mkdir -p "$bin"
    for tool in "kubernetes kubectl" "helm helm"; do
      set -- $tool
      [ -x "$(dir_of "$1")/$2" ] || { say "not built yet: $1 (run scripts/build-real.sh)"; exit 1; }
      ln -sfn "$(dir_of "$1")/$2" "$bin/$2"
    done
    echo "$bin"
    exit 0
    ;;
  --foreground) ;; # internal: the detached child of --background
  -h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) say "unknown argument: $1 (see --help)"; exit 2 ;;
esac

todo=$(missing)
if [ "$mode" = check ]; then
  [ -z "$todo" ] && exit 0
  say "not built yet: $todo (run scripts/build-real.sh)"
  exit 1
fi
if [ -z "$todo" ]; then
  [ "$mode" = background ] || say "ok: everything cached in $cache"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  say "no Go toolchain: 'go' is not on PATH. The real cluster (up --cluster real) is built"
  say "from Go modules: install Go >= 1.26 and re-run scripts/build-real.sh ($todo missing)."
  exit 1
fi

mkdir -p "$logs"
if [ "$mode" = background ]; then
  # Detached (new session, no terminal): survives the calling script. The lock
  # below makes a later foreground run wait for it.
  say "building $todo in the background (log: $logs/build-real.log)"
  nohup setsid "${BASH_SOURCE[0]}" --foreground >>"$logs/build-real.log" 2>&1 </dev/null &
  exit 0
fi

exec 9>"$cache/.lock"
if ! flock -n 9; then
  say "another build is running (log: $logs/build-real.log); waiting for it"
  flock 9
fi

# Every go.mod must require exactly the pinned version: one place to change.
check_pin() { # module-dir module version
  if ! grep -qE "^(require )?[[:space:]]*$2 $3( |\$)" "$real_src/$1/go.mod"; then
    say "lab/real/$1/go.mod does not require $2 $3 (pinned in lab/real/versions.env):"
    say "edit it (cd lab/real/$1 && go get $2@$3 && go mod tidy) and re-run"
    exit 1
  fi
}
check_pin k8s k8s.io/kubernetes "$KUBERNETES"
check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD"
check_pin helm helm.sh/helm/v3 "$HELM"
check_pin eso github.com/external-secrets/external-secrets "$ESO"
check_pin ggcr github.com/google/go-containerregistry "$GGCR"

now() { date +%s.%N; }
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -v)

# build <component> <module-dir> <out-dir> <ldflags> <package> <binary-name>
gobuild() {
  local comp=$1 mod=$2 out=$3 ldflags=$4 pkg=$5 name=$6
  echo "== go build $pkg -> $name ($(date -u +%FT%TZ))"
  (cd "$real_src/$mod" && "${timer[@]}" go build -mod=readonly -buildvcs=false -p "$jobs" -trimpath \
    -ldflags "-s -w $ldflags" -o "$out/$name" "$pkg")
}

build_kubernetes() { # out log
  local v=$KUBERNETES major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  local ld="" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    gobuild kubernetes k8s "$1" "$ld" "k8s.io/kubernetes/cmd/$b" "$b" || return
  done
}
build_etcd() {
  gobuild etcd etcd "$1" "" . etcd
}
build_helm() {
  # As helm's Makefile: its version, and the Kubernetes version of its client-go.
  local kv km kn
  kv=$(cd "$real_src/helm" && go list -m -f '{{.Version}}' k8s.io/client-go) || return
  km=1
  kn=${kv#v0.}; kn=${kn%%.*}
  gobuild helm helm "$1" "-X helm.sh/helm/v3/internal/version.version=$HELM -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$km -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kn \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$km -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kn" \
    helm.sh/helm/v3/cmd/helm helm
}
build_ggcr() {
  gobuild ggcr ggcr "$1" "" github.com/google/go-containerregistry/cmd/crane crane
  gobuild ggcr ggcr "$1" "" github.com/google/go-containerregistry/cmd/registry registry
}
build_eso() {
  gobuild eso eso "$1" "" github.com/external-secrets/external-secrets external-secrets || return
  # The CRDs of the same module version, from the module zip (config/crds/bases).
  local src
  src=$(cd "$real_src/eso" && go list -m -f '{{.Dir}}' github.com/external-secrets/external-secrets) || return
  echo "== CRDs from $src/config/crds/bases"
  mkdir -p "$1/crds" || return
  cp "$src"/config/crds/bases/*.yaml "$1/crds/" || return
  rm -f "$1/crds/kustomization.yaml"
  chmod -R u+w "$1/crds"
}

total_start=$(now)
failed=()
for c in $todo; do
  v=$(version_of "$c")
  final=$(dir_of "$c")
  [ -d "$final" ] && continue # built by a run we waited for
  log=$logs/$c-$v.log
  tmp=$final.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  say "building $c $v (log: $log)"
  start=$(now)
  if "build_$c" "$tmp" >"$log" 2>&1; then
    secs=$(awk -v a="$start" -v b="$(now)" 'BEGIN{printf "%.0f", b-a}')
    # CPU seconds (user + system, from /usr/bin/time): comparable across loads.
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.0f", s}' "$log")
    printf '%s\t%s\t%s\t%s\t%s\n' "$c" "$v" "$secs" "$cpu" "$(date -u +%FT%TZ)" >>"$cache/build-times.tsv"
    printf 'component=%s\nversion=%s\nbuild_seconds=%s\ncpu_seconds=%s\ngo=%s\n' "$c" "$v" "$secs" "$cpu" "$(go env GOVERSION)" >"$tmp/BUILD"
    mv "$tmp" "$final"
    say "built $c $v in ${secs}s (${cpu} CPU s; $(du -sh "$final" | cut -f1)) -> $final"
  else
    rm -rf "$tmp"
    # Go's own messages (not /usr/bin/time's report, whose lines start with a tab).
    cause=$(grep -vE '^(	|== |	Command being timed)' "$log" | grep -vE '^go: downloading ' | tail -n 4 || true)
    [ -n "$cause" ] || cause=$(tail -n 3 "$log")
    say "FAILED to build $c $v. Cause:"
    printf '%s\n' "$cause" | sed 's/^/build-real:   /' >&2
    say "full log: $log"
    failed+=("$c")
  fi
done
secs=$(awk -v a="$total_start" -v b="$(now)" 'BEGIN{printf "%.0f", b-a}')
if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]} (the simulated cluster, --cluster sim, does not need them)"
  exit 1
fi
say "ok: built $todo in ${secs}s; cache $cache ($(du -sh "$cache" | cut -f1))"
