#!/usr/bin/env bash
# The demo: a Qdrant double with two collections, a local S3 server, a backup
# through the agent CLI, the backup listed, then restored into a second,
# empty Qdrant double under a new name. Then the operator's reconcilers back
# up a simulated 3-node cluster (an agent process per pod) and restore it
# into 2 nodes, against an in-memory Kubernetes API. All on 127.0.0.x.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

cargo build -q --bin qdrant-agent --bin qdrant-double
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

s3=$(free_port); src=$(free_port); dst=$(free_port)
start_moto "$s3"; pids+=("$MOTO_PID")
curl -fsS -X PUT "http://127.0.0.1:$s3/demo-backups" >/dev/null

"$bin/qdrant-double" --listen "127.0.0.1:$src" --collection docs:384:24M,8M --collection images:512:16M \
  --alias docs-current=docs 2>"$work/src.log" &
pids+=($!)
"$bin/qdrant-double" --listen "127.0.0.1:$dst" --version 1.18.0 2>"$work/dst.log" &
pids+=($!)
sleep 0.5

export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
s3args=(--s3-endpoint "http://127.0.0.1:$s3")

echo "== backup: every local shard streamed into S3, manifest written last"
"$bin/qdrant-agent" backup --qdrant-url "http://127.0.0.1:$src" --to s3://demo-backups/prod \
  --name demo-1 --node-name qdrant-0 "${s3args[@]}"

echo "== list: complete backups (those with a manifest)"
"$bin/qdrant-agent" list --from s3://demo-backups/prod "${s3args[@]}"

echo "== restore into an empty Qdrant, images restored as images-restored"
"$bin/qdrant-agent" restore --qdrant-url "http://127.0.0.1:$dst" --from s3://demo-backups/prod \
  --name demo-1 --rename images=images-restored "${s3args[@]}"

echo "== the restored Qdrant now has:"
curl -fsS "http://127.0.0.1:$dst/collections"; echo
curl -fsS "http://127.0.0.1:$dst/aliases"; echo

echo
echo "== the operator: QdrantBackup of a 3-node cluster, QdrantRestore into 2 nodes"
TEST_S3_ENDPOINT="http://127.0.0.1:$s3" cargo run -q -p qdrant-operator --example operator_demo
