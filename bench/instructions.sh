#!/bin/sh
# Instructions per forwarded message, by callgrind. For each scenario the bus runs under
# valgrind twice, each time freshly started, for runs of different lengths (SHORT and LONG
# iterations, after the same 100-iteration warm-up); the difference of the two totals divided
# by the extra forwarded messages cancels start-up, set-up and shutdown. Instruction counts
# do not depend on machine noise, so they can gate CI (see --check).
#
#   bench/instructions.sh [--json] [--check BUDGETS] [--scenarios A,B] [BUS_BINARY] [SHORT LONG]
#   e.g. bench/instructions.sh                         # all four, default run lengths
#        bench/instructions.sh target/release/sluicebus 2000 12000
#        bench/instructions.sh --check bench/instruction_budgets.txt   # the tools/test gate
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
while [ $# -gt 0 ]; do
    case $1 in
        --json) json=1; shift ;;
        --check) check=${2:?--check needs a file}; shift 2 ;;
        --scenarios) only=${2:?--scenarios needs a list}; shift 2 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
bin=${1:-target/release/sluicebus}
short_arg=${2:-}
long_arg=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
bench=$here/target/release/sluicebus-bench
[ -x "$bench" ] || cargo build --release --manifest-path "$here/Cargo.toml" >&2
[ -x "$bin" ] || { echo "instructions.sh: no bus binary at $bin" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT INT TERM

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

total() { # NAME COUNT -> total instructions of the bus process over one run
    sock=$dir/bus-$1-$2
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg-$1-$2" "$bin" --session --nofork \
        --address="unix:path=$sock" >/dev/null 2>"$dir/vg-$1-$2.log" &
    vpid=$!
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
    n=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dir/cg-$1-$2" | head -1)
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
        printf '%s\n  "%s": {"instructions_per_forwarded_message": %s, "scenario": "%s", "forwarded_per_iteration": %s, "short": %s, "long": %s, "total_short": %s, "total_long": %s}' \
            "$sep" "$name" "$result" "$args" "$per" "$short" "$long" "$a" "$b"
        sep=,
    else
        echo "$name $result instructions per forwarded message ($args: $detail)"
    fi
done
[ $json = 0 ] || printf '\n}\n'
