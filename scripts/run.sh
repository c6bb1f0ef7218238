#!/usr/bin/env bash
# One command from a fresh clone to a running Fixpoint: installs what is missing, builds,
# fetches the default model (SmolLM2-135M-Instruct) and starts a chat in the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin fixpoint
bin="${CARGO_TARGET_DIR:-target}/release/fixpoint"
"$bin" models fetch
exec "$bin" chat --stats "$@"
