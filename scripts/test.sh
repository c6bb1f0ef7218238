#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, builds, fetches the
# default model so the tests on the real model run too, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin="${CARGO_TARGET_DIR:-target}/release/fixpoint"
"$bin" models fetch
cargo test --release --locked --workspace
