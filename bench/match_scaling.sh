#!/bin/sh
# Match-rule scaling comparison: builds sluicebus and sluicebus-bench (release), then runs
# `sluicebus-bench compare`, which starts sluicebus, dbus-daemon and (if it will start)
# dbus-broker on private sockets, measures `fanout` for R = 10, 1000, 10000 idle rules and
# K = 1, 10 subscribers, interleaved, and prints Markdown tables of medians on stdout.
# It stops everything it starts. Extra arguments are passed on, e.g. `--rounds 9 --count 5000`.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo build --release --quiet --manifest-path bench/Cargo.toml
exec bench/target/release/sluicebus-bench compare --sluicebus target/release/sluicebus "$@"
