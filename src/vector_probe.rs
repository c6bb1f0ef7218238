//! How much of its core's vector units the calling thread gets right now.
//!
//! On a shared host (a cloud VM whose cores are hyperthreads of the host's, or a desktop busy
//! with other work) a neighbour on the same physical core takes a share of its vector pipes,
//! and every forward slows down with it, the compute-bound forwards of many tokens most. A
//! clock measured with scalar adds does not show this: a chain of dependent adds runs at one
//! per cycle next to almost anything. A benchmark should say how much of the core it had, so
//! that its figures can be compared with another run's.
//!
//! The probe times a loop of the matmul's two most frequent instructions (`vpmaddubsw` and
//! `vpaddw`, independent of each other) against a chain of dependent scalar adds, in slices
//! taken in turn so that both see the same neighbours, and returns vector instructions per
//! cycle. Both loops start on a 64-byte boundary: where the linker happened to put them moved
//! the rate by a third between two builds of the same code. A Zen 3 core to itself read about
//! 3.4 in builds before that alignment. On this project's build machine it read about
//! 1.7 for most of an hour; then one-token forwards took up to 30% longer than in runs where it
//! read 3.4, 8-token ones 35 to 75% longer, and cost(8)/cost(1) read 2.5 to 3.0 instead of 2.0
//! to 2.2 (BENCHMARKS.md).

/// Vector instructions per cycle on the calling thread, over about 3 ms; `None` where the probe
/// has no loop (CPUs without AVX2).
pub fn ops_per_cycle() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::has_avx2() {
        // SAFETY: AVX2 was just detected.
        return Some(unsafe { x86::ops_per_cycle() });
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Slices of each loop, taken in turn.
    const SLICES: u32 = 16;
    /// Iterations of each loop per slice: about 0.1 ms at full speed.
    const ITERS: u64 = 1 << 16;
    /// Vector instructions per iteration of [`vector_loop`].
    const VECTOR_OPS: u64 = 8;
    /// Dependent adds per iteration of [`clock_loop`], one cycle each.
    const CHAIN: u64 = 4;

    #[target_feature(enable = "avx2")]
    pub unsafe fn ops_per_cycle() -> f64 {
        let (mut clock_s, mut vector_s) = (0.0, 0.0);
        // A first, untimed slice of each: the vector unit may power up on first use.
        for slice in 0..=SLICES {
            let t = Instant::now();
            clock_loop(ITERS);
            let c = t.elapsed().as_secs_f64();
            let t = Instant::now();
            vector_loop(ITERS);
            if slice > 0 {
                vector_s += t.elapsed().as_secs_f64();
                clock_s += c;
            }
        }
        let cycles = vector_s * (ITERS * CHAIN) as f64 / clock_s;
        (ITERS * VECTOR_OPS) as f64 / cycles
    }

    /// Four `vpmaddubsw` and four `vpaddw` per iteration, independent of each other.
    #[target_feature(enable = "avx2")]
    unsafe fn vector_loop(iters: u64) {
        let x = _mm256_set1_epi8(3);
        let y = _mm256_set1_epi8(5);
        asm!(
            ".p2align 6",
            "2:",
            "vpmaddubsw {a}, {x}, {y}",
            "vpaddw {b}, {x}, {y}",
            "vpmaddubsw {c}, {x}, {y}",
            "vpaddw {d}, {x}, {y}",
            "vpmaddubsw {a}, {y}, {x}",
            "vpaddw {b}, {y}, {x}",
            "vpmaddubsw {c}, {y}, {x}",
            "vpaddw {d}, {y}, {x}",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            x = in(ymm_reg) x,
            y = in(ymm_reg) y,
            a = out(ymm_reg) _,
            b = out(ymm_reg) _,
            c = out(ymm_reg) _,
            d = out(ymm_reg) _,
            options(nostack, nomem),
        );
    }

    /// Four dependent adds per iteration: a cycle each, so this loop's time is the clock. The
    /// adds take a register, not an immediate: Golden Cove and later Intel cores fold chains of
    /// immediate adds at rename, several per cycle; with immediates the probe read 9 instructions
    /// per cycle on a CI host, more than any x86 core issues, so its clock ran fast there.
    fn clock_loop(iters: u64) {
        let mut acc = 1u64;
        // SAFETY: register arithmetic only.
        unsafe {
            asm!(
                ".p2align 6",
                "2:",
                "add {acc}, {acc}",
                "add {acc}, {acc}",
                "add {acc}, {acc}",
                "add {acc}, {acc}",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                acc = inout(reg) acc,
                options(nostack, nomem),
            );
        }
        std::hint::black_box(acc);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_reports_a_rate_a_core_can_have() {
        let Some(rate) = super::ops_per_cycle() else {
            return;
        };
        // Above 8 would be more than any x86 core issues per cycle (a loop that did not run
        // as written, or a wrong clock); far below would need a thread descheduled most of
        // the time.
        assert!(
            (0.05..=8.0).contains(&rate),
            "{rate} vector instructions per cycle"
        );
    }
}
