#!/usr/bin/env bash
# Writes the man page and the shell completions that the Debian package
# ships into target/assets, by running the built binary (so they always
# match its flags). Run after the release build, before `cargo deb --no-build`:
#   cargo build --release && scripts/gen-assets.sh && cargo deb --no-build --strip
# Usage: gen-assets.sh [BINARY [OUTDIR]], by default target/release/ringlb
# and target/assets (where Cargo.toml's [package.metadata.deb] looks).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/ringlb}
out=${2:-target/assets}
if [ ! -x "$bin" ]; then
    echo "gen-assets.sh: $bin is not built (cargo build --release)" >&2
    exit 2
fi
mkdir -p "$out"
"$bin" --man | gzip -9n >"$out/ringlb.8.gz"
"$bin" --completions bash >"$out/ringlb.bash"
"$bin" --completions zsh >"$out/_ringlb"
"$bin" --completions fish >"$out/ringlb.fish"
echo "gen-assets.sh: wrote $(ls "$out" | tr '\n' ' ')in $out"
