#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, builds, fetches the
# default model so the tests on the real model run too, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One build: the test build also produces the binary (with the test profile's features).
cargo test --release --locked --workspace --no-run
"${CARGO_TARGET_DIR:-target}/release/fixpoint" models fetch
cargo test --release --locked --workspace
