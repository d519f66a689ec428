#!/usr/bin/env bash
#
# scripts/bench.sh: ringlb next to HAProxy (mode tcp) and nginx (stream), side
# by side in one run, all in front of the same real HTTP backend (nginx), plus
# "direct" (wrk straight at the backend) as the no-proxy baseline.
#
# Run `scripts/bench.sh --help` for flags.  The interesting design choices:
#
# * Every process listens on 127.0.0.1 only, on ports the OS hands out, and
#   runs in its own session/process group (setsid) so the EXIT/INT/TERM trap
#   can kill it together with whatever it forked (nginx workers).
# * All proxies are started once and kept running; the measurements are then
#   interleaved across peers (A B C D, D C B A, ...) so slow drift of the
#   machine (thermal, noisy neighbours, page cache) hits every peer alike, and
#   the median over rounds is reported.
# * CPU pinning (see compute_layout): the backend gets the last CPU(s) to
#   itself; wrk, the idle-test client and the proxy share the rest.  The
#   backend is not what is being measured, so it must never be the bottleneck
#   nor steal cycles from the proxy; the proxy competing with the load
#   generator is then the same handicap for every proxy.
#
set -euo pipefail

# nginx and haproxy live in /usr/sbin, which is not on a normal user's PATH on Debian.
PATH=$PATH:/usr/sbin:/sbin
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ALL_PEERS=(direct ringlb haproxy nginx)
BULK_BYTES=$((10 * 1024 * 1024))

usage() {
    cat <<EOF
Usage: scripts/bench.sh [options]

Benchmarks ringlb against HAProxy (mode tcp) and nginx (stream module), with
"direct" (no proxy) as baseline, all in front of one nginx HTTP backend on
127.0.0.1.  Workloads, each run by every peer in every round:
  keepalive  wrk, keep-alive GET / (13-byte body): req/s, p50, p99 latency,
             and the proxy's CPU seconds per 100k requests
  churn      wrk with "Connection: close": new connections/s
  bulk       wrk, GET of a 10 MiB file: MB/s (10^6 bytes/s)
  idle       N connections held open through the proxy after one tiny request
             each: proxy RSS growth in KiB per connection

Options (defaults in brackets):
  --workers N          proxy workers: haproxy nbthread, nginx worker_processes,
                       ringlb --workers [1]
  --rounds N           interleaved rounds, median reported [3; smoke 1]
  --duration S         seconds per wrk run [5; smoke 1]; bulk runs >= 2 s
  --connections N      wrk connections for keepalive and churn [64]
  --bulk-connections N wrk connections for bulk [8; smoke 2]
  --idle-conns N       connections held open in the idle test [4000; smoke 200]
  --wrk-threads N      wrk threads [1]
  --only LIST          comma-separated subset of: ${ALL_PEERS[*]// /,}
                       [all]  (ratios to a peer left out are shown as "-")
  --out FILE.md        report path; the chart goes next to it as FILE.svg
                       [bench/results/latest.md; smoke bench/results/smoke.md]
  --ringlb-bin PATH    use this ringlb binary instead of building one
                       (also: RINGLB_BIN=PATH)
  --no-build           do not run cargo; use \${CARGO_TARGET_DIR:-target}/release/ringlb
  --no-pin             do not pin anything to CPUs with taskset
  --no-install         never apt-get install; just say what is missing
  --keep-tmp           keep the temp dir (configs, logs) and print its path
  --smoke              quick self-test: ~1 s per workload, 1 round, 200 idle
                       connections, 2 bulk connections; exits non-zero if any
                       peer failed to serve
  -h, --help           this text

Missing tools (wrk, haproxy, nginx + stream module, python3) are installed
with apt-get when running as root; otherwise the script prints what to install
and exits 2.  ringlb is built with "cargo build --release" (honours
CARGO_TARGET_DIR).  The exit status is non-zero if any peer failed to start or
serve (non-2xx answers, socket errors, zero requests, dropped idle
connections); the report is still written and marks the failure.
EOF
}

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- arguments --

WORKERS="" ROUNDS="" DURATION="" CONNS="" BULK_CONNS="" IDLE_CONNS="" WRK_THREADS=""
ONLY="" OUT="" SMOKE=0 PIN=1 BUILD=1 INSTALL=1 KEEP_TMP=0
RINGLB_BIN=${RINGLB_BIN:-}

set_opt() {
    case $1 in
        --workers) WORKERS=$2 ;;
        --rounds) ROUNDS=$2 ;;
        --duration) DURATION=$2 ;;
        --connections) CONNS=$2 ;;
        --bulk-connections) BULK_CONNS=$2 ;;
        --idle-conns) IDLE_CONNS=$2 ;;
        --wrk-threads) WRK_THREADS=$2 ;;
        --only) ONLY=$2 ;;
        --out) OUT=$2 ;;
        --ringlb-bin) RINGLB_BIN=$2 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
}

parse_args() {
    while (($#)); do
        case $1 in
            -h | --help)
                usage
                exit 0
                ;;
            --smoke) SMOKE=1 ;;
            --no-pin) PIN=0 ;;
            --no-build) BUILD=0 ;;
            --no-install) INSTALL=0 ;;
            --keep-tmp) KEEP_TMP=1 ;;
            --workers | --rounds | --duration | --connections | --bulk-connections | \
                --idle-conns | --wrk-threads | --only | --out | --ringlb-bin)
                (($# >= 2)) || die "$1 needs a value"
                set_opt "$1" "$2"
                shift
                ;;
            --*=*) set_opt "${1%%=*}" "${1#*=}" ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done

    # Smoke mode only changes the defaults; explicit flags still win.
    if ((SMOKE)); then
        : "${DURATION:=1}" "${ROUNDS:=1}" "${IDLE_CONNS:=200}" "${BULK_CONNS:=2}"
        : "${OUT:=$BENCH/results/smoke.md}"
    fi
    : "${WORKERS:=1}" "${ROUNDS:=3}" "${DURATION:=5}" "${CONNS:=64}" "${BULK_CONNS:=8}"
    : "${IDLE_CONNS:=4000}" "${WRK_THREADS:=1}" "${OUT:=$BENCH/results/latest.md}"

    local name
    for name in WORKERS ROUNDS DURATION CONNS BULK_CONNS IDLE_CONNS WRK_THREADS; do
        [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "${name,,} must be a positive integer, got '${!name}'"
    done
    ((WRK_THREADS <= CONNS && WRK_THREADS <= BULK_CONNS)) ||
        die "--wrk-threads must not exceed --connections / --bulk-connections"
    [[ $OUT == *.md ]] || die "--out must end in .md (the chart is written next to it as .svg)"
    [[ $OUT == /* ]] || OUT=$PWD/$OUT

    # Peers to run, always in canonical order (the round order is derived from it).
    PEERS=()
    if [[ -z $ONLY ]]; then
        PEERS=("${ALL_PEERS[@]}")
    else
        local want w p
        IFS=, read -r -a want <<<"$ONLY"
        for w in "${want[@]}"; do
            [[ " ${ALL_PEERS[*]} " == *" $w "* ]] || die "--only: unknown peer '$w' (known: ${ALL_PEERS[*]})"
        done
        for p in "${ALL_PEERS[@]}"; do
            [[ ",$ONLY," == *",$p,"* ]] && PEERS+=("$p")
        done
    fi
    ((${#PEERS[@]})) || die "--only selected no peer"
}

has_peer() { [[ " ${PEERS[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------- dependencies --

# Where a dynamic nginx stream module may live; Debian/Ubuntu put it in the
# first one (package libnginx-mod-stream), Fedora/RHEL in the second.
STREAM_MODULE_DIRS=(/usr/lib/nginx/modules /usr/lib64/nginx/modules /usr/share/nginx/modules /etc/nginx/modules)

# Prints the load_module line the stream config needs: empty if nginx has the
# stream module built in, the .so path if it is a dynamic module we can find.
# Returns 1 if nginx has no usable stream module.
nginx_stream_load_line() {
    local v dirs dir
    v=$(nginx -V 2>&1) || return 1
    if [[ $v == *"--with-stream "* || $v == *"--with-stream" ]]; then
        return 0 # static
    fi
    dirs=("${STREAM_MODULE_DIRS[@]}")
    if [[ $v =~ --modules-path=([^ ]+) ]]; then dirs=("${BASH_REMATCH[1]}" "${dirs[@]}"); fi
    for dir in "${dirs[@]}"; do
        if [[ -f $dir/ngx_stream_module.so ]]; then
            echo "load_module $dir/ngx_stream_module.so;"
            return 0
        fi
    done
    return 1
}

ensure_deps() {
    local -a pkgs=()
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || pkgs+=(nginx) # also the backend, always needed
    if has_peer haproxy; then command -v haproxy >/dev/null || pkgs+=(haproxy); fi
    if has_peer nginx && ! { command -v nginx >/dev/null && nginx_stream_load_line >/dev/null; }; then
        pkgs+=(libnginx-mod-stream)
    fi
    command -v taskset >/dev/null && command -v setsid >/dev/null || pkgs+=(util-linux)
    command -v timeout >/dev/null || pkgs+=(coreutils)
    if has_peer ringlb && ((BUILD)) && [[ -z $RINGLB_BIN ]]; then
        command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup), or pass --ringlb-bin / --only"
    fi
    ((${#pkgs[@]})) || return 0

    if ((INSTALL)) && ((EUID == 0)) && command -v apt-get >/dev/null; then
        log "installing: ${pkgs[*]}"
        # Debian/Ubuntu: the nginx and haproxy packages try to start their
        # system services on install (listening on *:80 for nginx).  Where a
        # policy-rc.d forbids that (containers, CI images) nothing starts;
        # elsewhere the services are the distribution's business, we never
        # use them: all our instances run from private configs.
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
        if has_peer nginx; then
            nginx_stream_load_line >/dev/null || die "nginx stream module still not found after install (looked in ${STREAM_MODULE_DIRS[*]})"
        fi
        return 0
    fi
    {
        echo "[bench] missing: ${pkgs[*]}"
        echo "[bench] install them, e.g. on Debian/Ubuntu:"
        echo "    sudo apt-get update && sudo apt-get install -y ${pkgs[*]}"
        echo "[bench] (or run this script as root, which does that itself)"
    } >&2
    exit 2
}

build_ringlb() {
    has_peer ringlb || return 0
    if [[ -n $RINGLB_BIN ]]; then
        [[ -x $RINGLB_BIN ]] || die "--ringlb-bin $RINGLB_BIN is not an executable"
        return 0
    fi
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target # cargo resolves it from the cwd, which is $ROOT
    if ((BUILD)); then
        log "building ringlb: cargo build --release (target dir $target)"
        if ! (cd "$ROOT" && cargo build --release --bin ringlb >&2); then
            log "ERROR: cargo build --release failed; ringlb is reported as FAILED, the other peers still run"
            RINGLB_BUILD_ERROR="cargo build --release failed"
            return 0
        fi
    fi
    RINGLB_BIN=$target/release/ringlb
    if [[ ! -x $RINGLB_BIN ]]; then
        log "ERROR: no ringlb binary at $RINGLB_BIN"
        RINGLB_BUILD_ERROR="no binary at $RINGLB_BIN"
        RINGLB_BIN=""
    fi
}

# ------------------------------------------------------- processes, cleanup --

TMP=""
declare -A PIDS=() PORT=() FAILED=() DEAD=()
PGIDS=()
RINGLB_BUILD_ERROR=""
LAST_LOG_LINE=""

# Kill every process group we started: TERM first, KILL whatever is left
# after a grace period.  Groups, because nginx forks workers.
stop_groups() { # PGID...: TERM, up to 5 s grace, then KILL; reap quietly
    local pg i left
    for pg in "$@"; do
        kill -TERM -- "-$pg" 2>/dev/null || kill -TERM "$pg" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
        left=0
        for pg in "$@"; do
            kill -0 -- "-$pg" 2>/dev/null && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    for pg in "$@"; do
        kill -KILL -- "-$pg" 2>/dev/null || true
        wait "$pg" 2>/dev/null || true
    done
}

stop_instance() { # NAME: stop one spawned instance before the end of the run
    local pg=${PIDS[$1]} keep=() g
    stop_groups "$pg"
    for g in "${PGIDS[@]}"; do [[ $g == "$pg" ]] || keep+=("$g"); done
    PGIDS=("${keep[@]}")
}

stop_all() {
    ((${#PGIDS[@]})) && stop_groups "${PGIDS[@]}"
    PGIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [[ -n $TMP && -d $TMP ]]; then
        # Keep configs and logs when something went wrong (but not on Ctrl-C).
        if ((KEEP_TMP)) || ((rc != 0 && rc < 128)); then
            log "temp dir (configs, logs) kept: $TMP"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$rc"
}

# spawn NAME CMD...: run CMD in its own session and process group (setsid does
# not fork here: a background child of a non-interactive shell is never a
# group leader, so $! is both the pid and the process group id).
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
    PGIDS+=("$!")
}

alive() { # PID: running and not a zombie
    local stat
    [[ -r /proc/$1/stat ]] && read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# show_log NAME: print the tail of its stdout/stderr and of its own error log;
# also sets LAST_LOG_LINE (for the report's failure list).
show_log() {
    local f
    LAST_LOG_LINE=""
    for f in "$TMP/$1.log" "$TMP/$1-error.log"; do
        [[ -s $f ]] || continue
        log "--- last lines of $f:"
        tail -n 15 "$f" | sed 's/^/    /' >&2
        LAST_LOG_LINE=$(tail -n 1 "$f")
    done
}

# One HTTP/1.1 GET / over bash's /dev/tcp; succeeds on a 200 status line.
http_probe() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" >&3
        IFS= read -r line <&3
        [[ $line == "HTTP/1."?" 200"* ]]' _ "$1" 2>/dev/null
}

wait_ready() { # NAME PORT: until it answers HTTP 200 (through to the backend)
    local name=$1 port=$2 i
    for ((i = 0; i < 150; i++)); do
        if ! alive "${PIDS[$name]}"; then
            log "ERROR: $name exited during startup"
            show_log "$name"
            return 1
        fi
        http_probe "$port" && return 0
        sleep 0.1
    done
    log "ERROR: $name did not answer HTTP 200 on 127.0.0.1:$port within 15 s"
    show_log "$name"
    return 1
}

# Record that a peer failed (it stays in the report, marked, and the exit
# status becomes non-zero).
fail_peer() { # PEER ROUND REASON
    log "FAILED: $1 (round $2): $3"
    FAILED[$1]=1
    printf '%s\t%s\tFAIL\t%s\n' "$2" "$1" "${3//$'\t'/ }" >>"$RESULTS"
}

# ------------------------------------------------------------ environment --

free_ports() { # N: N distinct free TCP ports on 127.0.0.1 (held open together while asking)
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Render TEMPLATE to OUT, replacing @KEY@ by VALUE for each KEY=VALUE argument.
render() {
    local template=$1 out=$2 text kv
    shift 2
    text=$(<"$template")
    for kv in "$@"; do
        text=${text//@${kv%%=*}@/${kv#*=}}
    done
    if [[ $text =~ @[A-Z_]+@ ]]; then die "render $template: placeholder ${BASH_REMATCH[0]} left unfilled"; fi
    printf '%s\n' "$text" >"$out"
}

raise_nofile() {
    # Each idle connection costs the proxy two fds and the client and backend
    # one each.  Raise the soft limit to the hard one (root cannot exceed the
    # hard limit either inside most containers).
    local hard
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] && hard=1048576
    ulimit -n "$hard" 2>/dev/null || true
    NOFILE=$(ulimit -n)
    local need=$((2 * IDLE_CONNS + 4 * CONNS + 500))
    ((NOFILE >= need)) || die "open-file limit is $NOFILE but the idle test needs ~$need; lower --idle-conns or raise 'ulimit -Hn'"
    # haproxy needs ~2 fds per connection plus a reserve and refuses to start
    # otherwise; nginx counts both sides of a proxied connection in
    # worker_connections.  Use the same ceiling for everybody.
    MAXCONN=$(((NOFILE - 200) / 2))
    ((MAXCONN > 50000)) && MAXCONN=50000
    WORKER_CONNECTIONS=$((2 * MAXCONN))
}

compute_layout() {
    local -a cpus
    read -r -a cpus <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
    NCPU=${#cpus[@]}
    # Backend: one nginx worker per 4 CPUs, at most 2 (the task asks for 1-2).
    # One worker on one core serves tiny responses far faster than a proxy
    # sharing a core with wrk can forward them, and 10 MiB via sendfile.
    BACKEND_WORKERS=1
    ((NCPU >= 8)) && BACKEND_WORKERS=2
    BACKEND_PREFIX=()
    LOAD_PREFIX=()
    LAYOUT="not pinned (--no-pin)"
    if ((PIN)) && ((NCPU >= 2)); then
        local n_load=$((NCPU - BACKEND_WORKERS)) IFS=,
        BACKEND_CPUS="${cpus[*]:n_load}"
        LOAD_CPUS="${cpus[*]:0:n_load}"
        BACKEND_PREFIX=(taskset -c "$BACKEND_CPUS")
        LOAD_PREFIX=(taskset -c "$LOAD_CPUS")
        LAYOUT="backend nginx on CPU $BACKEND_CPUS; wrk, idle client and proxy on CPU $LOAD_CPUS"
        if ((WORKERS > n_load)); then
            log "note: --workers $WORKERS > $n_load CPU(s) left after the backend; proxies will be oversubscribed (try --no-pin)"
        fi
    elif ((PIN)); then
        LAYOUT="not pinned (only one CPU)"
    fi
}

# ------------------------------------------------------------------ servers --

start_backend() {
    mkdir -p "$TMP/www" "$TMP/backend-tmp"
    head -c "$BULK_BYTES" /dev/urandom >"$TMP/www/10m"
    # nginx started as root switches its workers to "nobody", who cannot read
    # our 0700 temp dir; as root, keep the workers root (it is all loopback).
    local user_directive=""
    ((EUID == 0)) && user_directive="user root;"
    render "$BENCH/nginx-backend.conf.in" "$TMP/backend.conf" \
        "USER_DIRECTIVE=$user_directive" "WORKERS=$BACKEND_WORKERS" "NOFILE=$NOFILE" \
        "WORKER_CONNECTIONS=$WORKER_CONNECTIONS" "TMP=$TMP" "PORT=$BACKEND_PORT"
    # -e: error log before the config is read (else /var/log/nginx, root only).
    spawn backend "${BACKEND_PREFIX[@]}" nginx -p "$TMP/" -e "$TMP/backend-error.log" -c "$TMP/backend.conf"
    wait_ready backend "$BACKEND_PORT" || die "the backend nginx did not start; nothing to measure"
}

# start_instance PEER NAME PORT: start one instance of a proxy, named NAME
# (logs, config, pid file), listening on PORT; wait until it proxies.
start_instance() {
    local p=$1 name=$2 port=$3
    case $p in
        ringlb)
            spawn "$name" "${LOAD_PREFIX[@]}" "$RINGLB_BIN" --listen "127.0.0.1:$port" \
                --backend "127.0.0.1:$BACKEND_PORT" --workers "$WORKERS" --log-level warn
            ;;
        haproxy)
            render "$BENCH/haproxy.cfg.in" "$TMP/$name.cfg" "NAME=$name" "WORKERS=$WORKERS" \
                "MAXCONN=$MAXCONN" "TMP=$TMP" "PORT=$port" "BACKEND_PORT=$BACKEND_PORT"
            spawn "$name" "${LOAD_PREFIX[@]}" haproxy -db -f "$TMP/$name.cfg"
            ;;
        nginx)
            render "$BENCH/nginx-stream.conf.in" "$TMP/$name.conf" "NAME=$name" \
                "LOAD_MODULE=$NGINX_LOAD_MODULE" "WORKERS=$WORKERS" "NOFILE=$NOFILE" \
                "WORKER_CONNECTIONS=$WORKER_CONNECTIONS" "TMP=$TMP" "PORT=$port" \
                "BACKEND_PORT=$BACKEND_PORT"
            # -e: error log before the config is read (else /var/log/nginx).
            spawn "$name" "${LOAD_PREFIX[@]}" nginx -p "$TMP/" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
            ;;
    esac
    wait_ready "$name" "$port"
}

start_peer() { # PEER: start the long-lived instance (direct: nothing to start)
    local p=$1
    if [[ $p == direct ]]; then
        PORT[direct]=$BACKEND_PORT
        return 0
    fi
    if [[ $p == ringlb && -z $RINGLB_BIN ]]; then
        fail_peer ringlb 0 "not started: $RINGLB_BUILD_ERROR"
        DEAD[$p]=1
        return 1
    fi
    if ! start_instance "$p" "$p" "${PORT[$p]}"; then
        fail_peer "$p" 0 "did not start or did not proxy to the backend${LAST_LOG_LINE:+; its log ends: $LAST_LOG_LINE}"
        DEAD[$p]=1
        return 1
    fi
}

# ---------------------------------------------------------------- workloads --

RESULTS=""
declare -A W=()

calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# run_wrk PEER ROUND WORKLOAD CONNS SECONDS PATH [wrk args...]: one wrk run against
# the peer; fills W[] from wrk-report.lua's line.  Returns 1 (after recording
# the failure) if wrk failed or the run does not look like a healthy server:
# zero requests, any non-2xx/3xx answer, or socket errors above a trivial
# level (more than max(5, 0.1% of requests)).
run_wrk() {
    local peer=$1 round=$2 wl=$3 conns=$4 secs=$5 path=$6 out rc=0 line kv
    shift 6
    # --foreground: keep wrk in our process group so Ctrl-C reaches it.
    out=$(timeout --foreground $((secs + 30)) "${LOAD_PREFIX[@]}" wrk -t"$WRK_THREADS" -c"$conns" \
        -d"${secs}s" --timeout 10s -s "$BENCH/wrk-report.lua" "$@" \
        "http://127.0.0.1:${PORT[$peer]}$path" 2>&1) || rc=$?
    # Keep wrk's own output (kept with --keep-tmp or on failure) for post-mortems.
    printf '=== round %s %s %s (exit %s)\n%s\n' "$round" "$peer" "$wl" "$rc" "$out" >>"$TMP/wrk-runs.log"
    W=()
    line=$(grep -m1 '^@@bench ' <<<"$out" || true)
    if ((rc != 0)) || [[ -z $line ]]; then
        fail_peer "$peer" "$round" "$wl: wrk exited $rc: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        return 1
    fi
    for kv in ${line#@@bench }; do W[${kv%%=*}]=${kv#*=}; done
    local req=${W[requests]} sockerr=$((W[connect] + W[read] + W[write] + W[timeout]))
    local allowed=$((req / 1000 > 5 ? req / 1000 : 5))
    if ((req == 0)); then
        fail_peer "$peer" "$round" "$wl: no request completed"
        return 1
    elif ((W[status] > 0)); then
        fail_peer "$peer" "$round" "$wl: ${W[status]} non-2xx/3xx responses out of $req"
        return 1
    elif ((sockerr > allowed)); then
        fail_peer "$peer" "$round" "$wl: socket errors connect=${W[connect]} read=${W[read]} write=${W[write]} timeout=${W[timeout]} out of $req requests"
        return 1
    fi
    return 0
}

# CPU seconds (all processes and threads) of a peer's process group; empty for direct.
peer_cpu() {
    [[ $1 == direct ]] && return 0
    local stats cpu
    # (no process substitution here: its child could outlive this subshell)
    stats=$(python3 "$BENCH/procstat.py" "${PIDS[$1]}") || return 0
    read -r _ cpu _ <<<"$stats"
    echo "$cpu"
}

check_alive() { # PEER ROUND: a proxy that crashed is failed and skipped from then on
    [[ $1 == direct ]] && return 0
    alive "${PIDS[$1]}" && return 0
    fail_peer "$1" "$2" "process exited (crashed?)"
    show_log "$1"
    DEAD[$1]=1
    return 1
}

measure_peer() { # PEER ROUND
    local p=$1 r=$2 cpu0 cpu1 secs
    [[ -n ${DEAD[$p]:-} ]] && return 0

    # (1) keep-alive small requests; the proxy's CPU time is read around it.
    cpu0=$(peer_cpu "$p")
    if run_wrk "$p" "$r" keepalive "$CONNS" "$DURATION" / --latency; then
        cpu1=$(peer_cpu "$p")
        secs=$(calc "${W[duration_us]} / 1e6")
        record "$r" "$p" keepalive_rps "$(calc "${W[requests]} / $secs")"
        record "$r" "$p" keepalive_p50_ms "$(calc "${W[p50_us]} / 1000")"
        record "$r" "$p" keepalive_p99_ms "$(calc "${W[p99_us]} / 1000")"
        [[ -n $cpu0 && -n $cpu1 ]] &&
            record "$r" "$p" cpu_s_per_100k "$(calc "($cpu1 - $cpu0) / ${W[requests]} * 100000")"
        log "$(printf '  %-8s keepalive: %.0f req/s, p50 %.3f ms, p99 %.3f ms' "$p" \
            "$(calc "${W[requests]} / $secs")" "$(calc "${W[p50_us]} / 1000")" "$(calc "${W[p99_us]} / 1000")")${cpu0:+$(printf ', proxy CPU %.2f s' "$(calc "$cpu1 - $cpu0")")}"
    fi
    check_alive "$p" "$r" || return 0

    # (2) connection churn: one request per connection, server closes.
    if run_wrk "$p" "$r" churn "$CONNS" "$DURATION" / -H "Connection: close"; then
        secs=$(calc "${W[duration_us]} / 1e6")
        record "$r" "$p" churn_cps "$(calc "${W[requests]} / $secs")"
        log "$(printf '  %-8s churn: %.0f conn/s' "$p" "$(calc "${W[requests]} / $secs")")"
    fi
    check_alive "$p" "$r" || return 0

    # (3) bulk: 10 MiB responses.  Also catch a proxy that truncates bodies.
    # At least 2 s: at -d1 on a busy machine every connection can still be
    # mid-body when wrk stops, i.e. zero completed requests from a healthy proxy.
    if run_wrk "$p" "$r" bulk "$BULK_CONNS" "$((DURATION < 2 ? 2 : DURATION))" /10m; then
        if ((W[bytes] < W[requests] * BULK_BYTES)); then
            fail_peer "$p" "$r" "bulk: ${W[bytes]} bytes for ${W[requests]} responses of 10 MiB (truncated?)"
        else
            secs=$(calc "${W[duration_us]} / 1e6")
            record "$r" "$p" bulk_mbps "$(calc "${W[bytes]} / $secs / 1e6")"
            log "$(printf '  %-8s bulk: %.0f MB/s' "$p" "$(calc "${W[bytes]} / $secs / 1e6")")"
        fi
    fi
    check_alive "$p" "$r" || return 0

    # (4) idle connections: only meaningful for a proxy.  Measured on a fresh
    # instance of the proxy started just for this (and stopped after): a
    # process that already held N connections in an earlier round keeps that
    # memory in its pools/allocator, and "growth" would then read as ~0.
    [[ $p == direct ]] && return 0
    local out rc=0 line kv iport name=$p-idle
    local -A I=()
    iport=$(free_ports 1)
    if ! start_instance "$p" "$name" "$iport"; then
        fail_peer "$p" "$r" "idle: a fresh instance did not start${LAST_LOG_LINE:+; its log ends: $LAST_LOG_LINE}"
        stop_instance "$name"
        return 0
    fi
    out=$(timeout --foreground $((60 + IDLE_CONNS / 20)) "${LOAD_PREFIX[@]}" python3 "$BENCH/idle.py" \
        --port "$iport" --conns "$IDLE_CONNS" --pgid "${PIDS[$name]}" 2>&1) || rc=$?
    line=$(grep -m1 '^@@idle ' <<<"$out" || true)
    for kv in ${line#@@idle }; do I[${kv%%=*}]=${kv#*=}; done
    if ((rc != 0)) || [[ -z $line ]]; then
        fail_peer "$p" "$r" "idle: exit $rc: $(tr '\n' ' ' <<<"$out")"
        show_log "$name"
    else
        record "$r" "$p" idle_kib_per_conn "${I[kib_per_conn]}"
        log "  $(printf '%-8s' "$p") idle: ${I[kib_per_conn]} KiB/conn (RSS ${I[rss_before_kib]} -> ${I[rss_after_kib]} KiB for ${I[opened]} conns)"
    fi
    stop_instance "$name"
}

# ------------------------------------------------------------------- report --

first_line() { local s; s=$("$@" 2>&1 || true); printf '%s' "${s%%$'\n'*}"; }

write_meta() {
    local f=$TMP/meta.tsv cpu_model ringlb_v
    cpu_model=$(grep -m1 -E '^(model name|Model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
    if has_peer ringlb; then
        if [[ -n $RINGLB_BIN ]]; then ringlb_v=$(first_line "$RINGLB_BIN" --version); else ringlb_v="(not built)"; fi
        ringlb_v+=" (git $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo 'no commit'))"
    fi
    {
        printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf 'mode\t%s\n' "$( ((SMOKE)) && echo smoke || echo full)"
        printf 'cpu\t%s\n' "${cpu_model:-unknown}"
        printf 'nproc\t%s\n' "$(nproc)"
        printf 'kernel\t%s\n' "$(uname -srm)"
        has_peer ringlb && printf 'ringlb\t%s\n' "$ringlb_v"
        # Trim the boilerplate: "HAProxy version X DATE - https://haproxy.org/",
        # "nginx version: nginx/X", "wrk X [epoll] Copyright ...".
        has_peer haproxy && printf 'haproxy\t%s\n' "$(first_line haproxy -v | sed 's/ - http.*//')"
        printf 'nginx\t%s\n' "$(first_line nginx -v | sed 's/^nginx version: //')"
        printf 'wrk\t%s\n' "$(first_line wrk -v | sed 's/ \[.*//')"
        printf 'workers\t%s\n' "$WORKERS"
        printf 'rounds\t%s\n' "$ROUNDS"
        printf 'duration\t%s\n' "$DURATION"
        printf 'bulk_duration\t%s\n' "$((DURATION < 2 ? 2 : DURATION))"
        printf 'connections\t%s\n' "$CONNS"
        printf 'bulk_connections\t%s\n' "$BULK_CONNS"
        printf 'idle_conns\t%s\n' "$IDLE_CONNS"
        printf 'wrk_threads\t%s\n' "$WRK_THREADS"
        printf 'backend_workers\t%s\n' "$BACKEND_WORKERS"
        printf 'layout\t%s\n' "$LAYOUT"
        printf 'loadavg\t%s\n' "$LOAD_AT_START"
        printf 'peers\t%s\n' "${PEERS[*]}"
    } >"$f"
}

# -------------------------------------------------------------------- main --

main() {
    parse_args "$@"
    [[ $(uname -s) == Linux ]] || die "Linux only (ringlb is io_uring based)"
    ensure_deps
    NGINX_LOAD_MODULE=""
    if has_peer nginx; then
        NGINX_LOAD_MODULE=$(nginx_stream_load_line) || die "nginx has no stream module (Debian: apt-get install libnginx-mod-stream)"
    fi

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/ringlb-bench.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    RESULTS=$TMP/results.tsv
    : >"$RESULTS"

    build_ringlb
    raise_nofile
    compute_layout

    local ports
    read -r -a ports <<<"$(free_ports 4)"
    BACKEND_PORT=${ports[0]}
    PORT[ringlb]=${ports[1]} PORT[haproxy]=${ports[2]} PORT[nginx]=${ports[3]}

    log "layout: $LAYOUT; proxies get $WORKERS worker(s); fd limit $NOFILE"
    # Anything else burning CPU (a compile, a test suite) skews every figure.
    local load
    read -r load _ </proc/loadavg
    if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
        log "note: 1-minute load average is $load: the machine is not idle, expect noisy figures"
    fi
    LOAD_AT_START=$load
    log "starting backend nginx on 127.0.0.1:$BACKEND_PORT"
    start_backend
    local p
    for p in "${PEERS[@]}"; do
        [[ $p == direct ]] || log "starting $p on 127.0.0.1:${PORT[$p]}"
        start_peer "$p" || true
    done

    # Warm-up (full mode only): first connections, page cache, allocator pools.
    if ((!SMOKE)); then
        log "warm-up"
        for p in "${PEERS[@]}"; do
            [[ -n ${DEAD[$p]:-} ]] && continue
            timeout --foreground 30 "${LOAD_PREFIX[@]}" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$p]}/" >/dev/null 2>&1 || true
        done
    fi

    local r order
    for ((r = 1; r <= ROUNDS; r++)); do
        # Odd rounds in canonical order, even rounds reversed: A B C D, D C B A, ...
        order=("${PEERS[@]}")
        if ((r % 2 == 0)); then
            local i
            order=()
            for ((i = ${#PEERS[@]} - 1; i >= 0; i--)); do order+=("${PEERS[i]}"); done
        fi
        log "round $r/$ROUNDS: ${order[*]}"
        for p in "${order[@]}"; do measure_peer "$p" "$r"; done
    done

    write_meta
    mkdir -p "$(dirname -- "$OUT")"
    python3 "$BENCH/report.py" --results "$RESULTS" --meta "$TMP/meta.tsv" \
        --md "$OUT" --svg "${OUT%.md}.svg"
    log "report: $OUT, chart: ${OUT%.md}.svg"

    if ((${#FAILED[@]})); then
        log "FAILED peers: ${!FAILED[*]} (see above and the report)"
        exit 1
    fi
}

main "$@"
