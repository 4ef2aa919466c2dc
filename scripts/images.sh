#!/usr/bin/env bash
# Builds the three images the real-node tests run, from this checkout, with
# podman, and saves them as archives a containerd node imports:
#   .tools/images/qdrant-agent.tar     Dockerfile.agent      ghcr.io/qdrant-operator/qdrant-agent:<version>
#   .tools/images/qdrant-operator.tar  Dockerfile.controller ghcr.io/qdrant-operator/qdrant-operator:<version>
#   .tools/images/qdrant.tar           images/qdrant/        docker.io/qdrant/qdrant:v1.18.3
#   .tools/images/pause.tar            images/pause/         localhost/pause:local (the node's sandbox)
# The agent's and Qdrant's images carry the names the operator renders
# (ghcr.io/qdrant-operator/qdrant-agent:<version>, qdrant/qdrant:<version>),
# so that its pods run them unchanged with imagePullPolicy IfNotPresent.
#
# No registry is reachable from CI, so the Dockerfiles' public bases
# (rust:1.95-slim-bookworm, gcr.io/distroless/cc-debian12:nonroot) are
# replaced by local stand-ins, passed as build arguments:
#   localhost/stand-in/bookworm        debootstrap --variant=minbase bookworm + CA certificates
#   localhost/stand-in/rust:1.95       the above + gcc and this machine's Rust toolchain
#   localhost/stand-in/cc-nonroot      what distroless/cc has: glibc, libgcc_s, CA
#                                      certificates, /etc/passwd with nonroot (65532)
# With registry access, `podman build -f Dockerfile.agent .` uses the public
# bases unchanged.
#
# Idempotent: an image is rebuilt only when an input changed (cargo's cache
# mount makes a rebuild of the binaries incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

out=.tools/images
mkdir -p "$out"
say() { echo "images: $*" >&2; }
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || {
    say "$tool is missing: apt-get install podman debootstrap runc (scripts/setup.sh node does it as root)"
    exit 1
  }
done
# crun fails on hybrid cgroups here, and limits at the hard maximum are refused.
build() { podman build --runtime runc --ulimit nofile=16384:16384 --ulimit nproc=8192:8192 --pull=never -q "$@" >/dev/null; }
exists() { podman image exists "$1"; }

# --- stand-in bases -------------------------------------------------------
root=$out/rootfs/bookworm
if ! exists localhost/stand-in/bookworm; then
  if [ ! -x "$root/usr/bin/apt-get" ]; then
    say "debootstrap bookworm (minbase) into $root"
    rm -rf "$root" && mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" http://deb.debian.org/debian >"$out/debootstrap.log"
  fi
  tar -C "$root" --exclude=./var/cache/apt/archives --exclude=./var/lib/apt/lists -c . |
    podman import --change 'CMD ["/bin/bash"]' - localhost/stand-in/bookworm >/dev/null
fi

if ! exists localhost/stand-in/rust:1.95; then
  say "stand-in build base: bookworm + gcc + the Rust toolchain of this machine"
  tool=$(rustc --print sysroot)
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  mkdir -p "$ctx/rust/bin"
  cp "$tool/bin/cargo" "$tool/bin/rustc" "$ctx/rust/bin/"
  cp -a "$tool/lib" "$ctx/rust/"
  # This machine's own CA certificates (a TLS-inspecting proxy may sit
  # between it and crates.io), for the build stage only.
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Containerfile" <<'EOF'
FROM localhost/stand-in/bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY ca /usr/local/share/ca-certificates
RUN update-ca-certificates >/dev/null
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
  build --network host -t localhost/stand-in/rust:1.95 "$ctx"
  rm -rf "$ctx"
  trap - EXIT
fi

if ! exists localhost/stand-in/cc-nonroot; then
  say "stand-in runtime base (distroless/cc's contents)"
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  r=$ctx/root
  mkdir -p "$r/etc/ssl/certs" "$r/lib/x86_64-linux-gnu" "$r/lib64" "$r/tmp" "$r/home/nonroot"
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1 libdl.so.2 libpthread.so.0 librt.so.1; do
    cp -L "$root/lib/x86_64-linux-gnu/$lib" "$r/lib/x86_64-linux-gnu/"
  done
  cp -L "$root/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
  cp -L "$root/etc/ssl/certs/ca-certificates.crt" "$r/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
  chmod 1777 "$r/tmp"
  chown 65532:65532 "$r/home/nonroot"
  tar -C "$r" -c . | podman import --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' - localhost/stand-in/cc-nonroot >/dev/null
  rm -rf "$ctx"
  trap - EXIT
fi

# --- the project's images -------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
save() { # archive image
  podman save --format docker-archive -o "$out/$1.tar.new" "$2" && mv "$out/$1.tar.new" "$out/$1.tar"
}
bases=(--build-arg BUILD_IMAGE=localhost/stand-in/rust:1.95 --build-arg RUNTIME_IMAGE=localhost/stand-in/cc-nonroot)
# Both Dockerfiles build both binaries into one cache mount, so the second
# build finds them done.
for img in agent:Dockerfile.agent operator:Dockerfile.controller; do
  name=qdrant-${img%%:*}
  say "$name from ${img#*:}"
  build --network host "${bases[@]}" -f "${img#*:}" -t "ghcr.io/qdrant-operator/$name:$version" .
  save "$name" "ghcr.io/qdrant-operator/$name:$version"
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
say "qdrant from images/qdrant/ and the real Qdrant binary"
cp -r images/qdrant/. "$ctx/"
cp "$(command -v qdrant)" "$ctx/qdrant"
build --build-arg BASE_IMAGE=localhost/stand-in/bookworm -t docker.io/qdrant/qdrant:v1.18.3 "$ctx"
save qdrant docker.io/qdrant/qdrant:v1.18.3

say "pause (the node's sandbox image)"
rm -rf "${ctx:?}"/* && cp images/pause/Containerfile "$ctx/"
gcc -static -O2 -o "$ctx/pause" images/pause/pause.c
build -t localhost/pause:local "$ctx"
save pause localhost/pause:local

podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'qdrant|stand-in|pause' >&2
