#!/usr/bin/env bash
#
# scripts/bench.sh: ringlb next to HAProxy (mode tcp) and nginx (stream), side
# by side in one run, all in front of the same real HTTP backend (nginx), plus
# "direct" (wrk straight at the backend) as the no-proxy baseline.  The sni
# workload puts each proxy, routing by TLS server name, in front of two TLS
# backends (nginx with ssl) instead.
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
# * Layouts (--layout): a proxy's lead can depend on the layout (issue 14: the
#   keep-alive lead pinned was gone unpinned), so "both" runs the whole
#   measurement once pinned and once with nothing pinned, each with freshly
#   started processes, and reports them side by side.
#
set -euo pipefail

# nginx and haproxy live in /usr/sbin, which is not on a normal user's PATH on Debian.
PATH=$PATH:/usr/sbin:/sbin
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
# ringlb-copy: ringlb --splice never (its copy path); haproxy-splice: HAProxy
# with option splice-auto.
ALL_PEERS=(direct ringlb ringlb-copy haproxy haproxy-splice nginx)
ALL_WORKLOADS=(keepalive answers churn bulk stream idle sni many scaling udp)
ALL_LAYOUTS=(pinned unpinned)
# The sni workload's two server names.  wrk takes the server name it sends
# (SNI) from the URL's host, and resolves that same host to connect: the
# measured name must resolve to 127.0.0.1 on any machine without editing
# /etc/hosts, which leaves "localhost".  The second name is never resolved
# (only the startup probe sends it, connecting to 127.0.0.1 itself), so it
# can be anything; it is listed first in every proxy's rules so the measured
# name is looked up past it.  It is also where the default route goes.
SNI_NAME_A=localhost
SNI_NAME_B=b.sni.test
# ringlb --workers / HAProxy nbthread / nginx worker_processes compared by the
# scaling workload.
SCALE_WORKERS=(1 2)
BULK_BYTES=$((10 * 1024 * 1024))
# The bulk workload's object sizes: the file names the backend serves (and
# each one's result key: bulk1m_mbps, bulk_mbps for 10m, bulk100m_mbps).
BULK_SIZES=(1m 10m 100m)
# The answers workload's response bodies (file names the backend serves, and
# each one's result keys: answers4k_rps, answers16k_cpu_s_per_100k, ...).
ANSWER_SIZES=(4k 16k)

usage() {
    local peers workloads
    peers=$(IFS=,; echo "${ALL_PEERS[*]}")
    workloads=$(IFS=,; echo "${ALL_WORKLOADS[*]}")
    cat <<EOF
Usage: scripts/bench.sh [options]

Benchmarks ringlb against HAProxy (mode tcp) and nginx (stream module), with
"direct" (no proxy) as baseline, all in front of one nginx HTTP backend on
127.0.0.1.  Workloads, each run by every peer in every round:
  keepalive  wrk, keep-alive GET / (13-byte body): req/s, p50, p99 latency,
             and the proxy's CPU seconds per 100k requests
  answers    keep-alive GET of a 4 KiB and a 16 KiB body (API-sized answers,
             a few of the proxy's receive buffers each): req/s, p50, p99 and
             the proxy's CPU seconds per 100k requests
  churn      wrk with "Connection: close": new connections/s
  bulk       wrk, GET of a 1 MiB, a 10 MiB and a 100 MiB file: MB/s (10^6
             bytes/s) and the proxy's CPU seconds per GB (10^9 bytes)
  stream     iperf3 through the proxy to an iperf3 server, one stream each
             way (upload, then download with -R): Gbit/s and the proxy's CPU
             seconds per GB
  idle       N connections held open through the proxy after one tiny request
             each: proxy RSS growth in KiB per connection; then the same as a
             burst (all opened, all sending, then all read: a fleet restart)
  sni        TLS connection churn (wrk https://localhost, "Connection: close":
             a full handshake per request) through each proxy routing by
             server name to two nginx TLS backends (ringlb --route-by sni,
             HAProxy req.ssl_sni ACLs, nginx ssl_preread + map): new
             connections/s, proxy CPU per connection, and the TLS backend's
             CPU use (the report says when the backend was the bottleneck)
  many       keep-alive with many connections (--many-conns, 1000 and 4000):
             req/s, p50, p99 and proxy CPU per request
  scaling    keep-alive on fresh proxies with 1 and with 2 workers (ringlb
             --workers, HAProxy nbthread, nginx worker_processes): req/s and
             the scaling factor 2 workers / 1 worker (not for direct)
  udp        DNS over UDP: dnsperf (8 client ports, 100 queries outstanding)
             through ringlb (--protocol udp --responses 1) and nginx (stream
             listen udp, proxy_responses 1), and direct, to one NSD
             authoritative server: queries/s at full speed with the proxy's
             CPU per 100k queries, then p99 latency and queries lost at a
             fixed rate (UDP_RATE, default 20000/s).  HAProxy has no UDP.

Options (defaults in brackets):
  --workers N          proxy workers: haproxy nbthread, nginx worker_processes,
                       ringlb --workers [1]
  --rounds N           interleaved rounds, median reported [3; smoke 1]
  --duration S         seconds per wrk run [5; smoke 1]; bulk runs >= 2 s
  --connections N      wrk connections for keepalive and churn [64]
  --bulk-connections N wrk connections for bulk [8; smoke 2]
  --idle-conns N       connections held open in the idle test [4000; smoke 200]
  --wrk-threads N      wrk threads [1]
  --only LIST          comma-separated subset of: $peers
                       [all]  (ratios to a peer left out are shown as "-")
  --workloads LIST     comma-separated subset of:
                       $workloads [all]
  --many-conns LIST    connection counts of the many workload [1000,4000]
  --layout L           pinned, unpinned or both [pinned]:
                       pinned:   backend(s) on the last CPU(s), wrk and the
                                 proxy on the rest (taskset)
                       unpinned: nothing pinned, wrk -t1 (--wrk-threads)
                       both:     the whole run once in each layout, one after
                                 the other, reported side by side
  --out FILE.md        report path; the chart goes next to it as FILE.svg
                       (with --layout both, the unpinned one as FILE-unpinned.svg)
                       [bench/results/latest.md; smoke bench/results/smoke.md]
  --ringlb-bin PATH    use this ringlb binary instead of building one
                       (also: RINGLB_BIN=PATH)
  --no-build           do not run cargo; use \${CARGO_TARGET_DIR:-target}/release/ringlb
  --no-pin             same as --layout unpinned
  --no-install         never apt-get install; just say what is missing
  --keep-tmp           keep the temp dir (configs, logs) and print its path
  --smoke              quick self-test: ~1 s per workload, 1 round, 200 idle
                       connections, 2 bulk connections, every workload (many
                       with 1000 and 4000 connections too, to exercise the fd
                       limits); exits non-zero if any peer failed to serve
  -h, --help           this text

Missing tools (wrk, haproxy, nginx + stream module, openssl, python3) are installed
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
ONLY="" OUT="" SMOKE=0 BUILD=1 INSTALL=1 KEEP_TMP=0
WORKLOADS_ARG="" MANY_ARG="" LAYOUT_ARG=""
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
        --workloads) WORKLOADS_ARG=$2 ;;
        --many-conns) MANY_ARG=$2 ;;
        --layout) LAYOUT_ARG=$2 ;;
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
            --no-pin) LAYOUT_ARG=unpinned ;;
            --no-build) BUILD=0 ;;
            --no-install) INSTALL=0 ;;
            --keep-tmp) KEEP_TMP=1 ;;
            --workers | --rounds | --duration | --connections | --bulk-connections | \
                --idle-conns | --wrk-threads | --only | --out | --ringlb-bin | \
                --workloads | --many-conns | --layout)
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
        # One object size: the others take the same path, and CI's time.
        BULK_SIZES=(10m)
    fi
    : "${WORKERS:=1}" "${ROUNDS:=3}" "${DURATION:=5}" "${CONNS:=64}" "${BULK_CONNS:=8}"
    : "${IDLE_CONNS:=4000}" "${WRK_THREADS:=1}" "${OUT:=$BENCH/results/latest.md}"
    : "${MANY_ARG:=1000,4000}" "${LAYOUT_ARG:=pinned}" "${UDP_RATE:=20000}"

    local name
    for name in WORKERS ROUNDS DURATION CONNS BULK_CONNS IDLE_CONNS WRK_THREADS; do
        [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "${name,,} must be a positive integer, got '${!name}'"
    done
    ((WRK_THREADS <= CONNS && WRK_THREADS <= BULK_CONNS)) ||
        die "--wrk-threads must not exceed --connections / --bulk-connections"
    [[ $OUT == *.md ]] || die "--out must end in .md (the chart is written next to it as .svg)"
    [[ $OUT == /* ]] || OUT=$PWD/$OUT

    # Peers to run, always in canonical order (the round order is derived from it).
    local want w p
    PEERS=()
    if [[ -z $ONLY ]]; then
        PEERS=("${ALL_PEERS[@]}")
    else
        IFS=, read -r -a want <<<"$ONLY"
        for w in "${want[@]}"; do
            [[ " ${ALL_PEERS[*]} " == *" $w "* ]] || die "--only: unknown peer '$w' (known: ${ALL_PEERS[*]})"
        done
        for p in "${ALL_PEERS[@]}"; do
            [[ ",$ONLY," == *",$p,"* ]] && PEERS+=("$p")
        done
    fi
    ((${#PEERS[@]})) || die "--only selected no peer"

    WORKLOADS=()
    if [[ -z $WORKLOADS_ARG ]]; then
        WORKLOADS=("${ALL_WORKLOADS[@]}")
    else
        IFS=, read -r -a want <<<"$WORKLOADS_ARG"
        for w in "${want[@]}"; do
            [[ " ${ALL_WORKLOADS[*]} " == *" $w "* ]] || die "--workloads: unknown workload '$w' (known: ${ALL_WORKLOADS[*]})"
        done
        for w in "${ALL_WORKLOADS[@]}"; do
            [[ ",$WORKLOADS_ARG," == *",$w,"* ]] && WORKLOADS+=("$w")
        done
    fi
    ((${#WORKLOADS[@]})) || die "--workloads selected no workload"

    IFS=, read -r -a MANY_CONNS <<<"$MANY_ARG"
    MANY_MAX=0
    for w in "${MANY_CONNS[@]}"; do
        [[ $w =~ ^[1-9][0-9]*$ ]] || die "--many-conns must be a comma-separated list of positive integers, got '$MANY_ARG'"
        ((w >= WRK_THREADS)) || die "--many-conns: $w connections are fewer than --wrk-threads $WRK_THREADS"
        ((w > MANY_MAX)) && MANY_MAX=$w
    done

    case $LAYOUT_ARG in
        pinned | unpinned) LAYOUTS=("$LAYOUT_ARG") ;;
        both) LAYOUTS=("${ALL_LAYOUTS[@]}") ;;
        *) die "--layout must be pinned, unpinned or both, got '$LAYOUT_ARG'" ;;
    esac
}

has_peer() { [[ " ${PEERS[*]} " == *" $1 "* ]]; }
has_workload() { [[ " ${WORKLOADS[*]} " == *" $1 "* ]]; }

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
    if has_peer haproxy || has_peer haproxy-splice; then command -v haproxy >/dev/null || pkgs+=(haproxy); fi
    if has_workload stream; then command -v iperf3 >/dev/null || pkgs+=(iperf3); fi
    if has_peer nginx && ! { command -v nginx >/dev/null && nginx_stream_load_line >/dev/null; }; then
        pkgs+=(libnginx-mod-stream)
    fi
    command -v taskset >/dev/null && command -v setsid >/dev/null || pkgs+=(util-linux)
    command -v timeout >/dev/null || pkgs+=(coreutils)
    # sni: openssl makes the TLS backends' keys and certificates.  (Debian's
    # nginx has the http ssl module built in, and ssl_preread is part of
    # libnginx-mod-stream; HAProxy's req.ssl_sni is in its core.)
    if has_workload sni; then command -v openssl >/dev/null || pkgs+=(openssl); fi
    # udp: dnsperf drives, NSD answers.
    if has_workload udp; then
        command -v dnsperf >/dev/null || pkgs+=(dnsperf)
        command -v nsd >/dev/null || pkgs+=(nsd)
    fi
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
    has_peer ringlb || has_peer ringlb-copy || return 0
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
declare -A PIDS=() PORT=() SNI_PORT=() UDP_PORT=() FAILED=() DEAD=() D=()
CUR_LAYOUT=pinned
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

# A TCP connect to 127.0.0.1:PORT succeeds.
tcp_probe() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# TLS probes (bench/tls_probe.py: one HTTPS request with that server name, the
# answer must come from that TLS backend): "sni" checks a proxy's routing,
# both names each to its own backend; "tls-a" / "tls-b" one TLS backend.
# The last failure's message is left in $TMP/tls-probe.err.
tls_probe() { # MODE PORT
    local probe=("python3" "$BENCH/tls_probe.py" "$2")
    case $1 in
        sni) "${probe[@]}" "$SNI_NAME_B" tls-b 2>"$TMP/tls-probe.err" &&
            "${probe[@]}" "$SNI_NAME_A" tls-a 2>"$TMP/tls-probe.err" ;;
        tls-a) "${probe[@]}" "$SNI_NAME_A" tls-a 2>"$TMP/tls-probe.err" ;;
        tls-b) "${probe[@]}" "$SNI_NAME_B" tls-b 2>"$TMP/tls-probe.err" ;;
    esac
}

# wait_ready NAME PORT [MODE]: until it answers HTTP 200 through to the HTTP
# backend (MODE http, the default) or passes tls_probe MODE.
wait_ready() {
    local name=$1 port=$2 mode=${3:-http} i what
    for ((i = 0; i < 150; i++)); do
        if ! alive "${PIDS[$name]}"; then
            log "ERROR: $name exited during startup"
            show_log "$name"
            return 1
        fi
        if [[ $mode == http ]]; then
            http_probe "$port" && return 0
        elif [[ $mode == stream ]]; then
            # (iperf3's server shrugs off a connection that sends nothing.)
            tcp_probe "$port" && return 0
        else
            tls_probe "$mode" "$port" && return 0
        fi
        sleep 0.1
    done
    what="answer HTTP 200"
    [[ $mode == http ]] || what="pass the TLS probe '$mode' ($(tail -n 1 "$TMP/tls-probe.err"))"
    log "ERROR: $name did not $what on 127.0.0.1:$port within 15 s"
    show_log "$name"
    return 1
}

# Record that a peer failed (it stays in the report, marked, and the exit
# status becomes non-zero).
fail_peer() { # PEER ROUND REASON
    log "FAILED: $1 ($CUR_LAYOUT layout, round $2): $3"
    FAILED[$1]=1
    printf '%s\t%s\t%s\tFAIL\t%s\n' "$CUR_LAYOUT" "$2" "$1" "${3//$'\t'/ }" >>"$RESULTS"
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
    # The many workload: the proxy holds two fds per connection too, wrk and
    # the backend one each.
    local most=$IDLE_CONNS
    has_workload many && ((MANY_MAX > most)) && most=$MANY_MAX
    local need=$((2 * most + 4 * CONNS + 500))
    ((NOFILE >= need)) || die "open-file limit is $NOFILE but the idle test / many workload needs ~$need; lower --idle-conns / --many-conns or raise 'ulimit -Hn'"
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
    N_LOAD_CPUS=$NCPU
    PIN=0
    [[ $CUR_LAYOUT == pinned ]] && PIN=1
    LAYOUT="not pinned: backend, wrk and proxy float over all $NCPU CPU(s); wrk $WRK_THREADS thread(s)"
    if ((PIN)) && ((NCPU >= 2)); then
        local n_load=$((NCPU - BACKEND_WORKERS)) IFS=,
        BACKEND_CPUS="${cpus[*]:n_load}"
        LOAD_CPUS="${cpus[*]:0:n_load}"
        BACKEND_PREFIX=(taskset -c "$BACKEND_CPUS")
        LOAD_PREFIX=(taskset -c "$LOAD_CPUS")
        N_LOAD_CPUS=$n_load
        LAYOUT="backend nginx on CPU $BACKEND_CPUS; wrk, idle client and proxy on CPU $LOAD_CPUS"
        if ((WORKERS > n_load)); then
            log "note: --workers $WORKERS > $n_load CPU(s) left after the backend; proxies will be oversubscribed (try --layout unpinned)"
        fi
    elif ((PIN)); then
        LAYOUT="not pinned (only one CPU)"
    fi
}

# ------------------------------------------------------------------ servers --

start_backend() {
    mkdir -p "$TMP/www" "$TMP/backend-tmp"
    local size
    for size in "${BULK_SIZES[@]}" "${ANSWER_SIZES[@]}"; do
        [[ -f $TMP/www/$size ]] || head -c "$(bytes_of "$size")" /dev/urandom >"$TMP/www/$size"
    done
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

# Self-signed ECDSA P-256 certificates for the two TLS backends (a: localhost,
# b: $SNI_NAME_B).  P-256 rather than RSA-2048: a server's handshake costs
# several times less CPU, and the backend's CPU is not what is measured.
make_certs() {
    mkdir -p "$TMP/tls"
    local b name
    for b in a b; do
        name=$SNI_NAME_A
        [[ $b == b ]] && name=$SNI_NAME_B
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=$name" -addext "subjectAltName=DNS:$name" \
            -keyout "$TMP/tls/$b.key" -out "$TMP/tls/$b.crt" >"$TMP/tls/openssl.log" 2>&1 ||
            die "openssl could not make a certificate: $(tail -n 1 "$TMP/tls/openssl.log")"
    done
}

# The sni workload's two TLS backends: one nginx with two TLS server blocks,
# pinned like the HTTP backend (only one of the two is busy at a time).
start_tls_backend() {
    mkdir -p "$TMP/tls-backend-tmp"
    local user_directive=""
    ((EUID == 0)) && user_directive="user root;"
    render "$BENCH/nginx-tls-backend.conf.in" "$TMP/tls-backend.conf" \
        "USER_DIRECTIVE=$user_directive" "WORKERS=$BACKEND_WORKERS" "NOFILE=$NOFILE" \
        "WORKER_CONNECTIONS=$WORKER_CONNECTIONS" "TMP=$TMP" "PORT_A=$TLS_PORT_A" \
        "PORT_B=$TLS_PORT_B" "NAME_B=$SNI_NAME_B"
    spawn tls-backend "${BACKEND_PREFIX[@]}" nginx -p "$TMP/" -e "$TMP/tls-backend-error.log" -c "$TMP/tls-backend.conf"
    wait_ready tls-backend "$TLS_PORT_A" tls-a && wait_ready tls-backend "$TLS_PORT_B" tls-b ||
        die "the TLS backend nginx did not start (run without the sni workload: --workloads)"
}

# The udp workload's DNS backend: NSD with one small zone, pinned like the
# HTTP backend; and the query file dnsperf cycles through (two names that
# exist, one that does not).
start_dns_backend() {
    cat >"$TMP/bench.test.zone" <<'ZONE'
$ORIGIN bench.test.
$TTL 300
@    IN SOA ns1 hostmaster 1 3600 600 86400 300
@    IN NS  ns1
ns1  IN A   127.0.0.1
www  IN A   192.0.2.1
mail IN A   192.0.2.2
ZONE
    printf 'www.bench.test A\nmail.bench.test A\nnone.bench.test A\n' >"$TMP/queries.txt"
    render "$BENCH/nsd.conf.in" "$TMP/nsd.conf" "TMP=$TMP" "PORT=$DNS_PORT"
    spawn dns-backend "${BACKEND_PREFIX[@]}" nsd -d -c "$TMP/nsd.conf"
    wait_dns dns-backend "$DNS_PORT" || die "the NSD backend did not start (run without the udp workload: --workloads)"
}

# wait_dns NAME PORT: until one DNS query through PORT is answered.
wait_dns() {
    local name=$1 port=$2 i
    for ((i = 0; i < 150; i++)); do
        if ! alive "${PIDS[$name]}"; then
            log "ERROR: $name exited during startup"
            show_log "$name"
            return 1
        fi
        dnsperf -s 127.0.0.1 -p "$port" -d "$TMP/queries.txt" -n 1 -t 1 2>/dev/null |
            grep -q 'Queries lost: *0 ' && return 0
        sleep 0.1
    done
    log "ERROR: $name did not answer DNS on 127.0.0.1:$port within 15 s"
    show_log "$name"
    return 1
}

# start_udp_instance PEER: the peer's UDP (DNS) instance PEER-udp on
# UDP_PORT[PEER]; HAProxy has no UDP and direct needs none.
start_udp_instance() {
    local p=$1 name=$1-udp port=${UDP_PORT[$1]:-}
    case $p in
        ringlb)
            spawn "$name" "${LOAD_PREFIX[@]}" "$RINGLB_BIN" --listen "127.0.0.1:$port" --protocol udp \
                --responses 1 --backend "127.0.0.1:$DNS_PORT" --workers "$WORKERS" --log-level warn
            ;;
        nginx)
            render "$BENCH/nginx-udp.conf.in" "$TMP/$name.conf" "NAME=$name" \
                "LOAD_MODULE=$NGINX_LOAD_MODULE" "WORKERS=$WORKERS" "NOFILE=$NOFILE" \
                "WORKER_CONNECTIONS=$WORKER_CONNECTIONS" "TMP=$TMP" "PORT=$port" \
                "BACKEND_PORT=$DNS_PORT"
            spawn "$name" "${LOAD_PREFIX[@]}" nginx -p "$TMP/" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
            ;;
        *) return 0 ;;
    esac
    if ! wait_dns "$name" "$port"; then
        fail_peer "$p" 0 "udp: did not start or did not answer DNS${LAST_LOG_LINE:+; its log ends: $LAST_LOG_LINE}"
        DEAD[$name]=1
    fi
}

# run_dnsperf PORT SECONDS [dnsperf args...]: one dnsperf run; fills D[]
# from its summary (sent, completed, lost, qps).
run_dnsperf() {
    local port=$1 secs=$2 out
    shift 2
    out=$(timeout --foreground $((secs + 30)) "${LOAD_PREFIX[@]}" dnsperf -s 127.0.0.1 -p "$port" \
        -d "$TMP/queries.txt" -l "$secs" -c 8 -q 100 -t 2 "$@" 2>&1) || true
    printf '=== %s dnsperf port %s %s\n%s\n' "$CUR_LAYOUT" "$port" "$*" \
        "$(grep -v '^> ' <<<"$out")" >>"$TMP/dnsperf-runs.log"
    D=()
    D[sent]=$(awk '/Queries sent:/ { print $3 }' <<<"$out")
    D[completed]=$(awk '/Queries completed:/ { print $3 }' <<<"$out")
    D[lost]=$(awk '/Queries lost:/ { print $3 }' <<<"$out")
    D[qps]=$(awk '/Queries per second:/ { print $4 }' <<<"$out")
    # With -v, one line per answer: "> RCODE NAME TYPE LATENCY".
    D[p99_ms]=$(awk '/^> / { print $NF }' <<<"$out" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.6f", v[i] * 1000 } }')
    [[ -n ${D[completed]} && ${D[completed]} != 0 ]]
}

# udp: DNS through the peer's UDP instance (direct: at NSD itself).  First
# at full speed (queries/s, the proxy's CPU per 100k queries), then at
# UDP_RATE queries/s for p99 latency and queries lost.
measure_udp() {
    local p=$1 r=$2 name=$1-udp port cpu0 cpu1
    case $p in
        haproxy) return 0 ;; # no UDP in HAProxy's community edition
        direct) port=$DNS_PORT ;;
        *)
            [[ -n ${DEAD[$name]:-} ]] && return 0
            port=${UDP_PORT[$p]}
            ;;
    esac
    cpu0=$(peer_cpu "$name")
    if ! run_dnsperf "$port" "$DURATION"; then
        fail_peer "$p" "$r" "udp: dnsperf completed no query"
        return 0
    fi
    cpu1=$(peer_cpu "$name")
    record "$r" "$p" udp_qps "${D[qps]}"
    local qps=${D[qps]} per100k=""
    if [[ -n $cpu0 && -n $cpu1 ]]; then
        per100k=$(calc "($cpu1 - $cpu0) / ${D[completed]} * 100000")
        record "$r" "$p" udp_cpu_s_per_100k "$per100k"
    fi
    if run_dnsperf "$port" "$DURATION" -Q "$UDP_RATE" -v; then
        record "$r" "$p" udp_p99_ms "${D[p99_ms]}"
        record "$r" "$p" udp_lost "${D[lost]}"
    fi
    log "$(printf '  %-8s udp: %.0f queries/s; at %s/s p99 %.3f ms, %s lost' "$p" "$qps" "$UDP_RATE" \
        "${D[p99_ms]:-0}" "${D[lost]:-?}")${per100k:+$(printf ', proxy CPU %.3f s / 100k queries' "$per100k")}"
    [[ $p == direct ]] || check_alive "$p" "$r" "$name" || true
}

# bytes_of SIZE: 1m -> 1048576 (a bulk object's size in bytes).
bytes_of() {
    case $1 in
    *k) echo $((${1%k} * 1024)) ;;
    *) echo $((${1%m} * 1024 * 1024)) ;;
    esac
}

# The stream workload's backend: an iperf3 server (one test at a time, which
# is how the workload runs them).
start_stream_backend() {
    spawn stream-backend "${BACKEND_PREFIX[@]}" iperf3 -s -p "$STREAM_PORT"
    local i
    for ((i = 0; i < 50; i++)); do
        tcp_probe "$STREAM_PORT" && return 0
        sleep 0.1
    done
    die "the iperf3 server did not start (run without the stream workload: --workloads)"
}

# start_instance PEER NAME PORT [WORKERS [MODE]]: start one instance of a
# proxy, named NAME (logs, config, pid file), listening on PORT, with WORKERS
# workers [--workers]; MODE http (in front of the HTTP backend, the default)
# or sni (routing by server name to the two TLS backends).  Waits until it
# proxies (sni: each name to its own backend).
start_instance() {
    local p=$1 name=$2 port=$3 workers=${4:-$WORKERS} mode=${5:-http}
    # MODE stream: in front of the iperf3 server instead of the HTTP backend.
    local bport=$BACKEND_PORT extra=() splice="" maxpipes="" maxconn=$MAXCONN
    [[ $mode == stream ]] && bport=$STREAM_PORT
    [[ $p == ringlb-copy ]] && extra=(--splice never)
    if [[ $p == haproxy-splice ]]; then
        # 64 pipes are 128 more fds: room made under the same limit.
        splice="option splice-auto" maxpipes="maxpipes 64
    tune.pipesize 1048576" maxconn=$((MAXCONN - 100))
    fi
    case ${p%%-*}/$mode in
        ringlb/http | ringlb/stream)
            spawn "$name" "${LOAD_PREFIX[@]}" "$RINGLB_BIN" --listen "127.0.0.1:$port" \
                --backend "127.0.0.1:$bport" --workers "$workers" --log-level warn "${extra[@]}"
            ;;
        ringlb/sni)
            # Same routes, same order as HAProxy's ACLs and nginx's map; --backend is the default route.
            spawn "$name" "${LOAD_PREFIX[@]}" "$RINGLB_BIN" --listen "127.0.0.1:$port" \
                --route-by sni --route "$SNI_NAME_B=127.0.0.1:$TLS_PORT_B" \
                --route "$SNI_NAME_A=127.0.0.1:$TLS_PORT_A" --backend "127.0.0.1:$TLS_PORT_B" \
                --workers "$workers" --log-level warn "${extra[@]}"
            ;;
        haproxy/*)
            local tpl=$BENCH/haproxy.cfg.in
            [[ $mode == sni ]] && tpl=$BENCH/haproxy-sni.cfg.in
            render "$tpl" "$TMP/$name.cfg" "NAME=$name" "WORKERS=$workers" \
                "MAXCONN=$maxconn" "TMP=$TMP" "PORT=$port" "BACKEND_PORT=$bport" \
                "PORT_A=$TLS_PORT_A" "PORT_B=$TLS_PORT_B" "NAME_B=$SNI_NAME_B" "SPLICE=$splice" "MAXPIPES=$maxpipes"
            spawn "$name" "${LOAD_PREFIX[@]}" haproxy -db -f "$TMP/$name.cfg"
            ;;
        nginx/*)
            local tpl=$BENCH/nginx-stream.conf.in
            [[ $mode == sni ]] && tpl=$BENCH/nginx-sni.conf.in
            render "$tpl" "$TMP/$name.conf" "NAME=$name" \
                "LOAD_MODULE=$NGINX_LOAD_MODULE" "WORKERS=$workers" "NOFILE=$NOFILE" \
                "WORKER_CONNECTIONS=$WORKER_CONNECTIONS" "TMP=$TMP" "PORT=$port" \
                "BACKEND_PORT=$bport" "PORT_A=$TLS_PORT_A" "PORT_B=$TLS_PORT_B" \
                "NAME_B=$SNI_NAME_B"
            # -e: error log before the config is read (else /var/log/nginx).
            spawn "$name" "${LOAD_PREFIX[@]}" nginx -p "$TMP/" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
            ;;
    esac
    wait_ready "$name" "$port" "$mode"
}

# start_peer PEER: start the long-lived instance, and with the sni workload
# the long-lived sni instance PEER-sni (direct: nothing to start).
start_peer() {
    local p=$1
    if [[ $p == direct ]]; then
        PORT[direct]=$BACKEND_PORT
        SNI_PORT[direct]=$TLS_PORT_A
        return 0
    fi
    if [[ ${p%%-*} == ringlb && -z $RINGLB_BIN ]]; then
        fail_peer "$p" 0 "not started: $RINGLB_BUILD_ERROR"
        DEAD[$p]=1
        return 1
    fi
    if has_workload sni && ! zero_copy_peer "$p"; then
        if ! start_instance "$p" "$p-sni" "${SNI_PORT[$p]}" "$WORKERS" sni; then
            fail_peer "$p" 0 "sni: did not start or did not route each server name to its TLS backend${LAST_LOG_LINE:+; its log ends: $LAST_LOG_LINE}"
            DEAD[$p-sni]=1
        fi
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

# One measurement: LAYOUT ROUND PEER METRIC VALUE, a line of results.tsv.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$CUR_LAYOUT" "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# run_wrk PEER ROUND WORKLOAD CONNS SECONDS PATH|URL [wrk args...]: one wrk run
# against the peer (a PATH goes to the peer's long-lived instance, a URL where
# it says); fills W[] from wrk-report.lua's line.  Returns 1 (after recording
# the failure) if wrk failed or the run does not look like a healthy server:
# zero requests, any non-2xx/3xx answer, or socket errors above a trivial
# level (more than max(5, 0.1% of requests)).
run_wrk() {
    local peer=$1 round=$2 wl=$3 conns=$4 secs=$5 url=$6 out rc=0 line kv
    shift 6
    [[ $url == /* ]] && url="http://127.0.0.1:${PORT[$peer]}$url"
    # --foreground: keep wrk in our process group so Ctrl-C reaches it.
    out=$(timeout --foreground $((secs + 30)) "${LOAD_PREFIX[@]}" wrk -t"$WRK_THREADS" -c"$conns" \
        -d"${secs}s" --timeout 10s -s "$BENCH/wrk-report.lua" "$@" "$url" 2>&1) || rc=$?
    # Keep wrk's own output (kept with --keep-tmp or on failure) for post-mortems.
    printf '=== %s round %s %s %s (exit %s)\n%s\n' "$CUR_LAYOUT" "$round" "$peer" "$wl" "$rc" "$out" >>"$TMP/wrk-runs.log"
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

# CPU seconds (all processes and threads) of an instance's process group
# (a peer's long-lived instance, or any other spawned NAME); empty for direct
# and for names that were never started.
peer_cpu() {
    [[ $1 == direct || -z ${PIDS[$1]:-} ]] && return 0
    local stats cpu
    # (no process substitution here: its child could outlive this subshell)
    stats=$(python3 "$BENCH/procstat.py" "${PIDS[$1]}") || return 0
    read -r _ cpu _ <<<"$stats"
    echo "$cpu"
}

# check_alive PEER ROUND [NAME]: a proxy instance (the peer's long-lived one,
# or NAME) that crashed is failed and skipped from then on.
check_alive() {
    local name=${3:-$1}
    [[ $1 == direct ]] && return 0
    alive "${PIDS[$name]}" && return 0
    fail_peer "$1" "$2" "${name}: process exited (crashed?)"
    show_log "$name"
    DEAD[$name]=1
    return 1
}

# measure_keepalive PEER ROUND KEY CONNS [NAME PORT [PATH]]: keep-alive GET of
# PATH (/) with CONNS connections against the peer's long-lived instance (or
# instance NAME on PORT); records KEY_rps, KEY_p50_ms, KEY_p99_ms and, around
# the run, the proxy's CPU per request as KEY_cpu_s_per_100k.  Returns 1 if
# the run failed.
measure_keepalive() {
    local p=$1 r=$2 key=$3 conns=$4 name=${5:-$1} port=${6:-${PORT[$1]}} path=${7:-/} cpu0 cpu1 secs rps
    cpu0=$(peer_cpu "$name")
    run_wrk "$p" "$r" "$key" "$conns" "$DURATION" "http://127.0.0.1:$port$path" --latency || return 1
    cpu1=$(peer_cpu "$name")
    secs=$(calc "${W[duration_us]} / 1e6")
    rps=$(calc "${W[requests]} / $secs")
    record "$r" "$p" "${key}_rps" "$rps"
    record "$r" "$p" "${key}_p50_ms" "$(calc "${W[p50_us]} / 1000")"
    record "$r" "$p" "${key}_p99_ms" "$(calc "${W[p99_us]} / 1000")"
    [[ -n $cpu0 && -n $cpu1 ]] &&
        record "$r" "$p" "${key}_cpu_s_per_100k" "$(calc "($cpu1 - $cpu0) / ${W[requests]} * 100000")"
    log "$(printf '  %-8s %s (%s conns): %.0f req/s, p50 %.3f ms, p99 %.3f ms' "$p" "$key" "$conns" \
        "$rps" "$(calc "${W[p50_us]} / 1000")" "$(calc "${W[p99_us]} / 1000")")${cpu0:+$(printf ', proxy CPU %.2f s' "$(calc "$cpu1 - $cpu0")")}"
    RPS=$rps
}

# sni: TLS connection churn through the peer's sni instance (direct: straight
# at TLS backend a).  wrk takes SNI from the URL's host, hence localhost (see
# SNI_NAME_A); "Connection: close" makes every request a new connection and a
# full handshake.  Records connections/s, the proxy's CPU per connection, and
# how busy the TLS backend was (percent of its workers' CPUs): near 100% the
# backend, not the proxy, set the pace.
measure_sni() {
    local p=$1 r=$2 name=$1-sni cpu0 cpu1 b0 b1 secs cps util
    [[ -n ${DEAD[$name]:-} ]] && return 0
    cpu0=$(peer_cpu "$name")
    b0=$(peer_cpu tls-backend)
    run_wrk "$p" "$r" sni "$CONNS" "$DURATION" "https://$SNI_NAME_A:${SNI_PORT[$p]}/" \
        -H "Connection: close" || return 0
    cpu1=$(peer_cpu "$name")
    b1=$(peer_cpu tls-backend)
    secs=$(calc "${W[duration_us]} / 1e6")
    cps=$(calc "${W[requests]} / $secs")
    record "$r" "$p" sni_cps "$cps"
    [[ -n $cpu0 && -n $cpu1 ]] &&
        record "$r" "$p" sni_cpu_us_per_conn "$(calc "($cpu1 - $cpu0) / ${W[requests]} * 1e6")"
    util=""
    if [[ -n $b0 && -n $b1 ]]; then
        util=$(calc "($b1 - $b0) / $secs / $BACKEND_WORKERS * 100")
        record "$r" "$p" sni_backend_cpu_pct "$util"
    fi
    log "$(printf '  %-8s sni: %.0f conn/s' "$p" "$cps")${cpu0:+$(printf ', proxy CPU %.0f us/conn' \
        "$(calc "($cpu1 - $cpu0) / ${W[requests]} * 1e6")")}${util:+$(printf ', TLS backend CPU %.0f%%' "$util")}"
}

# scaling: keep-alive on fresh instances with 1 and with 2 workers, started for
# it and stopped after (like idle), in the same round; the factor is per round.
measure_scaling() {
    local p=$1 r=$2 w name port
    local -A rps=()
    for w in "${SCALE_WORKERS[@]}"; do
        name=$p-w$w
        port=$(free_ports 1)
        if ! start_instance "$p" "$name" "$port" "$w"; then
            fail_peer "$p" "$r" "scaling: a fresh instance with $w worker(s) did not start${LAST_LOG_LINE:+; its log ends: $LAST_LOG_LINE}"
            stop_instance "$name"
            return 0
        fi
        if measure_keepalive "$p" "$r" "scale_w$w" "$CONNS" "$name" "$port"; then
            rps[$w]=$RPS
        fi
        stop_instance "$name"
    done
    local lo=${SCALE_WORKERS[0]} hi=${SCALE_WORKERS[1]}
    if [[ -n ${rps[$lo]:-} && -n ${rps[$hi]:-} ]]; then
        record "$r" "$p" scale_factor "$(calc "${rps[$hi]} / ${rps[$lo]}")"
        log "$(printf '  %-8s scaling %s -> %s workers: %.2fx' "$p" "$lo" "$hi" "$(calc "${rps[$hi]} / ${rps[$lo]}")")"
    fi
}

# idle connections: only meaningful for a proxy.  Measured on a fresh
# instance of the proxy started just for this (and stopped after): a
# process that already held N connections in an earlier round keeps that
# memory in its pools/allocator, and "growth" would then read as ~0.
measure_idle() {
    local p=$1 r=$2 burst
    # Sequential (one request at a time), then a burst (all at once), each
    # on a fresh instance.
    for burst in "" --burst; do measure_idle_once "$p" "$r" "$burst"; done
}

# measure_idle_once PEER ROUND [--burst]: idle_kib_per_conn, or with --burst
# idle_burst_kib_per_conn.
measure_idle_once() {
    local p=$1 r=$2 burst=${3:-} out rc=0 line kv iport name=$1-idle key=idle
    local -A I=()
    [[ -n $burst ]] && key=idle_burst
    iport=$(free_ports 1)
    if ! start_instance "$p" "$name" "$iport"; then
        fail_peer "$p" "$r" "idle: a fresh instance did not start${LAST_LOG_LINE:+; its log ends: $LAST_LOG_LINE}"
        stop_instance "$name"
        return 0
    fi
    out=$(timeout --foreground $((60 + IDLE_CONNS / 20)) "${LOAD_PREFIX[@]}" python3 "$BENCH/idle.py" \
        --port "$iport" --conns "$IDLE_CONNS" --pgid "${PIDS[$name]}" $burst ${burst:+--settle 8} 2>&1) || rc=$?
    line=$(grep -m1 '^@@idle ' <<<"$out" || true)
    for kv in ${line#@@idle }; do I[${kv%%=*}]=${kv#*=}; done
    if ((rc != 0)) || [[ -z $line ]]; then
        fail_peer "$p" "$r" "$key: exit $rc: $(tr '\n' ' ' <<<"$out")"
        show_log "$name"
    else
        record "$r" "$p" "${key}_kib_per_conn" "${I[kib_per_conn]}"
        log "  $(printf '%-8s' "$p") $key: ${I[kib_per_conn]} KiB/conn (RSS ${I[rss_before_kib]} -> ${I[rss_after_kib]} KiB for ${I[opened]} conns)"
    fi
    stop_instance "$name"
}

# measure_stream PEER ROUND: one iperf3 stream through the peer for
# --duration seconds, upload then download (-R); records stream_up_gbps,
# stream_down_gbps and, for a proxy, stream_up_cpu_s_per_gb and
# stream_down_cpu_s_per_gb (its CPU over the bytes iperf3 received).
measure_stream() {
    local p=$1 r=$2 name=$1-stream port dir out cpu0 cpu1 bytes bps
    if [[ $p == direct ]]; then
        port=$STREAM_PORT
    else
        port=$(free_ports 1)
        if ! start_instance "$p" "$name" "$port" "$WORKERS" stream; then
            fail_peer "$p" "$r" "stream: an instance in front of iperf3 did not start"
            stop_instance "$name"
            return 0
        fi
    fi
    for dir in up down; do
        local rev=()
        [[ $dir == down ]] && rev=(-R)
        cpu0=$(peer_cpu "$name")
        out=$(timeout --foreground $((DURATION + 30)) "${LOAD_PREFIX[@]}" iperf3 -c 127.0.0.1 \
            -p "$port" -t "$DURATION" -J "${rev[@]}" 2>&1) || {
            fail_peer "$p" "$r" "stream $dir: iperf3 failed: $(tail -c 300 <<<"$out" | tr '\n' ' ')"
            continue
        }
        cpu1=$(peer_cpu "$name")
        read -r bytes bps < <(python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum_received"]; print(s["bytes"], s["bits_per_second"])' <<<"$out")
        record "$r" "$p" "stream_${dir}_gbps" "$(calc "$bps / 1e9")"
        [[ -n $cpu0 && -n $cpu1 ]] && record "$r" "$p" "stream_${dir}_cpu_s_per_gb" "$(calc "($cpu1 - $cpu0) / ($bytes / 1e9)")"
        log "$(printf '  %-14s stream %s: %.1f Gbit/s' "$p" "$dir" "$(calc "$bps / 1e9")")${cpu1:+, $(calc "($cpu1 - $cpu0) / ($bytes / 1e9)") CPU s/GB}"
    done
    [[ $p == direct ]] || stop_instance "$name"
}

# A peer that is there for what zero-copy buys (ringlb --splice never,
# HAProxy splice-auto): bulk and stream only.
zero_copy_peer() { [[ $1 == ringlb-copy || $1 == haproxy-splice ]]; }

measure_peer() { # PEER ROUND
    local p=$1 r=$2 secs n
    [[ -n ${DEAD[$p]:-} ]] && return 0
    if zero_copy_peer "$p"; then
        measure_bulk "$p" "$r"
        check_alive "$p" "$r" || return 0
        if has_workload stream; then measure_stream "$p" "$r"; fi
        return 0
    fi

    # (1) keep-alive small requests; the proxy's CPU time is read around it.
    if has_workload keepalive; then
        measure_keepalive "$p" "$r" keepalive "$CONNS" || true
        check_alive "$p" "$r" || return 0
    fi

    # (1b) keep-alive with answers of a few KiB.
    if has_workload answers; then
        for size in "${ANSWER_SIZES[@]}"; do
            measure_keepalive "$p" "$r" "answers$size" "$CONNS" "$p" "${PORT[$p]}" "/$size" || true
            check_alive "$p" "$r" || return 0
        done
    fi

    # (2) the same with many connections (1,000, 4,000).
    if has_workload many; then
        for n in "${MANY_CONNS[@]}"; do
            measure_keepalive "$p" "$r" "many$n" "$n" || true
            check_alive "$p" "$r" || return 0
        done
    fi

    # (3) connection churn: one request per connection, server closes.
    if has_workload churn && run_wrk "$p" "$r" churn "$CONNS" "$DURATION" / -H "Connection: close"; then
        secs=$(calc "${W[duration_us]} / 1e6")
        record "$r" "$p" churn_cps "$(calc "${W[requests]} / $secs")"
        log "$(printf '  %-8s churn: %.0f conn/s' "$p" "$(calc "${W[requests]} / $secs")")"
    fi
    check_alive "$p" "$r" || return 0

    # (4) bulk, and (4b) stream.
    measure_bulk "$p" "$r"
    check_alive "$p" "$r" || return 0
    if has_workload stream; then measure_stream "$p" "$r"; fi

    # (5) TLS churn routed by server name, on the peer's sni instance.
    if has_workload sni; then
        measure_sni "$p" "$r"
        [[ $p == direct || -n ${DEAD[$p-sni]:-} ]] || check_alive "$p" "$r" "$p-sni" || true
    fi

    # (6) DNS over UDP, on the peer's udp instance.
    if has_workload udp; then measure_udp "$p" "$r"; fi

    # (7) and (8): fresh instances, proxies only.
    [[ $p == direct ]] && return 0
    if has_workload scaling; then measure_scaling "$p" "$r"; fi
    if has_workload idle; then measure_idle "$p" "$r"; fi
}

# measure_bulk PEER ROUND: 1, 10 and 100 MiB responses, MB/s and the proxy's
# CPU per GB.  Also catch a proxy that truncates bodies.  At least 2 s: at
# -d1 on a busy machine every connection can still be mid-body when wrk
# stops, i.e. zero completed requests from a healthy proxy.
measure_bulk() {
    local p=$1 r=$2 secs
    if has_workload bulk; then
        local size key cpu0 cpu1
        for size in "${BULK_SIZES[@]}"; do
            key=bulk${size}
            [[ $size == 10m ]] && key=bulk
            cpu0=$(peer_cpu "$p")
            run_wrk "$p" "$r" "$key" "$BULK_CONNS" "$((DURATION < 2 ? 2 : DURATION))" "/$size" || continue
            cpu1=$(peer_cpu "$p")
            if ((W[bytes] < W[requests] * $(bytes_of "$size"))); then
                fail_peer "$p" "$r" "$key: ${W[bytes]} bytes for ${W[requests]} responses of $size (truncated?)"
                continue
            fi
            secs=$(calc "${W[duration_us]} / 1e6")
            record "$r" "$p" "${key}_mbps" "$(calc "${W[bytes]} / $secs / 1e6")"
            [[ -n $cpu0 && -n $cpu1 ]] && record "$r" "$p" "${key}_cpu_s_per_gb" "$(calc "($cpu1 - $cpu0) / (${W[bytes]} / 1e9)")"
            log "$(printf '  %-14s %s: %.0f MB/s' "$p" "$key" "$(calc "${W[bytes]} / $secs / 1e6")")${cpu1:+, $(calc "($cpu1 - $cpu0) / (${W[bytes]} / 1e9)") CPU s/GB}"
        done
    fi
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
        has_workload sni && printf 'openssl\t%s\n' "$(first_line openssl version)"
        if has_workload udp; then
            printf 'dnsperf\t%s\n' "$(dnsperf -h 2>&1 | grep -m1 -i '^version' || echo dnsperf)"
            printf 'nsd\t%s\n' "$(first_line nsd -v)"
            printf 'udp_rate\t%s\n' "$UDP_RATE"
        fi
        printf 'workers\t%s\n' "$WORKERS"
        printf 'rounds\t%s\n' "$ROUNDS"
        printf 'duration\t%s\n' "$DURATION"
        printf 'bulk_duration\t%s\n' "$((DURATION < 2 ? 2 : DURATION))"
        printf 'connections\t%s\n' "$CONNS"
        printf 'bulk_connections\t%s\n' "$BULK_CONNS"
        printf 'idle_conns\t%s\n' "$IDLE_CONNS"
        printf 'many_conns\t%s\n' "${MANY_CONNS[*]}"
        printf 'scale_workers\t%s\n' "${SCALE_WORKERS[*]}"
        printf 'sni_names\t%s\n' "$SNI_NAME_B $SNI_NAME_A"
        printf 'wrk_threads\t%s\n' "$WRK_THREADS"
        printf 'backend_workers\t%s\n' "$BACKEND_WORKERS"
        printf 'layouts\t%s\n' "${LAYOUTS[*]}"
        printf 'workloads\t%s\n' "${WORKLOADS[*]}"
        printf 'peers\t%s\n' "${PEERS[*]}"
        cat "$TMP/meta-layouts.tsv"
    } >"$f"
}

# run_layout: the whole measurement in layout $CUR_LAYOUT: fresh backends and
# proxies (pinned or not), warm-up, the interleaved rounds; then stop them all.
run_layout() {
    compute_layout
    DEAD=() PORT=() SNI_PORT=() UDP_PORT=()
    local ports
    read -r -a ports <<<"$(free_ports 17)"
    DNS_PORT=${ports[9]}
    UDP_PORT[ringlb]=${ports[10]} UDP_PORT[nginx]=${ports[11]}
    BACKEND_PORT=${ports[0]} TLS_PORT_A=${ports[4]} TLS_PORT_B=${ports[5]}
    PORT[ringlb]=${ports[1]} PORT[haproxy]=${ports[2]} PORT[nginx]=${ports[3]}
    SNI_PORT[ringlb]=${ports[6]} SNI_PORT[haproxy]=${ports[7]} SNI_PORT[nginx]=${ports[8]}
    PORT[ringlb-copy]=${ports[12]} PORT[haproxy-splice]=${ports[13]}
    SNI_PORT[ringlb-copy]=${ports[14]} SNI_PORT[haproxy-splice]=${ports[15]}
    STREAM_PORT=${ports[16]}

    log "=== layout $CUR_LAYOUT: $LAYOUT; proxies get $WORKERS worker(s); fd limit $NOFILE"
    # Anything else burning CPU (a compile, a test suite) skews every figure.
    local load
    read -r load _ </proc/loadavg
    if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
        log "note: 1-minute load average is $load: the machine is not idle, expect noisy figures"
    fi
    printf 'layout:%s\t%s\nloadavg:%s\t%s\nload_cpus:%s\t%s\n' "$CUR_LAYOUT" "$LAYOUT" \
        "$CUR_LAYOUT" "$load" "$CUR_LAYOUT" "$N_LOAD_CPUS" >>"$TMP/meta-layouts.tsv"
    if has_workload scaling && ((N_LOAD_CPUS < ${SCALE_WORKERS[-1]})); then
        log "note: only $N_LOAD_CPUS CPU(s) for wrk and the proxy in this layout: ${SCALE_WORKERS[-1]} workers cannot scale here"
    fi
    log "starting backend nginx on 127.0.0.1:$BACKEND_PORT"
    start_backend
    if has_workload stream; then
        log "starting iperf3 server on 127.0.0.1:$STREAM_PORT"
        start_stream_backend
    fi
    if has_workload sni; then
        log "starting TLS backend nginx on 127.0.0.1:$TLS_PORT_A ($SNI_NAME_A) and :$TLS_PORT_B ($SNI_NAME_B)"
        start_tls_backend
    fi
    if has_workload udp; then
        log "starting NSD (DNS backend) on 127.0.0.1:$DNS_PORT"
        start_dns_backend
    fi
    local p
    for p in "${PEERS[@]}"; do
        [[ $p == direct ]] || log "starting $p on 127.0.0.1:${PORT[$p]}"
        start_peer "$p" || true
        if has_workload udp && [[ -z ${DEAD[$p]:-} ]]; then start_udp_instance "$p"; fi
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
        log "$CUR_LAYOUT, round $r/$ROUNDS: ${order[*]}"
        for p in "${order[@]}"; do measure_peer "$p" "$r"; done
    done
    stop_all
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
    : >"$TMP/meta-layouts.tsv"

    build_ringlb
    raise_nofile
    has_workload sni && make_certs

    for CUR_LAYOUT in "${LAYOUTS[@]}"; do
        run_layout
    done

    write_meta
    mkdir -p "$(dirname -- "$OUT")"
    python3 "$BENCH/report.py" --results "$RESULTS" --meta "$TMP/meta.tsv" \
        --md "$OUT" --svg "${OUT%.md}.svg"
    log "report: $OUT, chart(s): ${OUT%.md}.svg$( ((${#LAYOUTS[@]} > 1)) && echo " and ${OUT%.md}-${LAYOUTS[1]}.svg")"

    if ((${#FAILED[@]})); then
        log "FAILED peers: ${!FAILED[*]} (see above and the report)"
        exit 1
    fi
}

main "$@"
