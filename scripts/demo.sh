#!/usr/bin/env bash
# The main job: sets the machine up, builds, and runs a tour of calicoctl against an etcd of
# its own (on free loopback ports, removed afterwards). The commands are the seeds' own.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bash scripts/setup.sh
cargo build --release --quiet --bin calicoctl
export PATH="$PWD/target/release:$PATH"

workdir=$(mktemp -d /tmp/calico-demo.XXXXXX)
cleanup() {
  set +e # clean up everything even if a step fails (etcd exits non-zero on SIGTERM)
  if [ -n "${ETCD_PID:-}" ]; then
    kill "$ETCD_PID" 2>/dev/null
    wait "$ETCD_PID" 2>/dev/null
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT
start_etcd "$workdir"
echo "etcd is at $ETCD_ENDPOINTS (data in $workdir)"

step() { printf '\n## %s\n' "$*"; }
run() {
  printf '$ %s\n' "$*"
  "$@"
}

step "Profiles, as in seeds 000 and 001"
run calicoctl profile add PROF_A_C_E
run calicoctl profile add PROF_B
run calicoctl profile add PROF_D
run calicoctl profile show
run calicoctl profile PROF_A_C_E rule show

step "An orchestrator writes a workload endpoint straight into etcd (seed 002's way)"
ep=0a1b2c3d4e5f60718293a4b5c6d7e8f9
key="/calico/v1/host/calico-01/workload/docker/workload-A/endpoint/$ep"
value='{"state":"active","name":"cali0a1b2c3d4e5","mac":"ee:ee:ee:ee:ee:ee","profile_ids":[],"ipv4_nets":["192.168.0.1/32"],"ipv6_nets":[]}'
printf '$ etcdctl put %s ...\n' "$key"
ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" put "$key" "$value" >/dev/null
run calicoctl endpoint show --detailed
run calicoctl endpoint "$ep" profile append PROF_A_C_E
run calicoctl endpoint "$ep" profile show
run calicoctl profile show --detailed

step "Rules of the stars demo (seed 004)"
for network in management-ui client frontend backend; do calicoctl profile add "$network" >/dev/null; done
run calicoctl profile management-ui rule show
run calicoctl profile management-ui rule remove inbound allow from tag management-ui
run calicoctl profile management-ui rule add inbound allow tcp to ports 9001
run calicoctl profile client rule add inbound allow tcp from tag management-ui to ports 9000
run calicoctl profile frontend rule add inbound allow tcp from tag management-ui to ports 9000
run calicoctl profile frontend rule add inbound allow tcp from tag client to port 9001
run calicoctl profile frontend rule show
run calicoctl profile frontend rule json

step "Pools, BGP and agent settings"
run calicoctl pool add 192.168.0.0/16
run calicoctl pool add fd80:24e2:f998:72d6::/64
run calicoctl pool range add 10.10.0.0 10.10.1.127 --nat-outgoing
run calicoctl pool show
run calicoctl bgp default-node-as 64512
run calicoctl bgp peer add 192.0.2.10 as 64555
run calicoctl bgp peer show
run calicoctl bgp node-mesh
run calicoctl config felix loglevel debug
run calicoctl config felix loglevel

step "Bad input is refused with a reason, and nothing is written"
printf '$ calicoctl pool add 192.168.3.0/24\n'
calicoctl pool add 192.168.3.0/24 || echo "(exit $?)"
printf '$ calicoctl profile frontend rule add inbound allow icmp to ports 80\n'
calicoctl profile frontend rule add inbound allow icmp to ports 80 || echo "(exit $?)"

echo
echo "Tour complete. etcd is stopped and $workdir removed on exit."
