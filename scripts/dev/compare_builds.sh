#!/usr/bin/env bash
# Forward cost of two commits' engines in one process, forwards alternating: the working tree
# against an older commit. On a shared machine, runs of two binaries one after the other
# scatter by 15% either way; alternating forwards in one process shares the machine's state
# between both. The old commit is checked out in a worktree, its crate renamed `fixpoint_old`,
# and both are linked into a scratch binary that loads the model twice.
#
#   scripts/dev/compare_builds.sh OLD_COMMIT [MODEL] [REPETITIONS]
#
# Prints median ms per forward of m = 1, 2, 4, 8, 16 tokens on a 256-token cache, logits for
# every position, for both, new/old of the medians, and the median of each repetition's new/old
# ("paired"). Which engine goes first alternates per repetition.
# Needs a commit whose engine API matches this one's (`Engine::load`, `model().forward`).
set -euo pipefail
old=${1:?usage: compare_builds.sh OLD_COMMIT [MODEL] [REPETITIONS]}
root=$(cd "$(dirname "$0")/../.." && pwd)
model=${2:-$("$root/target/release/fixpoint" models path 2>/dev/null || true)}
reps=${3:-30}
[ -n "$model" ] || { echo "give a model path (or build target/release/fixpoint)" >&2; exit 1; }
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add -q "$work/old" "$old"
sed -i '0,/^name = "fixpoint"/s//name = "fixpoint_old"/' "$work/old/Cargo.toml"
mkdir -p "$work/ab/src"
cp "$root/Cargo.lock" "$work/ab/"
cat > "$work/ab/Cargo.toml" <<EOF
[package]
name = "compare-builds"
version = "0.0.0"
edition = "2021"

[dependencies]
fixpoint = { path = "$root" }
fixpoint_old = { path = "$work/old" }
anyhow = "1"

[workspace]

[profile.release]
debug = "line-tables-only"
codegen-units = 16
EOF
cat > "$work/ab/src/main.rs" <<'EOF'
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let reps: usize = args[2].parse()?;
    let sizes = [1usize, 2, 3, 4, 8, 16];
    let new = fixpoint::Engine::load(path, &fixpoint::LoadOptions::default())?;
    let old = fixpoint_old::Engine::load(path, &fixpoint_old::LoadOptions::default())?;
    let vocab = new.model().config().vocab_size as u32;
    let ids: Vec<u32> = (0..400).map(|i| (i as u32 * 7919 + 13) % vocab).collect();
    let (mut new_cache, mut old_cache) = (new.model().new_cache(), old.model().new_cache());
    new.model().forward(&ids[..256], &mut new_cache, fixpoint::model::Logits::Last)?;
    old.model().forward(&ids[..256], &mut old_cache, fixpoint_old::model::Logits::Last)?;
    let mut times = vec![vec![Vec::new(); sizes.len()]; 2];
    for rep in 0..reps + 2 {
        for (si, &m) in sizes.iter().enumerate() {
            let block = &ids[256..256 + m];
            let mut run_new = || -> anyhow::Result<f64> {
                new_cache.truncate(256);
                let t = Instant::now();
                new.model().forward(block, &mut new_cache, fixpoint::model::Logits::All)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            };
            let mut run_old = || -> anyhow::Result<f64> {
                old_cache.truncate(256);
                let t = Instant::now();
                old.model().forward(block, &mut old_cache, fixpoint_old::model::Logits::All)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            };
            let (a, b) = if rep % 2 == 0 {
                let a = run_new()?;
                (a, run_old()?)
            } else {
                let b = run_old()?;
                (run_new()?, b)
            };
            if rep >= 2 {
                times[0][si].push(a);
                times[1][si].push(b);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let medians: Vec<Vec<f64>> = times
        .clone()
        .iter_mut()
        .map(|per_size| per_size.iter_mut().map(median).collect())
        .collect();
    for (name, row) in ["new", "old"].iter().zip(&medians) {
        let cells: Vec<String> = sizes.iter().zip(row).map(|(m, t)| format!("{m}:{t:.3}")).collect();
        println!("{name} ms:  {}", cells.join(" "));
    }
    let ratios: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{m}:{:.3}", medians[0][i] / medians[1][i]))
        .collect();
    println!("new/old: {}", ratios.join(" "));
    // Each repetition's pair ran back to back; the median of their ratios cancels the drifts
    // of a shared machine that medians taken apart do not.
    let paired: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r: Vec<f64> = times[0][i].iter().zip(&times[1][i]).map(|(a, b)| a / b).collect();
            format!("{m}:{:.3}", median(&mut r))
        })
        .collect();
    println!("paired:  {}", paired.join(" "));
    Ok(())
}
EOF
(cd "$work/ab" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" cargo build --release --quiet)
"${CARGO_TARGET_DIR:-$root/target}/release/compare-builds" "$model" "$reps"
