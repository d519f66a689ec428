#!/usr/bin/env bash
#
# scripts/faultlab.sh: ringlb under real network faults, every byte checked.
#
#   scripts/faultlab.sh [--short] [--duration SECONDS] [--ringlb-bin PATH]
#
# Loopback never loses, delays, reorders or fragments a packet, so this makes
# a lab of three network namespaces (client, ringlb, backend; addresses from
# 198.18.0.0/15, no route anywhere else) and runs, under each fault profile,
# SHA-256-checked transfers, wrk and ringlb's health checks:
#   clean; 1% loss + 20 ms +- 5 ms delay; reordering + duplication + jitter;
#   MTU 1280 + 1% loss; a black-holed backend; a reset backend.
# Loss is nftables (numgen random); delay, jitter, reordering and duplication
# a user-space link between two TAP devices (scripts/faultlab.py link): this
# kernel has no sch_netem.  Each fault is checked before it is used (a missing
# one fails the run with its name, exit 2) and measured while it is in place
# (ping RTT, DF pings at the MTU, nftables drop counters).  Prints a table
# per profile: transfers ok and failed by cause, bytes verified, corrupted,
# the time to mark a faulty backend down and to bring it back.
#
# Exit status 1 if a byte was corrupted, a transfer was lost that no fault
# explains, a faulty backend was not marked down within fall x interval +
# timeout or still got traffic, or a fault was not in place; 2 for bad usage
# or a missing fault.  Every namespace it made is removed on exit, INT and
# TERM; those of dead runs (killed with SIGKILL) are removed at the next start.
#
# Options:
#   --short              CI's mode: every profile, 5 s each, small transfers
#   --duration N         seconds per profile in the full mode [40]
#   --seed N             random seed [1]
#   --only TEXT          only the profiles whose name has TEXT (repeatable)
#   --ringlb-bin PATH    use this binary (also RINGLB_BIN=PATH); else cargo build --release
#   --keep-tmp           keep the work dir (config, ringlb.log) and print its path
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
PATH=$PATH:/usr/sbin:/sbin
RINGLB_BIN=${RINGLB_BIN:-}
KEEP_TMP=0
PASS=()
while (($#)); do
    case $1 in
        -h | --help)
            sed -n '3,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --short) PASS+=(--short) ;;
        --keep-tmp) KEEP_TMP=1 ;;
        --ringlb-bin)
            (($# >= 2)) || { echo "faultlab: $1 needs a value" >&2; exit 2; }
            RINGLB_BIN=$2
            shift
            ;;
        --only)
            (($# >= 2)) || { echo "faultlab: $1 needs a value" >&2; exit 2; }
            PASS+=("$1" "$2")
            shift
            ;;
        --duration | --seed)
            (($# >= 2)) || { echo "faultlab: $1 needs a value" >&2; exit 2; }
            [[ $2 =~ ^[0-9]+$ ]] || { echo "faultlab: $1 takes a whole number, got '$2'" >&2; exit 2; }
            PASS+=("$1" "$2")
            shift
            ;;
        *)
            echo "faultlab: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

if [[ $(id -u) != 0 ]]; then
    echo "faultlab: needs root (network namespaces, TAP devices, nftables)" >&2
    exit 2
fi

need_tools faultlab python3:python3 wrk:wrk nft:nftables ip:iproute2 ping:iputils-ping
ringlb_bin "$ROOT"
[[ -x $RINGLB_BIN ]] || { echo "faultlab: no ringlb binary at '$RINGLB_BIN'" >&2; exit 2; }

# Namespaces are named flab<PID><role>: parallel runs never collide, and a
# run that died without cleaning up (SIGKILL) is found by its dead PID.
PREFIX=flab$$
remove_lab() {
    local ns pid
    for ns in $(ip netns list | awk '{print $1}'); do
        [[ $ns =~ ^flab([0-9]+)[clb]$ ]] || continue
        pid=${BASH_REMATCH[1]}
        if [[ $1 == mine ]]; then
            [[ $pid == "$$" ]] || continue
        elif [[ -r /proc/$pid/stat && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
            continue # that run is still going (a zombie is not)
        fi
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$p" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}
remove_lab dead

WORK=$(mktemp -d /tmp/ringlb-faultlab.XXXXXX)
LAB_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $LAB_PID ]]; then
        # The lab and everything it started (the link, the backends, ringlb,
        # wrk) share its process group.
        kill -TERM -- "-$LAB_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$LAB_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$LAB_PID" 2>/dev/null || true
    fi
    remove_lab mine
    if ((KEEP_TMP)); then
        echo "[faultlab] work dir: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# In the background and waited for, so that INT and TERM run the trap at once.
setsid python3 "$ROOT/scripts/faultlab.py" lab --prefix "$PREFIX" --ringlb "$RINGLB_BIN" \
    --workdir "$WORK" "${PASS[@]}" &
LAB_PID=$!
wait "$LAB_PID"
