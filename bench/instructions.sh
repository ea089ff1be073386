#!/bin/sh
# Instructions per forwarded message, by callgrind: the bus runs under valgrind for two rtt
# runs of different lengths (each on a fresh bus), and the difference of their totals divided
# by the extra forwarded messages (2 per round trip: call and reply) cancels start-up and
# shutdown. Instruction counts do not depend on machine noise.
#
#   bench/instructions.sh [BUS_BINARY] [SHORT] [LONG]
#   e.g. bench/instructions.sh target/release/sluicebus 2000 12000
#
# SCENARIO (default "rtt") is the round trip to count, e.g. one path of `filtered`:
#   SCENARIO="filtered --only filtered --subscribers 0 --rounds 1" bench/instructions.sh
# (its set-up, such as AddServer with 1000 rules, is the same in both runs and cancels out).
set -eu
bin=${1:-target/release/sluicebus}
short=${2:-2000}
long=${3:-12000}
here=$(cd "$(dirname "$0")" && pwd)
bench=$here/target/release/sluicebus-bench
[ -x "$bench" ] || cargo build --release --manifest-path "$here/Cargo.toml" >&2
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT INT TERM
total() { # COUNT -> total instructions of the bus process
    sock=$dir/bus-$1
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg-$1" "$bin" --session --nofork \
        --address="unix:path=$sock" >/dev/null 2>"$dir/vg-$1.log" &
    vpid=$!
    i=0
    while [ ! -S "$sock" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    # shellcheck disable=SC2086 # SCENARIO is a scenario and its options
    "$bench" --quiet --json --address "unix:path=$sock" --count "$1" --warmup 100 ${SCENARIO:-rtt} >/dev/null
    kill -TERM $vpid
    wait $vpid || true
    sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dir/cg-$1" | head -1
}
a=$(total "$short")
b=$(total "$long")
what=${SCENARIO:-rtt}
echo "$what: $a instructions for $short round trips, $b for $long"
echo "$what: $(( (b - a) / ((long - short) * 2) )) instructions per forwarded message"
