#!/usr/bin/env bash
# One command from a fresh clone to a running Fixpoint: installs what is missing (apt packages,
# npm packages), builds the desktop app and the CLI, fetches the default model
# (SmolLM2-135M-Instruct) and starts the app. `scripts/run.sh chat [options]` starts the
# terminal chat instead (no display needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p fixpoint -p fixpoint-desktop
target="${CARGO_TARGET_DIR:-target}/release"
"$target/fixpoint" models fetch
if [[ "${1:-}" == "chat" ]]; then
  shift
  exec "$target/fixpoint" chat --stats "$@"
fi
if [[ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]]; then
  echo "no display: run the app on a desktop session, or use scripts/run.sh chat" >&2
  exit 1
fi
exec "$target/fixpoint-desktop"
