#!/usr/bin/env bash
# Runs the whole test suite: unit tests and end-to-end tests against one
# shared local S3 server (moto) and in-process Qdrant doubles.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

port=$(free_port)
start_moto "$port"
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
export TEST_S3_ENDPOINT="http://127.0.0.1:$port"
cargo nextest run --workspace --no-fail-fast "$@"
