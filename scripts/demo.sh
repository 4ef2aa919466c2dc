#!/usr/bin/env bash
# The demo, all on this machine against real servers: the real Qdrant
# 1.18.3, a real Kubernetes 1.36 control plane and a local S3 server (moto).
#  1. The agent CLI: back up a Qdrant, list the backup, restore it into a
#     second Qdrant under a new name, and compare.
#  2. The operator: a QdrantCluster of 3 nodes, a QdrantBackup, a
#     QdrantRestore into a 2-node cluster, and the proof side by side
#     (controller/examples/operator_demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

scripts/setup.sh demo   # what the demo needs, into .tools/ (once)
echo "== building the agent, the operator and the demo (the first build takes several minutes)"
cargo build -p qdrant-agent -p qdrant-operator --bins --example operator_demo
bin=target/debug
qdrant=$(command -v qdrant || echo "$PWD/.tools/bin/qdrant")

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export TMPDIR=$work   # moto's log goes here and away with it

# start_qdrant NAME: a real single-node Qdrant on free ports; sets URL.
start_qdrant() {
  local name=$1 http grpc
  http=$(free_port); grpc=$(free_port)
  mkdir -p "$work/$name"
  cat >"$work/$name/config.yaml" <<EOF
storage: {storage_path: $work/$name/storage, snapshots_path: $work/$name/snapshots}
service: {host: 127.0.0.1, http_port: $http, grpc_port: $grpc}
telemetry_disabled: true
EOF
  # In its own directory: Qdrant writes .qdrant-initialized where it runs.
  (cd "$work/$name" && exec "$qdrant" --config-path config.yaml) >"$work/$name.log" 2>&1 &
  pids+=($!)
  URL="http://127.0.0.1:$http"
  for _ in $(seq 1 100); do curl -fsS "$URL/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "Qdrant $name did not start: $(tail -5 "$work/$name.log")" >&2
  return 1
}

s3=$(free_port)
start_moto "$s3"; pids+=("$MOTO_PID")
curl -fsS -X PUT "http://127.0.0.1:$s3/demo-backups" >/dev/null
start_qdrant source; src=$URL
start_qdrant target; dst=$URL

echo "== the agent CLI: a real Qdrant at $src with collection notes (2 shards, 10000 points)"
curl -fsS -X PUT "$src/collections/notes?wait=true" -H 'content-type: application/json' \
  -d '{"vectors": {"size": 64, "distance": "Dot"}, "shard_number": 2}' >/dev/null
python3 - "$src" <<'EOF'
import json, sys, urllib.request
for start in range(1, 10001, 1000):
    points = [{"id": i, "vector": [((i * 7 + d) % 13) / 13 for d in range(64)], "payload": {"n": i}}
              for i in range(start, start + 1000)]
    req = urllib.request.Request(f"{sys.argv[1]}/collections/notes/points?wait=true", method="PUT",
                                 data=json.dumps({"points": points}).encode(),
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req).read()
EOF

export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
s3args=(--s3-endpoint "http://127.0.0.1:$s3")
echo "== qdrant-agent backup: each shard streamed live into s3://demo-backups/cli, manifest last"
"$bin/qdrant-agent" backup --qdrant-url "$src" --to s3://demo-backups/cli --name demo-1 \
  --node-name qdrant-0 "${s3args[@]}"
echo "== qdrant-agent list"
"$bin/qdrant-agent" list --from s3://demo-backups/cli "${s3args[@]}"
echo "== qdrant-agent restore into an empty Qdrant, as notes-restored"
"$bin/qdrant-agent" restore --qdrant-url "$dst" --from s3://demo-backups/cli --name demo-1 \
  --rename notes=notes-restored "${s3args[@]}"
echo "== proof: every point, vector and payload, source against restored"
"$bin/examples/operator_demo" compare "$src" notes "$dst" notes-restored

echo
echo "== the operator"
TEST_S3_ENDPOINT="http://127.0.0.1:$s3" "$bin/examples/operator_demo"
