#!/usr/bin/env bash
# The main job: sets the machine up, builds, and runs seeds 001 and 000 as written in a
# calico-lab: two hosts, each with its own Docker engine and calico-node (policy in the kernel,
# BGP with BIRD), five busybox containers wired with calicoctl (001) or started through the
# Docker API proxy with CALICO_IP (000), and the seeds' pings; all inside namespaces the lab
# makes and removes (the machine's own network and Docker paths are not touched).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --quiet --workspace --bins
lab=target/release/calico-lab

# A lab of its own, removed at the end whatever happens.
"$lab" down --name demo >/dev/null 2>&1 || true
trap '"$lab" down --name demo >/dev/null 2>&1 || true' EXIT
"$lab" demo --name demo
"$lab" down --name demo >/dev/null
"$lab" demo --seed 000 --name demo
echo "(scripts/demo.sh removes its lab now; run 'calico-lab demo' yourself to keep one.)"
