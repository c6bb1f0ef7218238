#!/usr/bin/env bash
# Installs the system packages that building, running and testing Fixpoint needs
# (Debian/Ubuntu): a C toolchain, WebKitGTK and friends for the desktop app, Xvfb and
# WebKitWebDriver for its end-to-end test, Node.js for the UI, pip/venv for the default model
# and the test driver. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential pkg-config curl file python3-pip python3-venv
  libwebkit2gtk-4.1-dev libxdo-dev libssl-dev libayatana-appindicator3-dev librsvg2-dev
  xvfb xauth webkit2gtk-driver)
command -v node >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "installing: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "please install: ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "Fixpoint needs a Rust toolchain (1.85 or newer): see https://rustup.rs" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
  echo "the UI build needs Node.js 20 or newer (found $(node --version))" >&2
  exit 1
fi
# The UI: the app embeds ui/dist, so it is built before the Rust workspace.
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
