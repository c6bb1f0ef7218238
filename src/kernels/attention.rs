//! Causal attention on the CPU over the KV cache, written so that a query's result does not
//! depend on how many queries share the forward pass: each query row reads exactly the keys at
//! or before its position, in the same order, with the same arithmetic. That is what makes a
//! Jacobi block produce bit-identical predictions to one-token autoregressive steps (candle's
//! batched matmul and softmax round differently for different shapes, which flips near-ties).

use half::f16;

use crate::kernels::simd::{dot8, dot8x4, exp_neg, multiversion, sum8};

/// What a KV cache holds: f16 in the CPU forward, f32 in the candle one.
pub trait CacheValue: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// Eight values at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p..p + 8` must be readable, and the CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl CacheValue for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl CacheValue for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// `q`: (heads, m, hd) for positions `offset..offset + m`; `k`, `v`: (kv_heads, capacity, hd)
/// cache buffers holding positions `0..offset + m`. Returns (m, heads * hd).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention<T: CacheValue>(
    q: &[f32],
    k: &[T],
    v: &[T],
    heads: usize,
    kv_heads: usize,
    m: usize,
    hd: usize,
    capacity: usize,
    offset: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    // Each head into its own (m, hd) slab; heads are independent, so they run in parallel when
    // there is enough work. Each (head, row) is computed by the same code either way.
    let mut per_head = vec![0f32; heads * m * hd];
    let rep = heads / kv_heads;
    let one = |(h, slab): (usize, &mut [f32])| {
        let mut scores = vec![0f32; offset + m];
        #[cfg(target_arch = "x86_64")]
        if hd % 64 == 0 && crate::kernels::simd::has_avx2() {
            // SAFETY: AVX2 and FMA were detected; hd is a multiple of 64.
            unsafe { avx2::head(q, k, v, h, rep, m, hd, capacity, offset, &mut scores, slab) };
            return;
        }
        // The portable path widens the head's cache once per call (the vector path reads it
        // as stored).
        let base = (h / rep) * capacity * hd;
        let rows = offset + m;
        let widen = |c: &[T]| -> Vec<f32> {
            c[base..base + rows * hd]
                .iter()
                .map(|x| x.to_f32())
                .collect()
        };
        let (k, v) = (widen(k), widen(v));
        head(q, &k, &v, h, m, hd, offset, &mut scores, slab);
    };
    if m * (offset + m) * heads <= 1 << 11 {
        per_head.chunks_mut(m * hd).enumerate().for_each(one);
    } else {
        per_head.par_chunks_mut(m * hd).enumerate().for_each(one);
    }
    // (heads, m, hd) -> (m, heads * hd)
    let mut out = vec![0f32; m * heads * hd];
    for h in 0..heads {
        for i in 0..m {
            out[(i * heads + h) * hd..][..hd].copy_from_slice(&per_head[(h * m + i) * hd..][..hd]);
        }
    }
    out
}

multiversion! {
    /// One head's causal attention for m queries into `out` (m, hd), over the head's own cache
    /// rows widened to f32.
    fn head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        h: usize,
        m: usize,
        hd: usize,
        offset: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // `k`, `v`: this head's rows 0..offset + m.
        let scale = 1.0 / (hd as f32).sqrt();
        for i in 0..m {
            let len = offset + i + 1;
            let qrow = &q[(h * m + i) * hd..][..hd];
            let scores = &mut scores[..len];
            let quads = len / 4 * 4;
            for j in (0..quads).step_by(4) {
                let key = |t: usize| &k[(j + t) * hd..][..hd];
                let d = dot8x4(qrow, [key(0), key(1), key(2), key(3)]);
                for t in 0..4 {
                    scores[j + t] = d[t] * scale;
                }
            }
            for j in quads..len {
                scores[j] = dot8(qrow, &k[j * hd..][..hd]) * scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for s in scores.iter_mut() {
                *s = exp_neg(*s - max);
            }
            let inv = 1.0 / sum8(scores);
            let o = &mut out[i * hd..(i + 1) * hd];
            o.fill(0.0);
            for (j, &s) in scores.iter().enumerate() {
                let p = s * inv;
                for (o, &x) in o.iter_mut().zip(&v[j * hd..][..hd]) {
                    *o += p * x;
                }
            }
        }
    }
}

/// The same attention with explicit vectors for head sizes that are multiples of 64: scores of
/// four keys at a time (one vector chain per key, folded together at the end), and the value
/// sum kept in registers, 64 columns at a time, scaled by 1 / sum once at the end. A query's
/// result is still computed by the same instructions whatever m is.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::CacheValue;
    use crate::kernels::simd::{exp_neg, sum8};

    /// The sums of four vectors' lanes, as a vector of four.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum4(a: [__m256; 4]) -> __m128 {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
    }

    /// Dot product of `q` and `k` (hd floats, hd a multiple of 8), folded like [`sum4`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<T: CacheValue>(q: *const f32, k: *const T, hd: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for c in (0..hd).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), T::load8(k.add(c)), acc);
        }
        let z = _mm256_setzero_ps();
        _mm_cvtss_f32(sum4([acc, z, z, z]))
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn head<T: CacheValue>(
        q: &[f32],
        k: &[T],
        v: &[T],
        h: usize,
        rep: usize,
        m: usize,
        hd: usize,
        capacity: usize,
        offset: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let base = (h / rep) * capacity * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let (kp, vp) = (k.as_ptr().add(base), v.as_ptr().add(base));
        for i in 0..m {
            let len = offset + i + 1;
            let qp = q.as_ptr().add((h * m + i) * hd);
            let scores = &mut scores[..len];
            let quads = len / 4 * 4;
            for j in (0..quads).step_by(4) {
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in (0..hd).step_by(8) {
                    let qv = _mm256_loadu_ps(qp.add(c));
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qv, T::load8(kp.add((j + t) * hd + c)), *a);
                    }
                }
                let s = _mm_mul_ps(sum4(acc), _mm_set1_ps(scale));
                _mm_storeu_ps(scores.as_mut_ptr().add(j), s);
            }
            for j in quads..len {
                scores[j] = dot(qp, kp.add(j * hd), hd) * scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for s in scores.iter_mut() {
                *s = exp_neg(*s - max);
            }
            let inv = _mm256_set1_ps(1.0 / sum8(scores));
            let o = out.as_mut_ptr().add(i * hd);
            for col in (0..hd).step_by(64) {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (j, &p) in scores.iter().enumerate() {
                    let p = _mm256_set1_ps(p);
                    let row = vp.add(j * hd + col);
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(p, T::load8(row.add(c * 8)), *a);
                    }
                }
                for (c, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(col + c * 8), _mm256_mul_ps(*a, inv));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        nh: usize,
        nkv: usize,
        m: usize,
        hd: usize,
        cap: usize,
        off: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * nh * hd];
        for h in 0..nh {
            let kh = h / (nh / nkv);
            for i in 0..m {
                let len = off + i + 1;
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                q[(h * m + i) * hd + d] as f64 * k[(kh * cap + j) * hd + d] as f64
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[(i * nh + h) * hd + d] = (0..len)
                        .map(|j| e[j] / z * v[(kh * cap + j) * hd + d] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_reference_and_is_independent_of_the_block() {
        // hd 20: the portable path; 64: the vector path where the CPU has it.
        for hd in [20, 64] {
            check_head_size(hd);
        }
    }

    fn check_head_size(hd: usize) {
        let (nh, nkv, cap) = (6, 2, 64);
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        // The cache holds f16; the reference reads the same values.
        let k: Vec<f16> = (0..nkv * cap * hd)
            .map(|_| f16::from_f32(rnd() * 4.0))
            .collect();
        let v: Vec<f16> = (0..nkv * cap * hd).map(|_| f16::from_f32(rnd())).collect();
        let (kf, vf): (Vec<f32>, Vec<f32>) = (
            k.iter().map(|x| x.to_f32()).collect(),
            v.iter().map(|x| x.to_f32()).collect(),
        );
        let (m, off) = (7, 30);
        let q: Vec<f32> = (0..nh * m * hd).map(|_| rnd() * 4.0).collect();
        let got = causal_attention(&q, &k, &v, nh, nkv, m, hd, cap, off);
        let want = naive(&q, &kf, &vf, nh, nkv, m, hd, cap, off);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Row i of the block equals a one-query call at offset + i, bit for bit.
        for i in 0..m {
            let q1: Vec<f32> = (0..nh)
                .flat_map(|h| q[(h * m + i) * hd..][..hd].to_vec())
                .collect();
            let one = causal_attention(&q1, &k, &v, nh, nkv, 1, hd, cap, off + i);
            assert_eq!(&one[..], &got[i * nh * hd..(i + 1) * nh * hd]);
        }
    }
}
