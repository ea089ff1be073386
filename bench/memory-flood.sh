#!/usr/bin/env bash
# The bus's memory through a flood (issue 11): starts a private sluicebus, runs
# `sluicebus-bench memory-flood` against it ROUNDS times (default 3), each in a fresh bus, and
# prints the three VmRSS figures of each round.
#   bench/memory-flood.sh [SLUICEBUS] [ROUNDS] [-- extra memory-flood options]
# e.g. bench/memory-flood.sh target/release/sluicebus 3 -- --then disconnect
# CONFIG=FILE: the bus's configuration (default: the session bus's, max_outgoing_bytes 1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
BUS=${1:-target/release/sluicebus}
ROUNDS=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
[[ ${1:-} == -- ]] && shift
BENCH=bench/target/release/sluicebus-bench
[[ -x $BENCH ]] || (cd bench && cargo build --release -q)
for r in $(seq "$ROUNDS"); do
    coproc SERVE { "$BENCH" --quiet serve --buses sluicebus --sluicebus "$BUS" \
                       ${CONFIG:+--config "$CONFIG"}; }
    read -r pid address <&"${SERVE[0]}"
    "$BENCH" --quiet --address "$address" --pid "$pid" memory-flood "$@"
    exec {SERVE[1]}>&-
    wait "$SERVE_PID" || true
done
