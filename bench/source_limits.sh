#!/usr/bin/env bash
# A ringlb for scripts/bench.sh (--ringlb-bin bench/source_limits.sh, with
# REAL_RINGLB=path/to/ringlb) with per-source limits on and a source table
# filled with SOURCES distinct sources (100,000 by default) before the
# benchmark reaches it: the "limits on" side of docs/performance.md's
# per-source limits A/B.
#
# Called as bench.sh calls ringlb (--listen ADDR --backend ADDR --workers N
# ...), it starts ringlb from a config file whose one frontend listens on a
# private port with a backend that refuses, opens one connection from each
# of SOURCES addresses 127.2.x.y there (each is admitted, tracked and
# closed), then rewrites the file with the bench's listen address and backend
# and reloads (SIGHUP): the table and its entries stay, since the prefixes
# and the table size do. The limits: max-conns-per-source 1000 (wrk's 64
# connections all come from 127.0.0.1) and rate-per-source 1/h with a burst
# of 1,000,000, so every admission takes a token and no entry is spent
# (and dropped) within the run. It logs the sources tracked and ringlb's
# RSS before and after the fill to stderr (bench.sh's instance log).
# Anything else (--version) goes to ringlb as is.
set -euo pipefail

real=${REAL_RINGLB:?set REAL_RINGLB to the ringlb binary}
sources=${SOURCES:-100000}
listen="" backend="" workers=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --listen) listen=${args[i + 1]} ;;
        --backend) backend=${args[i + 1]} ;;
        --workers) workers=${args[i + 1]} ;;
    esac
done
[[ -n $listen && -n $backend ]] || exec "$real" "$@"

dir=$(mktemp -d "${TMPDIR:-/tmp}/ringlb-source-limits.XXXXXX")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
prefill_port=$(free_port)
admin_port=$(free_port)
config() { # LISTEN BACKEND
    cat >"$dir/ringlb.toml.tmp" <<EOF
workers = $workers
admin = "127.0.0.1:$admin_port"

[[frontend]]
name = "default"
listen = "$1"
backends = ["$2"]
max-conns-per-source = 1000
rate-per-source = "1/h"
rate-burst = 1000000
source-table-size = 100000
EOF
    mv "$dir/ringlb.toml.tmp" "$dir/ringlb.toml"
}
config "127.0.0.1:$prefill_port" "127.0.0.1:1"
"$real" --config "$dir/ringlb.toml" --log-level warn &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
trap 'exit 0' TERM INT
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }

python3 - "$prefill_port" <<'EOF'
import socket, sys, time
deadline = time.time() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("ringlb did not listen on the prefill port")
        time.sleep(0.05)
EOF
before=$(rss)
python3 - "$prefill_port" "$sources" <<'EOF'
import socket, struct, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
base = struct.unpack("!I", socket.inet_aton("127.2.0.0"))[0]
linger = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT here
start = time.time()
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.bind((socket.inet_ntoa(struct.pack("!I", base + i)), 0))
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        pass
    s.close()
print(f"source_limits.sh: {n} sources in {time.time() - start:.1f} s", file=sys.stderr)
EOF
sleep 1
tracked=$(python3 -c 'import json, sys, urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1]))[0]["tracked"])' "http://127.0.0.1:$admin_port/sources?top=1")
echo "source_limits.sh: $tracked sources tracked; ringlb RSS $before KiB before the fill, $(rss) KiB after" >&2
config "$listen" "$backend"
kill -HUP "$pid"
wait "$pid"
