#!/usr/bin/env bash
# The engine's kernel tests built for AArch64 and run under QEMU, so that the NEON kernels
# (src/kernels/matmul.rs, `neon`) are checked on an x86-64 machine. Uses Debian's Rust
# (rustc-web, which ships the AArch64 standard library as a multiarch package; rustup's
# targets cannot be fetched here), the GNU cross linker and qemu-user-static, all from apt.
# QEMU's default CPU has the dot-product extension, so the NEON kernel is the one tested.
# Safe to run again: it only installs what is missing. Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(uname -m) == aarch64 || $(uname -m) == arm64 ]]; then
  echo "test-aarch64: this machine is AArch64, so cargo test already ran the NEON kernels" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "test-aarch64: SKIPPED, the cross toolchain comes from Debian's apt (not found here)" >&2
  exit 0
fi
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
fi
packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 libc6:arm64 gcc-aarch64-linux-gnu
  g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's cargo and rustc by path: rustup's, first on PATH, have no AArch64 standard library.
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/aarch64-cross"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# `-L /`: the multiarch libc6:arm64 under /lib. With the cross libc (-L /usr/aarch64-linux-gnu)
# every thread spawn hung under QEMU 7.2.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu max -L /"
# gemm (candle's) has half-precision `asm!` that assembles only with fp16 enabled when its
# functions are not inlined, as in this debug build; every Apple and recent Arm core has it.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+fp16"
exec /usr/bin/cargo test --locked --target aarch64-unknown-linux-gnu -p fixpoint --lib -- \
  kernels:: model::cpu:: "$@"
