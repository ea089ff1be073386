#!/usr/bin/env bash
# `sluicebus-bench soak` against each bus in turn (issue 11): starts the bus as `compare`
# does (`serve`: private socket, the same session.conf for all), runs the soak against it,
# writes its table to OUT/soak-BUS.md and its plot to OUT/soak-BUS.svg, and stops the bus.
#   bench/soak.sh [-- soak options]          e.g. bench/soak.sh -- --seconds 150
# BUSES="sluicebus dbus-daemon dbus-broker" (default), SLUICEBUS=target/release/sluicebus,
# OUT=bench/soak-results (default), CONFIG=FILE (default: /usr/share/dbus-1/session.conf), BENCH=binary.
# The buses run one after another, not interleaved: a soak is minutes long, so say how
# loaded the machine was when quoting the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${1:-} == -- ]] && shift
BUSES=${BUSES:-sluicebus dbus-daemon dbus-broker}
SLUICEBUS=${SLUICEBUS:-target/release/sluicebus}
OUT=${OUT:-bench/soak-results}
BENCH=${BENCH:-bench/target/release/sluicebus-bench}
[[ -x $BENCH ]] || (cd bench && cargo build --release -q)
for bus in $BUSES; do
    coproc SERVE { "$BENCH" --quiet serve --buses "$bus" --sluicebus "$SLUICEBUS" \
                       ${CONFIG:+--config "$CONFIG"}; }
    if ! read -r pid address <&"${SERVE[0]}"; then
        echo "soak.sh: $bus did not start; skipped" >&2
        wait "$SERVE_PID" || true
        continue
    fi
    "$BENCH" --address "$address" soak --pid "$pid" --label "$bus" \
        --svg "$OUT/soak-$bus.svg" "$@" | tee "$OUT/soak-$bus.md"
    exec {SERVE[1]}>&-
    wait "$SERVE_PID" || true
done
