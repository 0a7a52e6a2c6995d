#!/usr/bin/env bash
# Sets the machine up and runs every check: formatting, lints, and all tests. Integration tests
# start their own etcd instances, network namespaces and labs, and remove them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The lab tests run calicoctl and calico-node, which must be built first.
cargo build --workspace --bins --quiet
cargo test --workspace
