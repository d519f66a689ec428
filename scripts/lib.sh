# Shared by scripts/soak.sh and scripts/faultlab.sh (sourced, not run).

# need_tools NAME PACKAGE...: installs the Debian packages that are missing
# (each PACKAGE given as "command:package"), when run as root with apt-get;
# otherwise names them and exits 2. NAME prefixes the messages.
need_tools() {
    local name=$1 need=() pair
    shift
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    ((${#need[@]})) || return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "[$name] installing ${need[*]}" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    else
        echo "$name: missing ${need[*]}; install them and run again" >&2
        exit 2
    fi
}

# ringlb_bin ROOT: sets RINGLB_BIN to the release binary of the checkout at
# ROOT, building it first, unless RINGLB_BIN is set already.
ringlb_bin() {
    [[ -n ${RINGLB_BIN:-} ]] && return 0
    (cd "$1" && cargo build --release --bin ringlb >&2)
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$1/$target
    RINGLB_BIN=$target/release/ringlb
}
