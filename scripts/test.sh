#!/usr/bin/env bash
# Sets the machine up and runs every check: formatting, lints, and all tests (unit tests and
# integration tests against real etcd instances the tests start and stop themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
