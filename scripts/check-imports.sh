#!/usr/bin/env bash
# Imports follow the byte: server → (upgrade, the hot handover of its
# listeners) → worker → conn → {upstream, relay} → {buffer, uring}. Prints every `crate::` reference that points up that path
# or sideways along it (and any from a module off the path into it), and
# fails if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

rank() {
    case $1 in
        server) echo 0 ;;
        upgrade) echo 1 ;;
        worker) echo 2 ;;
        conn) echo 3 ;;
        upstream | relay) echo 4 ;;
        buffer | uring) echo 5 ;;
        *) echo 9 ;;
    esac
}

bad=0
while IFS=: read -r file line ref; do
    from=${file#src/}
    from=${from%%/*}
    from=${from%.rs}
    to=${ref#crate::}
    [ "$from" = "$to" ] && continue
    if [ "$(rank "$to")" != 9 ] && [ "$(rank "$to")" -le "$(rank "$from")" ]; then
        echo "$file:$line: $from imports $to, which is not below it"
        bad=1
    fi
done < <(grep -rnoE 'crate::[a-z_]+' src --include=*.rs)
exit $bad
