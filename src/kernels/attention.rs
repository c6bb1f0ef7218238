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
    if crate::kernels::simd::has_avx2() && matches!(hd, 64 | 128) {
        let (kv, cap) = (kv_heads, capacity);
        // SAFETY: AVX2, FMA and F16C were detected.
        return unsafe {
            match hd {
                64 => avx2::attention::<T, 64>(q, k, v, heads, kv, m, cap, offset),
                _ => avx2::attention::<T, 128>(q, k, v, heads, kv, m, cap, offset),
            }
        };
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
    #[allow(clippy::too_many_arguments)]
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

/// The same attention with explicit vectors for head sizes of 64 and 128 (a constant, so that
/// every load's address is a register plus a fixed offset instead of a chain of additions).
///
/// A task is one KV head against a run of its queries (grouped-query attention: the query heads
/// that share it, row after row). The task walks the head's keys, then its values, a block at a
/// time, and every query of the task passes over the block while it is in L1, two queries at a
/// time sharing each load (a query re-reading the whole cache from L2 was bound by L2
/// bandwidth). Blocks are read as stored, f16 widened in the multiply's own load: widening each
/// block into an f32 buffer first made attention in the forward 10 to 30% slower at 8 to 16
/// queries (the widening pass waited on the cache's lines, then its stores on the loads). Per
/// query: each score a multiply-add chain over the head dimension whose lanes are folded by one
/// fixed tree, a vector softmax, and each output column a chain over the keys in order. Nothing
/// a query computes depends on which other queries, or how many rows, share its task: a block
/// of tokens gets bit-identical results to one-token steps.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use rayon::prelude::*;

    use super::CacheValue;
    use crate::kernels::simd::{exp_neg, exp_neg8, sum_lanes, SharedOut};

    /// Keys scored together: 1 KB of f16 at a head size of 64.
    const KEYS: usize = 8;
    /// Values added together: 4 KB of f16 at a head size of 64.
    const VALUES: usize = 32;

    /// Per worker thread, reused across calls.
    #[derive(Default)]
    struct Scratch {
        /// The last, partial block of keys, widened and padded with zeros.
        keys: Vec<f32>,
        /// The task's scores, one row of whole key blocks per query.
        scores: Vec<f32>,
        /// Per query: 1 / the softmax's sum.
        inv: Vec<f32>,
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attention<T: CacheValue, const HD: usize>(
        q: &[f32],
        k: &[T],
        v: &[T],
        heads: usize,
        kv_heads: usize,
        m: usize,
        capacity: usize,
        offset: usize,
    ) -> Vec<f32> {
        let hd = HD;
        let rep = heads / kv_heads;
        let mut out = vec![0f32; m * heads * hd];
        let ptr = SharedOut(out.as_mut_ptr());
        // A KV head's queries, row after row (query i: row i / rep, head i % rep), are split
        // into runs so that there are about two tasks per thread; each task widens its KV
        // head's keys and values once for all its queries.
        let runs = (2 * rayon::current_num_threads())
            .div_ceil(kv_heads)
            .clamp(1, m * rep);
        let size = (m * rep).div_ceil(runs);
        let tasks: Vec<(usize, usize)> = (0..kv_heads)
            .flat_map(|g| (0..m * rep).step_by(size).map(move |q0| (g, q0)))
            .collect();
        let run = |&(g, q0): &(usize, usize)| {
            let end = (q0 + size).min(m * rep);
            let base = g * capacity * hd;
            let row = |qi: usize| (q0 + qi) / rep;
            let head = |qi: usize| g * rep + (q0 + qi) % rep;
            let task = Task {
                q: |qi: usize| q.as_ptr().add((head(qi) * m + row(qi)) * hd),
                out: |qi: usize| ptr.get().add((row(qi) * heads + head(qi)) * hd),
                len: |qi: usize| offset + row(qi) + 1,
                queries: end - q0,
                keys: offset + (end - 1) / rep + 1,
            };
            SCRATCH.with_borrow_mut(|scratch| {
                task.run::<T, HD>(
                    &k[base..base + task.keys * hd],
                    &v[base..base + task.keys * hd],
                    scratch,
                )
            });
        };
        if m * (offset + m) * heads <= 1 << 11 {
            tasks.iter().for_each(run);
        } else {
            tasks.par_iter().for_each(run);
        }
        out
    }

    /// Queries `0..queries` against keys and values `0..keys` of one KV head; query qi reads
    /// `q(qi)` (hd values), attends to keys `0..len(qi)` (never shorter than an earlier
    /// query's) and writes `out(qi)` (hd values, zero on entry).
    struct Task<Q, O, L> {
        q: Q,
        out: O,
        len: L,
        queries: usize,
        keys: usize,
    }

    impl<Q, O, L> Task<Q, O, L>
    where
        Q: Fn(usize) -> *const f32,
        O: Fn(usize) -> *mut f32,
        L: Fn(usize) -> usize,
    {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn run<T: CacheValue, const HD: usize>(&self, k: &[T], v: &[T], s: &mut Scratch) {
            let (hd, n) = (HD, self.queries);
            let padded = self.keys.div_ceil(KEYS) * KEYS;
            s.keys.resize(KEYS * hd, 0.0);
            s.scores.resize(s.scores.len().max(n * padded), 0.0);
            s.inv.resize(n, 0.0);
            // Blocks ahead are hinted to L1: one token on a 1536-token cache measured 4 to 6% less
            // attention time with the hints (calls alternating in one process), shorter caches
            // and more tokens no different. Past the end they point nowhere, which a prefetch
            // ignores (`wrapping_add` keeps the arithmetic defined).
            let bytes = |rows: usize| rows * hd * std::mem::size_of::<T>();
            for j in (0..self.keys).step_by(KEYS) {
                let ahead = (k.as_ptr() as *const i8).wrapping_add(bytes(j + 2 * KEYS));
                for l in (0..bytes(KEYS)).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
                }
                let have = (self.keys - j).min(KEYS);
                let scores = s.scores.as_mut_ptr().add(j);
                if have == KEYS {
                    self.score::<T, HD>(j, k.as_ptr().add(j * hd), scores, padded);
                } else {
                    // The cache past the last key is not ours to read: a copy, whose missing
                    // keys are scored, never used, kept finite (the f32 values are the same as
                    // the f16 ones).
                    widen(&k[j * hd..(j + have) * hd], &mut s.keys);
                    s.keys[have * hd..].fill(0.0);
                    self.score::<f32, HD>(j, s.keys.as_ptr(), scores, padded);
                }
            }
            for qi in 0..n {
                s.inv[qi] = softmax(&mut s.scores[qi * padded..][..(self.len)(qi)]);
            }
            for j in (0..self.keys).step_by(VALUES) {
                let ahead = (v.as_ptr() as *const i8).wrapping_add(bytes(j + VALUES));
                for l in (0..bytes(VALUES)).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l));
                }
                let have = (self.keys - j).min(VALUES);
                let p = s.scores.as_ptr().add(j);
                self.add::<T, HD>(j, have, v.as_ptr().add(j * hd), p, padded);
            }
            for qi in 0..n {
                let (out, inv) = ((self.out)(qi), _mm256_set1_ps(s.inv[qi]));
                for c in (0..hd).step_by(8) {
                    _mm256_storeu_ps(out.add(c), _mm256_mul_ps(_mm256_loadu_ps(out.add(c)), inv));
                }
            }
        }

        /// The first query that reaches key `j`: queries are in row order, so the ones that
        /// reach a block are a suffix.
        fn first(&self, j: usize) -> usize {
            (0..self.queries)
                .find(|&qi| (self.len)(qi) > j)
                .unwrap_or(self.queries)
        }

        /// Scores of every query that reaches them against the [`KEYS`] keys at `keys` (key j
        /// of the head onwards), into `scores` (key j of query 0's row; rows `padded` apart),
        /// two queries at a time sharing every load.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn score<E: CacheValue, const HD: usize>(
            &self,
            j: usize,
            keys: *const E,
            scores: *mut f32,
            padded: usize,
        ) {
            let scale = _mm_set1_ps(1.0 / (HD as f32).sqrt());
            let (n, out) = (self.queries, |qi: usize| scores.add(qi * padded));
            let mut qi = self.first(j);
            while qi + 2 <= n {
                let (q, o) = ([(self.q)(qi), (self.q)(qi + 1)], [out(qi), out(qi + 1)]);
                score_block::<E, HD, 2>(q, keys, scale, o);
                qi += 2;
            }
            if qi < n {
                score_block::<E, HD, 1>([(self.q)(qi)], keys, scale, [out(qi)]);
            }
        }

        /// Adds the `have` values at `values` (value j of the head onwards), weighted by the
        /// softmax numerators at `p` (rows `padded` apart), to every query that reaches them,
        /// two queries at a time sharing every load.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn add<E: CacheValue, const HD: usize>(
            &self,
            j: usize,
            have: usize,
            values: *const E,
            p: *const f32,
            padded: usize,
        ) {
            let n = self.queries;
            let p = |qi: usize| p.add(qi * padded);
            let rows = |qi: usize| ((self.len)(qi) - j).min(have);
            let mut qi = self.first(j);
            while qi + 2 <= n {
                // Both take the values they share, then the later row its own last ones.
                let (a, b) = (rows(qi), rows(qi + 1));
                let out = [(self.out)(qi), (self.out)(qi + 1)];
                add_values::<E, HD, 2>([p(qi), p(qi + 1)], 0..a.min(b), values, out);
                add_values::<E, HD, 1>([p(qi + 1)], a.min(b)..b, values, [out[1]]);
                qi += 2;
            }
            if qi < n {
                add_values::<E, HD, 1>([p(qi)], 0..rows(qi), values, [(self.out)(qi)]);
            }
        }
    }

    /// `src` as f32 into the front of `dst`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen<T: CacheValue>(src: &[T], dst: &mut [f32]) {
        assert!(src.len().is_multiple_of(8) && dst.len() >= src.len());
        for c in (0..src.len()).step_by(8) {
            _mm256_storeu_ps(dst.as_mut_ptr().add(c), T::load8(src.as_ptr().add(c)));
        }
    }

    /// The lane sums of four vectors, lane t from `a[t]`, every lane by the same tree:
    /// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum4(a: [__m256; 4]) -> __m128 {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
    }

    /// Scores of Q queries against the [`KEYS`] keys at `k` (HD values each), times `scale`, to
    /// `out`: four keys at a time, a chain per (query, key) over the head dimension.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn score_block<E: CacheValue, const HD: usize, const Q: usize>(
        q: [*const f32; Q],
        k: *const E,
        scale: __m128,
        out: [*mut f32; Q],
    ) {
        for first in (0..KEYS).step_by(4) {
            let mut acc = [[_mm256_setzero_ps(); 4]; Q];
            for c in (0..HD).step_by(8) {
                let qv = q.map(|q| _mm256_loadu_ps(q.add(c)));
                for t in 0..4 {
                    let kv = E::load8(k.add((first + t) * HD + c));
                    for (a, qv) in acc.iter_mut().zip(&qv) {
                        a[t] = _mm256_fmadd_ps(*qv, kv, a[t]);
                    }
                }
            }
            for (a, out) in acc.iter().zip(out) {
                let s = _mm_mul_ps(sum4(*a), scale);
                _mm_storeu_ps(out.add(first), s);
            }
        }
    }

    /// Scores to softmax numerators in place; returns 1 / their sum. The max is exact in any
    /// order; the sum keeps eight lane sums, folded by `sum_lanes`, then the tail in order.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn softmax(scores: &mut [f32]) -> f32 {
        let (len, sp) = (scores.len(), scores.as_mut_ptr());
        let whole = len / 8 * 8;
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        for j in (0..whole).step_by(8) {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(sp.add(j)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
        let max = scores[whole..]
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mv = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        for j in (0..whole).step_by(8) {
            let e = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(j)), mv));
            _mm256_storeu_ps(sp.add(j), e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut total = sum_lanes(lanes);
        for s in &mut scores[whole..] {
            *s = exp_neg(*s - max);
            total += *s;
        }
        1.0 / total
    }

    /// For each of Q queries, `out += p[t] * values row t` for rows `t` in order (HD values each):
    /// one chain per eight output columns, 32 columns at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn add_values<E: CacheValue, const HD: usize, const Q: usize>(
        p: [*const f32; Q],
        rows: std::ops::Range<usize>,
        values: *const E,
        out: [*mut f32; Q],
    ) {
        if rows.is_empty() {
            return;
        }
        for col in (0..HD).step_by(32) {
            let mut acc: [[__m256; 4]; Q] =
                out.map(|o| std::array::from_fn(|c| _mm256_loadu_ps(o.add(col + c * 8))));
            for t in rows.clone() {
                let row = values.add(t * HD + col);
                let vv: [__m256; 4] = std::array::from_fn(|c| E::load8(row.add(c * 8)));
                for (a, p) in acc.iter_mut().zip(&p) {
                    let pv = _mm256_set1_ps(*p.add(t));
                    for (a, vv) in a.iter_mut().zip(&vv) {
                        *a = _mm256_fmadd_ps(pv, *vv, *a);
                    }
                }
            }
            for (a, o) in acc.iter().zip(out) {
                for (c, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(o.add(col + c * 8), *a);
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
        // hd 20: the portable path; 64 and 128: the vector path where the CPU has it.
        for hd in [20, 64, 128] {
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
