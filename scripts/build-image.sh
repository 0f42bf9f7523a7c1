#!/usr/bin/env bash
# Builds the secret-canary image without a container engine and pushes it:
# one layer (the binary, /etc/passwd and /etc/group with the `nonroot` user
# 65532, the CA bundle) on an empty base, entrypoint and user set, assembled
# and pushed by crane (go-containerregistry, built by scripts/build-real.sh;
# `crane` on PATH works too). The same image as the Dockerfile's, minus the
# container engine.
#
#   scripts/build-image.sh REF
#       build the static release binary (glibc, +crt-static) and push it as
#       REF, e.g. ghcr.io/me/secret-canary:0.1.0 (credentials: `crane auth
#       login`, or your ~/.docker/config.json)
#   scripts/build-image.sh --binary PATH REF
#       use that binary instead; a dynamically linked one brings the shared
#       libraries it needs (ldd), as distroless/cc would (the tests push the
#       binary cargo built for them this way)
#
# Prints the pushed image by digest (REPOSITORY@sha256:...) on stdout, and
# the size and build time on stderr. Registries on loopback or private
# addresses are spoken to over plain HTTP (crane's rule).
#
# Options: --binary PATH, --crane PATH, --no-strip (keep debug info).
# Environment: SOURCE_DATE_EPOCH (layer mtimes, default the last commit's).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

binary="" crane="" strip=1 ref=""
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --crane) crane=${2:?--crane needs a path}; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$ref" ] || die "one image reference only (got $ref and $1)"; ref=$1; shift ;;
  esac
done
[ -n "$ref" ] || die "usage: scripts/build-image.sh [--binary PATH] REGISTRY/REPOSITORY:TAG (see --help)"

start=$(date +%s.%N)
if [ -z "$crane" ]; then
  # shellcheck source=../lab/real/versions.env
  . "$root/lab/real/versions.env"
  cache=$("$root/scripts/build-real.sh" --print-dir)
  crane=$cache/ggcr-$GGCR/crane
  if [ ! -x "$crane" ]; then
    crane=$(command -v crane || true)
    [ -n "$crane" ] || die "no crane: run scripts/build-real.sh (it builds go-containerregistry $GGCR into $cache/ggcr-$GGCR) or put crane on PATH"
  fi
fi

if [ -z "$binary" ]; then
  say "building the static release binary (cargo build --release --target x86_64-unknown-linux-gnu, +crt-static)"
  (cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --release --target x86_64-unknown-linux-gnu -p secret-canary --bin secret-canary >&2)
  binary=$root/target/x86_64-unknown-linux-gnu/release/secret-canary
fi
[ -x "$binary" ] || die "not an executable: $binary"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fs=$work/rootfs
install -d -m 0755 "$fs/usr/local/bin" "$fs/etc/ssl/certs" "$fs/home/nonroot"
install -d -m 1777 "$fs/tmp"
install -m 0755 "$binary" "$fs/usr/local/bin/secret-canary"
[ "$strip" = 1 ] && strip --strip-debug "$fs/usr/local/bin/secret-canary" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$fs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$fs/etc/group"
for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -f "$bundle" ]; then
    install -m 0644 "$bundle" "$fs/etc/ssl/certs/ca-certificates.crt"
    break
  fi
done
# A dynamically linked binary: its shared libraries and loader, at their paths.
# (ldd's output is read whole: `ldd | grep -q` under pipefail fails at random
# when grep exits first and ldd dies of SIGPIPE, and a dynamic binary would
# then ship without its loader: exit 127 in the container.)
linkage=static
libs=$(ldd "$binary" 2>/dev/null || true)
if grep -q "=>" <<<"$libs"; then
  linkage=dynamic
  for lib in $(grep -oE '/[^ ]+' <<<"$libs" | sort -u); do
    real=$(readlink -f "$lib")
    install -D -m 0755 "$real" "$fs$lib"
  done
fi

# One reproducible layer: sorted, numeric owners (nonroot's home is its own).
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  --exclude=./home/nonroot -C "$fs" -cf "$work/layer.tar" .
tar --mtime="@$epoch" --owner=65532 --group=65532 --numeric-owner \
  -C "$fs" -rf "$work/layer.tar" ./home/nonroot
gzip -n -6 "$work/layer.tar"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
# An empty (scratch) base with OCI media types, plus our layer...
"$crane" append --oci-empty-base --new_layer "$work/layer.tar.gz" --new_tag "$ref" >/dev/null
# ...then the config: what the Dockerfile's image says.
"$crane" mutate "$ref" --tag "$ref" \
  --set-platform linux/amd64 \
  --entrypoint /usr/local/bin/secret-canary \
  --cmd run,--config,/etc/secret-canary/config.yaml,--listen,0.0.0.0:9850 \
  --user 65532:65532 \
  --workdir / \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --exposed-ports 9850/tcp,8080/tcp \
  --label "org.opencontainers.image.title=secret-canary" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.licenses=Apache-2.0" \
  --label "org.opencontainers.image.source=https://github.com/secret-canary/secret-canary" >/dev/null
digest=$("$crane" digest "$ref")
repo=${ref%@*}
# Strip a tag (a colon after the last slash), keep a registry port.
last=${repo##*/}
case $last in *:*) repo=${repo%:*} ;; esac
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
say "pushed $ref ($linkage binary; layer $(du -h "$work/layer.tar.gz" | cut -f1) compressed, rootfs $(du -sh "$fs" | cut -f1); ${secs}s) -> $repo@$digest"
echo "$repo@$digest"
