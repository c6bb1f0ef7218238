#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing (apt packages, npm
# packages, tauri-driver, selenium, the default model), builds, checks that the kernels'
# intrinsics were inlined, runs every Rust test, the UI's unit tests, the CPU kernels' tests
# built for AArch64 under QEMU, and the desktop app's end-to-end test under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One build: the test build also produces the binary (with the test profile's features).
cargo test --release --locked --workspace --no-run
scripts/check-intrinsics.sh
"${CARGO_TARGET_DIR:-target}/release/fixpoint" models fetch
cargo test --release --locked --workspace
scripts/test-aarch64.sh
(cd ui && npm test --silent)
FIXPOINT_SCREENSHOT="${CARGO_TARGET_DIR:-target}/e2e-screenshot.png" \
  FIXPOINT_TRAIN_SCREENSHOT="${CARGO_TARGET_DIR:-target}/e2e-training.png" scripts/e2e.sh
