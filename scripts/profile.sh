#!/usr/bin/env bash
# scripts/profile.sh: where ringlb's and HAProxy's CPU goes in the same
# keep-alive workload, split into user space, io_uring, TCP/IP and the rest
# of the kernel, from `perf record` samples. Same setup as scripts/bench.sh's
# keepalive workload: by default in its pinned layout (the backend nginx on
# the last CPU, wrk and the proxy on CPU 0), one proxy worker, 64 connections.
#
#   scripts/profile.sh [--seconds N] [--conns N] [--layout pinned|unpinned]
#                      [--ringlb-bin PATH]
#
# --layout unpinned pins nothing, as bench.sh's unpinned layout; the table
# then also says how often the proxy was switched out (perf's
# context switches per 1,000 requests).
#
# --conns sets wrk's connection count (64; bench.sh's many workload uses
# 1000 and 4000).
#
# Prints a table per proxy; needs perf, wrk, nginx and haproxy (bench.sh
# installs the last three). A measurement, never a test: the shares are what
# matters, the machine's noise moves the totals.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER=8
CONNS=64
LAYOUT=pinned
RINGLB_BIN=target/release/ringlb
while (($#)); do
    case $1 in
        --seconds) SECONDS_PER=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --layout) LAYOUT=$2; shift 2 ;;
        --ringlb-bin) RINGLB_BIN=$2; shift 2 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "profile.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for tool in perf wrk nginx haproxy taskset; do
    command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing" >&2; exit 2; }
done
case $LAYOUT in
    pinned) PIN_PROXY=(taskset -c 0); PIN_BACKEND=(taskset -c "$(($(nproc) - 1))") ;;
    unpinned) PIN_PROXY=(); PIN_BACKEND=() ;;
    *) echo "profile.sh: --layout is pinned or unpinned, got '$LAYOUT'" >&2; exit 2 ;;
esac
[[ -x $RINGLB_BIN ]] || { echo "profile.sh: no ringlb at $RINGLB_BIN (cargo build --release)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/ringlb-profile.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP:-} ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

# Buckets perf's per-symbol shares (on stdin) by where the time goes.
cat >"$TMP/split.py" <<'EOF'
import re, sys
name, rps, layout, cpu_us, switches = sys.argv[1:6]
SPIN = "spinlock release (interrupts back on: softirq work lands here)"
# Kernel symbols to buckets: the first pattern that matches wins.
KERNEL = [
    (SPIN, re.compile(r"^(_raw_spin_unlock|_raw_spin_lock)")),
    ("io_uring", re.compile(r"^(_?_?io_|io_uring|__io_)")),
    ("TCP/IP and loopback", re.compile(r"tcp|^_?_?ip_|inet|^_?_?sk_|skb|^_?_?dev_|netif|net_rx|loopback|^_?_?napi|sock|nf_|^_?_?udp|^raw_|^_?_?neigh|csum|^_?_?release_sock|__inet|ipv4|ipv6")),
    ("epoll", re.compile(r"epoll|ep_")),
    ("syscall entry/exit", re.compile(r"syscall|entry_|^do_syscall|^x64_sys|^__x64|^__sys|fdget|fput|fget|seccomp|^ret_from")),
    ("scheduler and wake-ups", re.compile(r"sched|wake|schedule|task_|finish_task|futex|__switch|switch_|pick_|enqueue|dequeue|update_curr|try_to_wake|ttwu")),
    ("memory", re.compile(r"kmem|kmalloc|kfree|slab|__alloc|page|memcg|mem_cgroup|memcpy|memset|copy_|_copy|rep_movs")),
]
# In the order the table prints them.
buckets = dict.fromkeys(["user space", "io_uring", "TCP/IP and loopback", "epoll", "syscall entry/exit",
                         "scheduler and wake-ups", "memory", SPIN, "other kernel"], 0.0)
other = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
    if not m:
        continue
    pct, kind, sym = float(m.group(1)), m.group(3), m.group(4)
    if kind != "k":
        buckets["user space"] += pct
        continue
    bucket = next((b for b, pattern in KERNEL if pattern.search(sym)), "other kernel")
    buckets[bucket] += pct
    if bucket == "other kernel":
        other[sym] = other.get(sym, 0.0) + pct
total = sum(buckets.values()) or 1
print(f"\n{name}: {rps} requests/s, {cpu_us} us of CPU and {switches} context switches per request ({layout})")
print("| where | share of the proxy's CPU samples |")
print("|---|---:|")
for k, v in buckets.items():
    print(f"| {k} | {100 * v / total:.1f}% |")
top = sorted(other.items(), key=lambda kv: -kv[1])[:6]
print("other kernel, largest: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in top))
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
render() {
    local template=$1 out=$2 text kv
    shift 2
    text=$(<"$template")
    for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
    printf '%s\n' "$text" >"$out"
}
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "profile.sh: nothing listens on $1" >&2
    exit 1
}

BACKEND_PORT=$(free_port)
mkdir -p "$TMP/www" "$TMP/backend-tmp"
user=""
((EUID == 0)) && user="user root;"
render bench/nginx-backend.conf.in "$TMP/backend.conf" "USER_DIRECTIVE=$user" "WORKERS=1" \
    "NOFILE=65536" "WORKER_CONNECTIONS=16384" "TMP=$TMP" "PORT=$BACKEND_PORT"
"${PIN_BACKEND[@]}" nginx -p "$TMP/" -e "$TMP/backend-error.log" -c "$TMP/backend.conf" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

# usage PID: the CPU ticks (user + system) and the context switches
# (voluntary + not) of all of PID's threads so far.
usage() {
    local cpu=0 cs=0 t fields
    for t in /proc/"$1"/task/*; do
        read -ra fields <"$t/stat" || continue
        cpu=$((cpu + fields[13] + fields[14]))
        cs=$((cs + $(awk '/ctxt_switches/ {n += $2} END {print n}' "$t/status")))
    done
    echo "$cpu $cs"
}

# profile NAME PORT PID: load through PORT with wrk while perf samples PID.
profile() {
    local name=$1 port=$2 pid=$3
    "${PIN_PROXY[@]}" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null # warm-up
    "${PIN_PROXY[@]}" wrk -t1 -c"$CONNS" -d"$((SECONDS_PER + 2))s" "http://127.0.0.1:$port/" >"$TMP/$name.wrk" &
    local wrk=$!
    sleep 1
    local cpu0 cs0 cpu1 cs1
    read -r cpu0 cs0 < <(usage "$pid")
    perf record -q -F 999 -p "$pid" -o "$TMP/$name.data" -- sleep "$SECONDS_PER" 2>"$TMP/$name.perf.log" || { cat "$TMP/$name.perf.log" >&2; exit 1; }
    read -r cpu1 cs1 < <(usage "$pid")
    wait "$wrk"
    local rps per_req
    rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/$name.wrk")
    # Over the perf window: CPU ticks (1/100 s) and switches, per request.
    per_req=$(python3 -c "r = $rps * $SECONDS_PER; print(f'{($cpu1 - $cpu0) * 1e4 / r:.1f} {($cs1 - $cs0) / r:.2f}')")
    perf report -q -i "$TMP/$name.data" --no-children --sort dso,sym --stdio \
        >"$TMP/$name.report" 2>"$TMP/$name.report.log"
    python3 "$TMP/split.py" "$name" "$rps" "$LAYOUT" $per_req <"$TMP/$name.report"
}

PORT=$(free_port)
"${PIN_PROXY[@]}" "$RINGLB_BIN" --listen "127.0.0.1:$PORT" --backend "127.0.0.1:$BACKEND_PORT" \
    --workers 1 --log-level warn &
PIDS+=($!)
wait_port "$PORT"
profile ringlb "$PORT" "${PIDS[-1]}"
kill "${PIDS[-1]}"

PORT=$(free_port)
render bench/haproxy.cfg.in "$TMP/haproxy.cfg" "NAME=haproxy" "WORKERS=1" "MAXCONN=$((CONNS + 4000))" \
    "TMP=$TMP" "PORT=$PORT" "BACKEND_PORT=$BACKEND_PORT"
"${PIN_PROXY[@]}" haproxy -db -f "$TMP/haproxy.cfg" &
PIDS+=($!)
wait_port "$PORT"
profile haproxy "$PORT" "${PIDS[-1]}"
