#!/usr/bin/env bash
# Runs the benchmarks (dataplane throughput, programming latency, route convergence, IPAM, and
# Docker: `docker run` until a ping is answered) on labs of their own and prints each figure
# with its same-run baseline. Takes a few minutes. Figures go to docs/benchmarks.md by hand,
# with the date and machine. `scripts/bench.sh docker` runs only the Docker benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --quiet --workspace --bins
bin=$PWD/target/release
what="${1:-all}"
cleanup() {
  # BENCH_LOGS=DIR keeps the labs' logs (agents, etcd, BIRD), which go with the labs.
  if [ -n "${BENCH_LOGS:-}" ]; then
    for lab in bench bench-docker; do
      [ -d "/var/run/calico-lab/$lab/logs" ] && mkdir -p "$BENCH_LOGS/$lab" &&
        cp -r "/var/run/calico-lab/$lab/logs/." "$BENCH_LOGS/$lab/" || true
    done
  fi
  "$bin/calico-lab" down --name bench >/dev/null 2>&1 || true
  "$bin/calico-lab" down --name bench-docker >/dev/null 2>&1 || true
}
cleanup
trap cleanup EXIT
if [ "$what" != docker ]; then
  # Two hosts: the convergence benchmark adds containers on calico-01 and pings from calico-02.
  "$bin/calico-lab" up --name bench --hosts 2
  "$bin/calico-lab" exec calico-01 --name bench -- "$bin/calico-bench" "$what" --lab bench "${@:2}"
fi
if [ "$what" = all ] || [ "$what" = docker ]; then
  # A lab of its own, with a Docker engine, and not populated: the Docker path alone.
  "$bin/calico-lab" up --name bench-docker --hosts 1 --docker
  "$bin/calico-lab" exec calico-01 --name bench-docker -- "$bin/calico-bench" docker --lab bench-docker "${@:2}"
fi
