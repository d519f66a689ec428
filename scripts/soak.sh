#!/usr/bin/env bash
#
# scripts/soak.sh: ringlb under long, hostile use, every byte checked.
#
#   scripts/soak.sh [--duration 30s|10m] [--connections N] [options]
#
# Runs, all at once and for the whole duration, against one ringlb on
# 127.0.0.1 (two frontends, ports from the OS, both with splice = "auto", so
# bulk transfers go through kernel pipes; the summary says how many bytes did):
#   * N clients doing SHA-256-checked random transfers (1 B to 4 MiB, both
#     ways at once, the client half-closing after its upload);
#   * wrk doing keep-alive HTTP through the second frontend;
#   * backends killed (SIGKILL) and restarted;
#   * SIGHUP reloads that change weights and add or remove a backend.
# Then it waits for ringlb to go idle and prints one summary: transfers,
# bytes verified, mismatches, failures by cause, RSS and fds at start and end.
#
# Exit status 1 if any byte was corrupted, a transfer was cut short with a
# clean end that no backend kill explains, or ringlb's fds or RSS at the end
# grew past a bound (--max-fd-growth, --max-rss-growth-mib); 2 for bad usage.
#
# Options (defaults in brackets):
#   --duration D         how long the load runs: 30s, 10m, ... [30s]
#   --connections N      concurrent transfer clients [16]
#   --wrk-connections N  wrk's keep-alive connections [16]
#   --kill-every D       time between two backend kills [4s]
#   --reload-every D     time between two reloads [3s]
#   --max-fd-growth N    allowed growth of ringlb's fd count [16]
#   --max-rss-growth-mib N  allowed RSS growth [128]
#   --seed N             random seed [1]
#   --ringlb-bin PATH    use this binary (also RINGLB_BIN=PATH); else cargo build --release
#   --keep-tmp           keep the work dir (config, ringlb.log) and print its path
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
RINGLB_BIN=${RINGLB_BIN:-}
KEEP_TMP=0
PASS=()
while (($#)); do
    case $1 in
        -h | --help)
            sed -n '3,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --ringlb-bin)
            (($# >= 2)) || { echo "soak: $1 needs a value" >&2; exit 2; }
            RINGLB_BIN=$2
            shift
            ;;
        --keep-tmp) KEEP_TMP=1 ;;
        --duration | --connections | --wrk-connections | --kill-every | --reload-every | \
            --max-fd-growth | --max-rss-growth-mib | --seed)
            (($# >= 2)) || { echo "soak: $1 needs a value" >&2; exit 2; }
            PASS+=("$1" "$2")
            shift
            ;;
        *)
            echo "soak: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

need_tools soak python3:python3 wrk:wrk
ringlb_bin "$ROOT"

# Room for the clients, ringlb and the backends' sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d /tmp/ringlb-soak.XXXXXX)
if ((KEEP_TMP)); then
    echo "[soak] work dir: $WORK" >&2
else
    trap 'rm -rf "$WORK"' EXIT
fi
python3 "$ROOT/scripts/soak.py" run --ringlb "$RINGLB_BIN" --workdir "$WORK" "${PASS[@]}"
