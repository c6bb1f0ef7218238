//! Portable building blocks written so the compiler vectorizes them, and the switch that runs a
//! function compiled for AVX2 + FMA when the CPU has them (the crate itself targets baseline
//! x86-64, where the same code runs 4-wide SSE with scalar rounding calls).
//!
//! Reductions use eight fixed partial sums: the order of additions never depends on how the
//! data was batched, which keeps results batch-invariant.

/// True when AVX2, FMA and F16C are available (cached by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name` that runs `$body` compiled for AVX2 + FMA when available, else as is.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if $crate::kernels::simd::has_avx2() {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = sum_lanes(acc);
    let tail = n - n % 8;
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        s += x * y;
    }
    s
}

#[inline(always)]
pub fn sum_squares8(a: &[f32]) -> f32 {
    dot8(a, a)
}

/// Largest |x| (order-independent).
#[inline(always)]
pub fn amax8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for x in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(x[l].abs());
        }
    }
    let mut m = acc.iter().fold(0f32, |x, &y| x.max(y));
    for x in rest {
        m = m.max(x.abs());
    }
    m
}

/// e^x for x <= 0 (softmax after subtracting the max), branch-free so it vectorizes: 2^n times a
/// degree-6 polynomial on the reduced argument; relative error below 2e-7. libm's `expf` is a
/// call per element and was most of the attention time.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // Cody-Waite: ln 2 in two parts keeps the reduction exact enough.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// An output buffer written from several threads, each element by exactly one: the kernels'
/// tasks own disjoint parts of it.
#[derive(Clone, Copy)]
pub struct SharedOut(pub *mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The buffer's start. Closures call this instead of reading the field, so that they
    /// capture the wrapper (Send and Sync), not the raw pointer inside it (which is neither).
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Eight f16 values at `p` as f32 lanes.
///
/// # Safety
/// `p..p + 8` must be readable, and the CPU must have F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn load_f16x8(p: *const half::f16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// `src` rounded to f16 into `dst`, to nearest with ties to even, as `half`'s conversions
/// round: the KV cache's writes. Inline F16C instead of `half`'s slice conversion, which calls
/// a function per eight values (with the q rows' copy, the writes were about a third of the
/// RoPE section's 0.19 ms in an 8-token forward).
pub fn to_f16(src: &[f32], dst: &mut [half::f16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && src.len().is_multiple_of(8) {
        // SAFETY: F16C was detected; both slices hold len values, a multiple of eight.
        unsafe { to_f16_f16c(src, dst) };
        return;
    }
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn to_f16_f16c(src: &[f32], dst: &mut [half::f16]) {
    use std::arch::x86_64::*;
    for c in (0..src.len()).step_by(8) {
        let v = _mm256_loadu_ps(src.as_ptr().add(c));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        _mm_storeu_si128(dst.as_mut_ptr().add(c) as *mut __m128i, h);
    }
}

/// Asks for the cache line at `p` ahead of its use: the matmuls hint the next tile's (or
/// pair's) codes and scales block by block as they work through this one's, attention the
/// keys and values of its span. Into L2, not L1: hinted into L1, the lines of a stream that
/// runs at memory bandwidth held the core's few L1 miss buffers, and from four tokens up,
/// where the arithmetic is as long as the stream, the two stopped overlapping. With L2 hints
/// (commits alternating in one process, two runs each) the default model's forwards of 4 to
/// 16 tokens take 0.91x to 0.97x the time and those of a model on Q8_0 throughout 0.76x to
/// 0.92x; one token is unchanged. Past the end of a buffer a hint points nowhere, which a
/// prefetch ignores (callers use `wrapping_add` to keep the arithmetic defined).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn hint<T>(p: *const T) {
    // SAFETY: a prefetch never faults, and SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
}

/// [`exp_neg`] on eight lanes, with the same operations in the same order (no fused
/// multiply-adds), so each lane is bit-identical to the scalar function.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_neg8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = |v: f32| _mm256_set1_ps(v);
    let x = _mm256_max_ps(x, c(-87.0));
    let n = _mm256_floor_ps(_mm256_add_ps(
        _mm256_mul_ps(x, c(std::f32::consts::LOG2_E)),
        c(0.5),
    ));
    let r = _mm256_sub_ps(
        _mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_145_75))),
        _mm256_mul_ps(n, c(1.428_606_8e-6)),
    );
    let mut p = c(1.0 / 720.0);
    for k in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_add_ps(c(k), _mm256_mul_ps(r, p));
    }
    let bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// The eight lane sums' fold that every reduction here ends with.
#[inline(always)]
pub fn sum_lanes(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_writes_round_as_half_does() {
        // Ties between two f16 values (odd and even), subnormals, overflow, infinities.
        let mut src: Vec<f32> = vec![
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            -(1.0 + 1.0 / 2048.0),
            65504.0,
            65520.0,
            1e6,
            -1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            6e-8,
            3e-8,
            -5.9e-5,
            0.0,
            -0.0,
            0.1,
            -2.75,
        ];
        let mut seed = 3u32;
        src.extend((0..48).map(|_| {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            f32::from_bits(seed >> 1) * if seed & 1 == 0 { 1.0 } else { -1.0 }
        }));
        let src: Vec<f32> = src.into_iter().filter(|v| !v.is_nan()).collect();
        let src = &src[..src.len() / 8 * 8];
        let mut got = vec![half::f16::ZERO; src.len()];
        to_f16(src, &mut got);
        for (v, g) in src.iter().zip(&got) {
            assert_eq!(g.to_bits(), half::f16::from_f32(*v).to_bits(), "{v}");
        }
    }

    #[test]
    fn exp_neg_is_accurate() {
        for i in 0..19_300 {
            let x = -(i as f32) * 0.0045;
            let (got, want) = (exp_neg(x), (x as f64).exp());
            assert!(
                ((got as f64) - want).abs() <= 3e-7 * want + 1e-38,
                "{x}: {got} vs {want}"
            );
        }
        // Below -87 it clamps: e^-87 is 1.6e-38, nothing next to the softmax's max term of 1.
        assert!(exp_neg(f32::NEG_INFINITY) < 2e-38);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_exp_is_bit_identical_to_the_scalar_one() {
        use std::arch::x86_64::*;
        if !has_avx2() {
            return;
        }
        let xs: Vec<f32> = (0..20_000)
            .map(|i| -(i as f32) * 0.0047)
            .chain([0.0, -0.0, -87.0, -100.0, f32::NEG_INFINITY])
            .collect();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2 was detected.
            unsafe {
                _mm256_storeu_ps(got.as_mut_ptr(), exp_neg8(_mm256_loadu_ps(chunk.as_ptr())))
            };
            for (g, &x) in got.iter().zip(chunk) {
                assert_eq!(g.to_bits(), exp_neg(x).to_bits(), "{x}");
            }
        }
    }
}
