#!/bin/sh
# Instructions per forwarded message, by callgrind. For each scenario the bus runs under
# valgrind twice, each time freshly started, for runs of different lengths (SHORT and LONG
# iterations, after the same 100-iteration warm-up); the difference of the two totals divided
# by the extra forwarded messages cancels start-up, set-up and shutdown. Instruction counts
# do not depend on machine noise, so they can gate CI (see --check).
#
#   bench/instructions.sh [--json] [--check BUDGETS] [--scenarios A,B] [--bus NAME]
#                         [BUS_BINARY] [SHORT LONG]
#   e.g. bench/instructions.sh                         # all four, default run lengths
#        bench/instructions.sh target/release/sluicebus 2000 12000
#        bench/instructions.sh --check bench/instruction_budgets.txt   # the tools/test gate
#        bench/instructions.sh --bus dbus-broker       # the same counts for a reference bus
#
# --bus NAME: which bus to count (the same method and scenarios for each):
#   sluicebus    (default) BUS_BINARY --session --nofork --address=...; BUS_BINARY defaults
#                to target/release/sluicebus
#   dbus-daemon  the same command line; BUS_BINARY defaults to /usr/bin/dbus-daemon
#   dbus-broker  started as bench/compare starts it: systemd-socket-activate listening on the
#                socket, then dbus-broker-launch --scope user --config-file
#                /usr/share/dbus-1/session.conf, which forks and execs dbus-broker. valgrind
#                follows the exec (--trace-children=yes) and only the dbus-broker process's
#                count is used (not the launcher's). BUS_BINARY is the launcher (default:
#                dbus-broker-launch on PATH). Without a journal at
#                /run/systemd/journal/socket (the launcher fails without one) a stand-in that
#                discards what it is sent is bound there for the run.
#   A reference bus's count includes its shared libraries (libc, libdbus, ...), as
#   sluicebus's includes libc: all user-space instructions of the bus process.
#
# Scenarios (sluicebus-bench's; "forwarded message" = one message the bus received and sent
# on; a broadcast counts once per delivered copy):
#   rtt       `rtt`: method call round trip by unique name; 2 per iteration (call, reply)
#   fanout10  `fanout --subscribers 10`: one signal, ten subscribers matching it;
#             10 per iteration (one per copy delivered; × 10 for the cost per signal)
#   large64k  `large --size 65536`: rtt with a 64 KiB `ay` body; 2 per iteration
#   fdpass    `fdpass`: rtt of a call carrying one unix fd, replied with it; 2 per iteration
#
# Output: one line per scenario, "NAME INSTRUCTIONS ..." (the first two fields are
# machine-readable); --json prints one JSON object instead, NAME -> details.
#
# --check FILE: measure the scenarios listed in FILE ("NAME BUDGET" lines, # comments) and
# fail (exit 1) if one exceeds its budget. The last line is "instructions: N passed, M failed".
#
# SCENARIO="ARGS" (legacy) counts one other round trip instead, PER_ITERATION (default 2)
# forwarded messages per iteration, e.g. one path of `filtered`:
#   SCENARIO="filtered --only filtered --subscribers 0 --rounds 1" bench/instructions.sh
# (its set-up, such as AddServer with 1000 rules, is the same in both runs and cancels out).
set -eu
json=0
check=
only=
bus=sluicebus
while [ $# -gt 0 ]; do
    case $1 in
        --json) json=1; shift ;;
        --check) check=${2:?--check needs a file}; shift 2 ;;
        --scenarios) only=${2:?--scenarios needs a list}; shift 2 ;;
        --bus) bus=${2:?--bus needs a name}; shift 2 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
case $bus in
    sluicebus) bin=${1:-target/release/sluicebus} ;;
    dbus-daemon) bin=${1:-/usr/bin/dbus-daemon} ;;
    dbus-broker) bin=${1:-$(command -v dbus-broker-launch || echo dbus-broker-launch)}
                 command -v systemd-socket-activate >/dev/null || {
                     echo "instructions.sh: dbus-broker needs systemd-socket-activate" >&2; exit 1; } ;;
    *) echo "instructions.sh: unknown bus $bus (sluicebus, dbus-daemon, dbus-broker)" >&2; exit 2 ;;
esac
short_arg=${2:-}
long_arg=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
bench=$here/target/release/sluicebus-bench
[ -x "$bench" ] || cargo build --release --manifest-path "$here/Cargo.toml" >&2
[ -x "$bin" ] || { echo "instructions.sh: no bus binary at $bin" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 1; }
dir=$(mktemp -d)
journal=
trap 'rm -rf "$dir"; [ -z "$journal" ] || kill "$journal" 2>/dev/null' EXIT INT TERM
journal_socket=/run/systemd/journal/socket
if [ "$bus" = dbus-broker ] && [ ! -S "$journal_socket" ]; then
    # dbus-broker-launch logs to the journal and exits when it cannot connect to it; this
    # stand-in (as bench/compare's) reads and discards, and removes its socket when it ends.
    mkdir -p "$(dirname "$journal_socket")"
    python3 -c '
import os, select, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
try:
    while os.getppid() != 1:
        if select.select([s], [], [], 0.5)[0]:
            s.recv(1 << 16)
finally:
    os.unlink(path)
' "$journal_socket" &
    journal=$!
    i=0
    while [ ! -S "$journal_socket" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi

# define NAME: sets args (sluicebus-bench scenario and options), per (forwarded messages per
# iteration) and the default run lengths (short, long; all four take about 15 s on a 2-vCPU
# VM, and the difference is 5000-20000 forwarded messages).
define() {
    case $1 in
        rtt) args=rtt per=2 short=200 long=3200 ;;
        fanout10) args="fanout --subscribers 10" per=10 short=200 long=2200 ;;
        large64k) args="large --size 65536" per=2 short=100 long=1100 ;;
        fdpass) args=fdpass per=2 short=200 long=3200 ;;
        *) echo "instructions.sh: unknown scenario $1 (rtt, fanout10, large64k, fdpass)" >&2
           return 2 ;;
    esac
    short=${short_arg:-$short}
    long=${long_arg:-$long}
}

# start_bus NAME COUNT: starts the bus under callgrind on $sock, its pid in $vpid.
start_bus() {
    if [ "$bus" = dbus-broker ]; then
        run=$dir/run-$1-$2
        mkdir -p "$run"
        XDG_RUNTIME_DIR=$run DBUS_SESSION_BUS_ADDRESS="unix:path=$sock" \
            systemd-socket-activate -l "$sock" \
            --setenv=DBUS_SESSION_BUS_ADDRESS="unix:path=$sock" --setenv=XDG_RUNTIME_DIR="$run" \
            valgrind --tool=callgrind --trace-children=yes \
            --callgrind-out-file="$dir/cg-$1-$2.%p" "$bin" --scope user \
            --config-file /usr/share/dbus-1/session.conf >/dev/null 2>"$dir/vg-$1-$2.log" &
    else
        valgrind --tool=callgrind --callgrind-out-file="$dir/cg-$1-$2" "$bin" --session --nofork \
            --address="unix:path=$sock" >/dev/null 2>"$dir/vg-$1-$2.log" &
    fi
    vpid=$!
}

# bus_count NAME COUNT: the bus process's total from its callgrind file (for dbus-broker the
# file whose command is dbus-broker itself, written when it exits after its launcher).
bus_count() {
    if [ "$bus" != dbus-broker ]; then
        sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dir/cg-$1-$2" 2>/dev/null | head -1
        return
    fi
    i=0
    while [ $i -lt 300 ]; do
        for f in "$dir/cg-$1-$2".*; do
            [ -f "$f" ] || continue
            case $(sed -n 's/^cmd: *\([^ ]*\).*/\1/p' "$f" | head -1) in
                dbus-broker|*/dbus-broker) ;;
                *) continue ;;
            esac
            n=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$f" | head -1)
            [ -z "$n" ] || { echo "$n"; return; }
        done
        sleep 0.1
        i=$((i + 1))
    done
}

total() { # NAME COUNT -> total instructions of the bus process over one run
    sock=$dir/bus-$1-$2
    start_bus "$1" "$2"
    i=0
    while [ ! -S "$sock" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    # shellcheck disable=SC2086 # $args is a scenario and its options
    if ! "$bench" --quiet --json --address "unix:path=$sock" --count "$2" --warmup 100 \
        $args >/dev/null 2>"$dir/bench-$1-$2.log"; then
        echo "instructions.sh: $1: sluicebus-bench $args --count $2 failed:" >&2
        cat "$dir/bench-$1-$2.log" >&2
        kill -TERM $vpid 2>/dev/null || true
        wait $vpid || true
        return 1
    fi
    kill -TERM $vpid
    wait $vpid || true
    n=$(bus_count "$1" "$2")
    [ -n "$n" ] || { echo "instructions.sh: $1: no callgrind summary" >&2; cat "$dir/vg-$1-$2.log" >&2; return 1; }
    echo "$n"
}

# measure NAME: sets result (instructions per forwarded message) and detail.
measure() {
    define "$1" || return 1
    a=$(total "$1" "$short") || return 1
    b=$(total "$1" "$long") || return 1
    msgs=$(( (long - short) * per ))
    result=$(( (b - a + msgs / 2) / msgs ))
    detail="$a for $short iterations, $b for $long, $per forwarded per iteration"
    [ "$bus" = sluicebus ] || detail="$bus: $detail"
}

if [ -n "${SCENARIO:-}" ]; then
    name=$(echo "$SCENARIO" | tr ' ' '_')
    args=$SCENARIO per=${PER_ITERATION:-2} short=${short_arg:-2000} long=${long_arg:-12000}
    define() { :; }
    measure "$name"
    echo "$SCENARIO: $result instructions per forwarded message ($detail)"
    exit 0
fi

if [ -n "$check" ]; then
    [ -r "$check" ] || { echo "instructions.sh: cannot read $check" >&2; exit 1; }
    passed=0 failed=0
    # shellcheck disable=SC2094 # reading the file while echoing is fine
    while read -r name budget _; do
        case $name in ''|'#'*) continue ;; esac
        case $budget in
            ''|*[!0-9]*) echo "FAIL $name: budget is not a number: '$budget'"
                         failed=$((failed + 1)); continue ;;
        esac
        if ! measure "$name" </dev/null; then
            echo "FAIL $name: not measured"
            failed=$((failed + 1))
        elif [ "$result" -gt "$budget" ]; then
            echo "FAIL $name: $result instructions per forwarded message > budget $budget" \
                "(+$(( (result - budget) * 100 / budget )) %; $detail)"
            failed=$((failed + 1))
        else
            echo "ok   $name: $result instructions per forwarded message <= budget $budget" \
                "($(( result * 100 / budget )) % of it)"
            # Far below: the budget no longer guards anything, say so (not a failure).
            if [ $(( result * 100 )) -lt $(( budget * 80 )) ]; then
                echo "     $name is more than 20 % under its budget: lower it (see $check)"
            fi
            passed=$((passed + 1))
        fi
    done <"$check"
    echo "instructions: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
fi

list=${only:-rtt,fanout10,large64k,fdpass}
sep='{'
for name in $(echo "$list" | tr ',' ' '); do
    measure "$name"
    if [ $json = 1 ]; then
        printf '%s\n  "%s": {"bus": "%s", "instructions_per_forwarded_message": %s, "scenario": "%s", "forwarded_per_iteration": %s, "short": %s, "long": %s, "total_short": %s, "total_long": %s}' \
            "$sep" "$name" "$bus" "$result" "$args" "$per" "$short" "$long" "$a" "$b"
        sep=,
    else
        echo "$name $result instructions per forwarded message ($args: $detail)"
    fi
done
[ $json = 0 ] || printf '\n}\n'
