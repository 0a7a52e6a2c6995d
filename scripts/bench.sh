#!/usr/bin/env bash
# Runs the benchmarks (dataplane throughput, programming latency, route convergence) on a lab
# of their own and prints each figure with its same-run baseline. Takes a few minutes. Figures go to
# docs/benchmarks.md by hand, with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --quiet --workspace --bins
bin=$PWD/target/release
"$bin/calico-lab" down --name bench >/dev/null 2>&1 || true
trap '"$bin/calico-lab" down --name bench >/dev/null 2>&1 || true' EXIT
# Two hosts: the convergence benchmark adds containers on calico-01 and pings from calico-02.
"$bin/calico-lab" up --name bench --hosts 2
"$bin/calico-lab" exec calico-01 --name bench -- "$bin/calico-bench" "${1:-all}" --lab bench "${@:2}"
