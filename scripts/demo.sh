#!/usr/bin/env bash
# Shows ringlb relaying: builds it, starts a small real HTTP backend on a free
# loopback port, puts ringlb in front, fetches a page through it and prints
# what came back. Needs only cargo and python3; everything stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== building ringlb (release)"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/ringlb"

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

echo "hello from the backend, relayed by ringlb" >"$tmp/index.html"
backend_port=$(free_port)
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory "$tmp" >/dev/null 2>&1 &
pids+=($!)

listen_port=$(free_port)
"$bin" --listen "127.0.0.1:$listen_port" --backend "127.0.0.1:$backend_port" --workers 2 &
pids+=($!)

# Wait (bounded) until both are accepting.
for port in "$backend_port" "$listen_port"; do
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
    sleep 0.05
  done
done

echo "== GET http://127.0.0.1:$listen_port/ through ringlb -> backend 127.0.0.1:$backend_port"
python3 - "$listen_port" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/index.html", timeout=5) as r:
    print(r.status, r.reason)
    print(r.read().decode(), end="")
PY
