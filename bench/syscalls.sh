#!/usr/bin/env bash
# Syscalls per forwarded message: attaches `strace -c -f` to each bus's relaying process while
# `sluicebus-bench rtt --count N --warmup 0` runs against it, then divides the bus's syscall
# total by 2 × N (a round trip forwards two messages: the call and its reply).
#
# Buses are started by `sluicebus-bench serve` exactly as `compare` starts them (same config;
# for dbus-broker the traced pid is dbus-broker itself, not dbus-broker-launch). The total also
# includes the two connections' setup (auth, Hello, NameOwnerChanged): a few dozen syscalls,
# well under 1 % at N = 5000.
#
# usage: bench/syscalls.sh [COUNT] ; env BUSES="sluicebus dbus-daemon dbus-broker busd",
# SCENARIO=rtt (any closed-loop round trip scenario: rtt, fdpass, large --size N)
# (a bus that does not start, e.g. busd when it is not installed, gets a "did not start" row)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-5000}
BUSES=${BUSES:-"sluicebus dbus-daemon dbus-broker busd"}
SCENARIO=${SCENARIO:-rtt}
if ! command -v strace >/dev/null; then
    apt-get install -y strace >/dev/null
fi
cargo build --quiet --release --bin sluicebus
cargo build --quiet --release --manifest-path bench/Cargo.toml
BENCH=bench/target/release/sluicebus-bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
msgs=$((2 * COUNT))

echo "| bus | syscalls | forwarded messages | syscalls / message | top syscalls (per message) |"
echo "|---|---|---|---|---|"
for bus in $BUSES; do
    mkfifo "$tmp/ctl"
    "$BENCH" serve --buses "$bus" <"$tmp/ctl" >"$tmp/$bus.addr" &
    serve=$!
    exec 3>"$tmp/ctl"
    for _ in $(seq 150); do
        [ -s "$tmp/$bus.addr" ] && break
        sleep 0.1
    done
    if ! read -r pid addr <"$tmp/$bus.addr"; then
        echo "| $bus | (did not start) | | | |"
        exec 3>&-
        wait "$serve" || true
        rm -f "$tmp/ctl"
        continue
    fi
    strace -c -f -p "$pid" -o "$tmp/$bus.strace" 2>/dev/null &
    st=$!
    sleep 1 # let strace attach to every thread
    # shellcheck disable=SC2086
    "$BENCH" --quiet --address "$addr" --warmup 0 --count "$COUNT" $SCENARIO >/dev/null
    kill -INT "$st"
    wait "$st" || true
    exec 3>&- # EOF on serve's stdin stops the bus
    wait "$serve" || true
    rm -f "$tmp/ctl"
    f="$tmp/$bus.strace"
    total=$(awk '$NF == "total" { print $4 }' "$f")
    # Rows are "% time, seconds, usecs/call, calls, [errors,] syscall".
    top=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 { print $4, $NF }' "$f" |
        sort -nr | head -4 | awk -v m="$msgs" '{ printf "%s%s %.2f", (NR > 1 ? ", " : ""), $2, $1 / m }')
    awk -v b="$bus" -v t="$total" -v m="$msgs" -v top="$top" \
        'BEGIN { printf "| %s | %d | %d | %.2f | %s |\n", b, t, m, t / m, top }'
done
