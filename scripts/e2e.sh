#!/usr/bin/env bash
# End-to-end test of the desktop app: the release binary in a real WebKit window under Xvfb,
# driven by tests/e2e/app_e2e.py through tauri-driver (pinned 2.1.0) and WebKitWebDriver, on a
# small random model this script writes, which it also trains from the training tab. Saves
# docs/screenshot.png and docs/training.png. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"

cargo build --release --locked -p fixpoint-desktop
# `cargo test` builds the examples too; build it here only when run on its own.
[[ -x "$TARGET/release/examples/tiny_model" ]] || cargo build --release --locked --example tiny_model
if ! command -v tauri-driver >/dev/null || [[ "$(tauri-driver --version 2>/dev/null)" != *2.1.0* ]]; then
  cargo install tauri-driver --version 2.1.0 --locked
fi
VENV="${FIXPOINT_E2E_VENV:-$TARGET/e2e-venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "selenium==4.51.0"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$TARGET/release/examples/tiny_model" "$WORK/tiny.gguf"
export FIXPOINT_HOME="$WORK/home"
export FIXPOINT_MODEL="$WORK/tiny.gguf"
export FIXPOINT_APP="$(realpath "$TARGET/release/fixpoint-desktop")"
export FIXPOINT_SCREENSHOT="${FIXPOINT_SCREENSHOT:-docs/screenshot.png}"
export FIXPOINT_TRAIN_SCREENSHOT="${FIXPOINT_TRAIN_SCREENSHOT:-docs/training.png}"
export PYTHON="$VENV/bin/python"
exec xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
  tauri-driver --port 4444 >"$FIXPOINT_HOME.driver.log" 2>&1 &
  driver=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/4444) 2>/dev/null && break; sleep 0.2; done
  "$PYTHON" tests/e2e/app_e2e.py
  rc=$?
  kill $driver 2>/dev/null || true
  wait $driver 2>/dev/null || true
  [ $rc -eq 0 ] || cat "$FIXPOINT_HOME.driver.log" >&2
  exit $rc'
