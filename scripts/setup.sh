#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) to build, test and run the project.
# Idempotent: packages already present are left alone, so a second run is quick.
set -euo pipefail

# Debian packages the project uses at build or run time:
#   etcd-server + etcd-client  the datastore (tests and the demo start their own instance)
#   protobuf-compiler, libprotobuf-dev  the etcd client crate generates its gRPC code with
#                              protoc, which needs the well-known .proto files
#   build-essential, pkg-config  C toolchain for -sys crates
#   openssl                    makes throwaway certificates for the etcd TLS tests
#   curl                       the scripts ask etcd whether it is healthy
#   nftables                   the agent programs policy with nft (tests run it in namespaces)
#   iptables                   the agent keeps one rule in FORWARD, where Docker sets DROP
#   iproute2, iputils-ping, netcat-openbsd  namespaces, links and reachability checks
#   iperf3                     the throughput benchmark
#   bird2                      BGP between hosts (calico-node runs one BIRD per host)
#   frr                        the lab's external router (`calico-lab router up`), a BGP
#                              implementation that is not ours, for peering tests
#   docker.io, containerd, runc  Docker engines in lab hosts (`calico-lab up --docker`); the
#                              lab starts each engine itself, inside its host's namespaces
#   busybox-static             the lab's `busybox` image (no registry is reachable)
#   util-linux                 unshare and nsenter, for the engines' mount namespaces
#   containernetworking-plugins  the CNI reference (ptp + host-local) the container benchmark
#                              is measured against
PACKAGES=(etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl curl build-essential pkg-config
  iproute2 procps nftables iptables iputils-ping netcat-openbsd iperf3 bird2 frr
  docker.io containerd runc busybox-static util-linux containernetworking-plugins)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${missing[*]}; run this script as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' own services (etcd, docker, containerd, frr) must not start on the machine's
  # default ports and paths: the project starts etcd, dockerd and FRR itself wherever it needs
  # them, inside namespaces of its own. policy-rc.d keeps every service from starting.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -x "$d/cargo" ] && export PATH="$d:$PATH"; done
fi
command -v cargo >/dev/null || { echo "setup: no Rust toolchain (cargo) found; install Rust 1.85 or newer with rustup" >&2; exit 1; }
# etcd lives in /usr/bin on Debian; say so early rather than failing inside a test.
command -v etcd >/dev/null || { echo "setup: etcd not on PATH after install" >&2; exit 1; }
echo "setup: ok ($(cargo --version), $(etcd --version | head -1))"
