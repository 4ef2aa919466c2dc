#!/usr/bin/env bash
# Runs the whole test suite: the Kubernetes manifests against Kubernetes' own
# schemas, then unit and end-to-end tests against the real servers (Qdrant,
# a Kubernetes control plane each test starts, one shared local S3 server),
# and the Qdrant double where a fault must be made on request.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

scripts/setup.sh   # everything the tests need, into .tools/ (once)
scripts/images.sh  # the images the real-node tests run (podman; incremental)

# What `kubectl apply -k manifests/` and `helm install` would send, and the
# rendered StatefulSet.
rendered=$(mktemp --suffix=.yaml)
chart=$(mktemp --suffix=.yaml)
kubectl kustomize manifests/ >"$rendered"
.tools/helm/bin/python scripts/helm.py template qdrant-operator charts/qdrant-operator \
  -n qdrant-operator --include-crds >"$chart"
kubernetes-validate --quiet -k 1.33.0 --strict "$rendered" "$chart" controller/tests/snapshots/statefulset.yaml
rm -f "$rendered" "$chart"
echo "manifests and Helm chart valid for Kubernetes 1.33"

port=$(free_port)
start_moto "$port"
trap 'kill $MOTO_PID 2>/dev/null || true; rm -f "${TMPDIR:-/tmp}/moto-$port.log"' EXIT
export TEST_S3_ENDPOINT="http://127.0.0.1:$port"
cargo nextest run --workspace --no-fail-fast "$@"
