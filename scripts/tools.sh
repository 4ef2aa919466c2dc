#!/usr/bin/env bash
# Puts the real servers the tests and the demo run against into .tools/bin/:
# Qdrant, kube-apiserver, kube-controller-manager (and etcd from Debian).
# Tests find each as: $QDRANT_BIN / $KUBE_APISERVER_BIN /
# $KUBE_CONTROLLER_MANAGER_BIN / $ETCD_BIN, then PATH, then .tools/bin/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin

QDRANT_VERSION=1.18.3
KUBE_VERSION=1.36
shared=../shared/bin

unpack() { # NAME: from ../shared/bin/NAME-*-x86_64-linux.xz, if there
  local name=$1 packed
  [ -x ".tools/bin/$name" ] && return 0
  packed=$(ls "$shared/$name"-*-x86_64-linux.xz 2>/dev/null | head -n 1 || true)
  [ -n "$packed" ] || return 1
  xz -dc "$packed" >".tools/bin/.$name.$$" && chmod +x ".tools/bin/.$name.$$" &&
    mv ".tools/bin/.$name.$$" ".tools/bin/$name"
}

# Qdrant: its release tarball (the same binary as in its container image).
if ! command -v qdrant >/dev/null && ! unpack qdrant; then
  echo "downloading Qdrant $QDRANT_VERSION" >&2
  curl -fsSL "https://github.com/qdrant/qdrant/releases/download/v$QDRANT_VERSION/qdrant-x86_64-unknown-linux-gnu.tar.gz" |
    tar -xz -C .tools/bin qdrant
fi

# kube-apiserver and kube-controller-manager: the envtest binaries.
for b in kube-apiserver kube-controller-manager; do
  if ! command -v "$b" >/dev/null && ! unpack "$b"; then
    echo "downloading the envtest binaries for Kubernetes $KUBE_VERSION" >&2
    GOBIN="$PWD/.tools/bin" go install sigs.k8s.io/controller-runtime/tools/setup-envtest@latest
    dir=$(.tools/bin/setup-envtest use "$KUBE_VERSION" --bin-dir .tools/envtest -p path)
    cp "$dir/kube-apiserver" "$dir/etcd" .tools/bin/
    # envtest has no controller manager: the StatefulSet tests need one
    # from the Kubernetes server tarball (kubernetes-server-linux-amd64.tar.gz).
    break
  fi
done

# etcd from Debian (3.4 works with this API server).
if ! command -v etcd >/dev/null && [ ! -x .tools/bin/etcd ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
  else
    echo "etcd not found: apt-get install etcd-server (or set ETCD_BIN)" >&2
    exit 1
  fi
fi
echo "real servers ready: $(ls .tools/bin | tr '\n' ' ')"
