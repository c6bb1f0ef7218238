#!/usr/bin/env bash
# Fails if any of our functions in a release binary calls a SIMD intrinsic instead of inlining
# it. An intrinsic inlines only into code compiled with its target feature; a closure (or a
# trait's default method) inside a `#[target_feature]` kernel is compiled as a function of its
# own without those features, and where the compiler chooses not to inline it, each intrinsic
# in it becomes a call: the kernel still gives the right numbers, only several times slower.
# That slowed the AVX2 LM head tenfold for a round before anyone noticed.
#
#   scripts/check-intrinsics.sh [BINARY]      (default: the release `fixpoint`)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/fixpoint}
[ -x "$bin" ] || { echo "check-intrinsics: no binary at $bin (build it first)" >&2; exit 2; }
command -v objdump > /dev/null || { echo "check-intrinsics: objdump not found (binutils)" >&2; exit 2; }
objdump -d --no-show-raw-insn "$bin" | awk '
  /^[0-9a-f]+ <.*>:$/ { fn = $2; next }
  fn ~ /fixpoint/ && /call/ && /core_arch/ { calls[fn " calls " $NF] = 1; bad = 1 }
  END {
    for (c in calls) print "  " c
    if (bad) { print "check-intrinsics: the calls above should have been inlined (see this script)" > "/dev/stderr"; exit 1 }
  }'
echo "check-intrinsics: every intrinsic in our code is inlined ($bin)"
