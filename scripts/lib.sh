# Shared helpers for the scripts: the tools scripts/setup.sh put in .tools/
# come first on PATH; start a local moto S3 server.
# shellcheck shell=bash

export PATH="$PWD/.tools/bin:$PWD/.tools/venv/bin:$PATH"

# start_moto PORT: starts moto_server on 127.0.0.1:PORT, waits until it answers.
start_moto() {
  local port=$1
  command -v moto_server >/dev/null || {
    echo "moto_server not found: run scripts/setup.sh" >&2
    return 1
  }
  moto_server -H 127.0.0.1 -p "$port" >"${TMPDIR:-/tmp}/moto-$port.log" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "moto_server did not start on port $port" >&2
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
