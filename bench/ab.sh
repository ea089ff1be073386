#!/bin/sh
# A/B check of two sluicebus builds: starts both on private sockets, then runs the same
# sluicebus-bench scenarios against each, interleaved round by round (which build runs first
# alternates) so machine drift hits both alike, and prints a Markdown table of medians with
# new/old ratios. Use an even number of rounds.
#
#   bench/ab.sh OLD_BIN NEW_BIN [ROUNDS] [SCENARIO ...]
#   e.g. bench/ab.sh /tmp/old/sluicebus target/release/sluicebus 5 "rtt --count 5000"
#
# Scenarios default to rtt, pipelined (1 and 4 pairs) and large 1 MiB.
# PIN=CPU runs both buses and the bench's threads on that one CPU (taskset, --pin).
set -eu
old=$1 new=$2 rounds=${3:-5}
shift 2; [ $# -gt 0 ] && shift
[ $# -eq 0 ] && set -- "rtt --count 5000" "pipelined --pairs 1 --count 50000" \
    "pipelined --pairs 4 --count 50000" "large --size 1048576 --count 300"
here=$(cd "$(dirname "$0")" && pwd)
bench=$here/target/release/sluicebus-bench
[ -x "$bench" ] || cargo build --release --manifest-path "$here/Cargo.toml" >&2
conf=/usr/share/dbus-1/session.conf
[ -f "$conf" ] || conf=""
dir=$(mktemp -d)
pids=""
trap 'kill $pids 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
for side in old new; do
    eval bin=\$$side
    ${PIN:+taskset -c "$PIN"} "$bin" ${conf:+--config-file=$conf} --nofork --address=unix:path=$dir/$side \
        >/dev/null 2>"$dir/$side.log" &
    pids="$pids $!"
done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -S "$dir/old" ] && [ -S "$dir/new" ] && break; sleep 0.2; done
r=1
while [ "$r" -le "$rounds" ]; do
    # Alternate which build goes first: the second run of a pair is systematically slower
    # on this kind of machine (an A/A run of one binary against itself showed 1.2x in rtt
    # p50 with a fixed order).
    if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
    for sc in "$@"; do
        for side in $order; do
            # shellcheck disable=SC2086
            json=$("$bench" ${PIN:+--pin "$PIN"} --quiet --json --address "unix:path=$dir/$side" $sc)
            printf '%s\t%s\t%s\n' "$side" "$sc" "$json" >>"$dir/results"
        done
    done
    echo "round $r of $rounds done" >&2
    r=$((r + 1))
done
# Medians per scenario: p50 latency, messages/s, bytes/s; new/old ratios.
python3 - "$dir/results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, sc, js = line.rstrip("\n").split("\t", 2)
    runs.setdefault(sc, {}).setdefault(side, []).append(json.loads(js))
print("| scenario | metric | old | new | new/old |")
print("|---|---|---|---|---|")
for sc, sides in runs.items():
    for key, label in (("p50", "p50 [us]"), ("p99", "p99 [us]"),
                       ("messages_per_sec", "msg/s"), ("bytes_per_sec", "bytes/s")):
        o = statistics.median(r[key] for r in sides["old"])
        n = statistics.median(r[key] for r in sides["new"])
        if o:
            print(f"| {sc} | {label} | {o:.6g} | {n:.6g} | {n / o:.3f} |")
PY
