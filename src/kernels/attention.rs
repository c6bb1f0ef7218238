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
        crate::kernels::simd::load_f16x8(p)
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
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(64) && crate::kernels::simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected; hd is a multiple of 64.
        return unsafe { avx2::attention(q, k, v, heads, kv_heads, m, hd, capacity, offset) };
    }
    // Each head into its own (m, hd) slab; heads are independent, so they run in parallel when
    // there is enough work. Each (head, row) is computed by the same code either way.
    let mut per_head = vec![0f32; heads * m * hd];
    let rep = heads / kv_heads;
    let one = |(h, slab): (usize, &mut [f32])| {
        let mut scores = vec![0f32; offset + m];
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

/// The same attention with explicit vectors for head sizes that are multiples of 64. The query
/// heads that share a KV head (grouped-query attention) are computed together, up to
/// [`avx2::GROUP`] at a time, so each key and value is loaded and widened from f16 once for all
/// of them. Per query, every score is its own chain of multiply-adds over the head dimension,
/// folded in a fixed order, and every output column its own chain over the keys in order, so a
/// query's result does not depend on which queries, or how many rows, share the call.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::CacheValue;
    use crate::kernels::simd::{exp_neg, sum8, SharedOut};

    /// Query heads computed together against one KV head.
    pub const GROUP: usize = 4;

    /// The sums of four vectors' lanes, as a vector of four.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum4(a: [__m256; 4]) -> __m128 {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attention<T: CacheValue>(
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
        let rep = heads / kv_heads;
        let mut out = vec![0f32; m * heads * hd];
        let ptr = SharedOut(out.as_mut_ptr());
        // Smaller groups where there would be too few tasks to keep every thread busy (one
        // token: one task per KV head).
        let threads = rayon::current_num_threads();
        let size = (m * heads / (2 * threads)).clamp(1, GROUP);
        // Tasks: (row, first query head, query heads), each within one KV head's group.
        let tasks: Vec<(usize, usize, usize)> = (0..m)
            .flat_map(|i| {
                (0..kv_heads).flat_map(move |g| {
                    (0..rep)
                        .step_by(size)
                        .map(move |h0| (i, g * rep + h0, (rep - h0).min(size)))
                })
            })
            .collect();
        let run = |&(i, h0, n): &(usize, usize, usize)| {
            // Capture the Send wrapper whole, not its raw pointer field.
            #[allow(clippy::redundant_locals)]
            let ptr = ptr;
            let (kv, len) = (h0 / rep * capacity * hd, offset + i + 1);
            let (kp, vp) = (k.as_ptr().add(kv), v.as_ptr().add(kv));
            let qp = |h: usize| q.as_ptr().add((h * m + i) * hd);
            let op = ptr.0.add((i * heads + h0) * hd);
            match n {
                1 => group::<T, 1>(std::array::from_fn(|t| qp(h0 + t)), kp, vp, hd, len, op),
                2 => group::<T, 2>(std::array::from_fn(|t| qp(h0 + t)), kp, vp, hd, len, op),
                3 => group::<T, 3>(std::array::from_fn(|t| qp(h0 + t)), kp, vp, hd, len, op),
                _ => group::<T, GROUP>(std::array::from_fn(|t| qp(h0 + t)), kp, vp, hd, len, op),
            }
        };
        if m * (offset + m) * heads <= 1 << 11 {
            tasks.iter().for_each(run);
        } else {
            tasks.par_iter().for_each(run);
        }
        out
    }

    /// Queries `q` (N heads of one row, hd each) over keys and values `0..len` of their KV
    /// head; the N outputs go to `out` side by side.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group<T: CacheValue, const N: usize>(
        q: [*const f32; N],
        kp: *const T,
        vp: *const T,
        hd: usize,
        len: usize,
        out: *mut f32,
    ) {
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0f32; N * len];
        let quads = len / 4 * 4;
        // Scores, four keys at a time. Each key's chain is the same whatever the grouping, so
        // the keys are split into passes that keep about eight chains in flight: enough to
        // hide the multiply-add latency, few enough to stay in registers.
        let keys = if N <= 2 { 4 } else { 2 };
        for j in (0..quads).step_by(4) {
            let mut acc = [[_mm256_setzero_ps(); 4]; N];
            for first in (0..4).step_by(keys) {
                for c in (0..hd).step_by(8) {
                    let qv = q.map(|q| _mm256_loadu_ps(q.add(c)));
                    for t in first..first + keys {
                        let kv = T::load8(kp.add((j + t) * hd + c));
                        for (a, qv) in acc.iter_mut().zip(&qv) {
                            a[t] = _mm256_fmadd_ps(*qv, kv, a[t]);
                        }
                    }
                }
            }
            for (n, a) in acc.iter().enumerate() {
                let s = _mm_mul_ps(sum4(*a), _mm_set1_ps(scale));
                _mm_storeu_ps(scores.as_mut_ptr().add(n * len + j), s);
            }
        }
        for j in quads..len {
            let mut acc = [_mm256_setzero_ps(); N];
            for c in (0..hd).step_by(8) {
                let kv = T::load8(kp.add(j * hd + c));
                for (a, q) in acc.iter_mut().zip(&q) {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), kv, *a);
                }
            }
            let z = _mm256_setzero_ps();
            for (n, a) in acc.iter().enumerate() {
                scores[n * len + j] = _mm_cvtss_f32(sum4([*a, z, z, z])) * scale;
            }
        }
        let mut inv = [_mm256_setzero_ps(); N];
        for (n, inv) in inv.iter_mut().enumerate() {
            let s = &mut scores[n * len..(n + 1) * len];
            let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for s in s.iter_mut() {
                *s = exp_neg(*s - max);
            }
            *inv = _mm256_set1_ps(1.0 / sum8(s));
        }
        // Values: for all N queries at once, as many columns as keep about eight chains in
        // flight (64 for one query, 16 for four); each column's chain runs over the keys in
        // order whatever the width.
        let vecs = (8 / N).max(2);
        for col in (0..hd).step_by(vecs * 8) {
            let mut acc = [[_mm256_setzero_ps(); 8]; N];
            for j in 0..len {
                let row = vp.add(j * hd + col);
                let p: [__m256; N] =
                    std::array::from_fn(|n| _mm256_set1_ps(*scores.get_unchecked(n * len + j)));
                for c in 0..vecs {
                    let vv = T::load8(row.add(c * 8));
                    for (a, p) in acc.iter_mut().zip(&p) {
                        a[c] = _mm256_fmadd_ps(*p, vv, a[c]);
                    }
                }
            }
            for (n, a) in acc.iter().enumerate() {
                for (c, a) in a.iter().enumerate().take(vecs) {
                    _mm256_storeu_ps(out.add(n * hd + col + c * 8), _mm256_mul_ps(*a, inv[n]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
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
