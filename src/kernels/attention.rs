//! Causal attention on the CPU over the KV cache, written so that a query's result does not
//! depend on how many queries share the forward pass: each query row reads exactly the keys at
//! or before its position, in the same order, with the same arithmetic. That is what makes a
//! Jacobi block produce bit-identical predictions to one-token autoregressive steps (candle's
//! batched matmul and softmax round differently for different shapes, which flips near-ties).

use half::f16;

/// What a KV cache holds: f16 in the CPU forward, f32 in the candle one.
pub trait CacheValue: Copy + Send + Sync {
    /// `src` as f32 into `dst` (the same length).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Eight values at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p..p + 8` must be readable, and the CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl CacheValue for f32 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl CacheValue for f16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        // Vector conversions where the CPU has them (F16C, Arm's FP16).
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        crate::kernels::simd::load_f16x8(p)
    }
}

/// `q`: (heads, m, hd) for positions `offset..offset + m`; `k`, `v`: (kv_heads, capacity, hd)
/// cache buffers holding positions `0..offset + m`. Writes (m, heads * hd) to `out`, a buffer
/// the caller keeps between layers and passes.
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
    out: &mut [f32],
) {
    assert_eq!(out.len(), m * heads * hd, "attention output size");
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::has_avx2() && matches!(hd, 64 | 128) {
        let (kv, cap) = (kv_heads, capacity);
        // SAFETY: AVX2, FMA and F16C were detected; `out` holds m * heads * hd values.
        unsafe {
            match hd {
                64 => avx2::attention::<T, 64>(q, k, v, heads, kv, m, cap, offset, out),
                _ => avx2::attention::<T, 128>(q, k, v, heads, kv, m, cap, offset, out),
            }
        };
        return;
    }
    portable::attention(q, k, v, heads, kv_heads, m, hd, capacity, offset, out);
}

/// The attention for any head size and CPU (Arm's among them). A task is one query head and a
/// run of query rows; it walks the head's keys and values a block at a time, widened to f32 in
/// the thread's scratch, with an online softmax per query: the block's scores, the running
/// maximum raised and the running sum and outputs rescaled to it, then the block's values
/// added. So a call allocates nothing once the scratch has grown, and never copies a head's
/// cache whole (the first version widened the head's whole cache into fresh vectors per call,
/// once per query head). Blocks sit at fixed multiples of [`portable::KEYS`] and a query's
/// arithmetic depends only on its own row and length, so a block of tokens gets bit-identical
/// results to one-token steps.
mod portable {
    use std::cell::RefCell;
    use std::ops::Range;

    use super::CacheValue;
    use crate::kernels::simd::{dot8, exp_neg, multiversion, SharedOut};

    /// Keys (and values) widened at a time: 8 KB of f32 each at a head size of 64.
    pub const KEYS: usize = 32;
    /// Query rows per task.
    const ROWS: usize = 16;

    /// Per thread, reused across calls.
    #[derive(Default)]
    struct Scratch {
        keys: Vec<f32>,
        values: Vec<f32>,
        scores: Vec<f32>,
        /// Per query row of the task: running maximum, sum of exponentials, outputs (hd).
        max: Vec<f32>,
        sum: Vec<f32>,
        out: Vec<f32>,
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention<T: CacheValue>(
        q: &[f32],
        k: &[T],
        v: &[T],
        heads: usize,
        kv_heads: usize,
        m: usize,
        hd: usize,
        capacity: usize,
        offset: usize,
        out: &mut [f32],
    ) {
        let rep = heads / kv_heads;
        let runs = m.div_ceil(ROWS);
        let optr = SharedOut(out.as_mut_ptr());
        let task = |t: usize| {
            let (h, r) = (t / runs, t % runs);
            let rows = r * ROWS..((r + 1) * ROWS).min(m);
            let base = (h / rep) * capacity * hd;
            let keys = offset + rows.end;
            let (k, v) = (&k[base..base + keys * hd], &v[base..base + keys * hd]);
            let q = &q[h * m * hd..(h + 1) * m * hd];
            // Never borrowed already: no task calls attention.
            SCRATCH.with_borrow_mut(|s| {
                let o = |i: usize| {
                    // SAFETY: (row i, head h) of `out` is this task's alone, and `out` holds
                    // m * heads * hd values (asserted by the caller).
                    unsafe {
                        std::slice::from_raw_parts_mut(optr.get().add((i * heads + h) * hd), hd)
                    }
                };
                head_rows(q, k, v, hd, offset, rows, s, o)
            });
        };
        if m * (offset + m) * heads <= 1 << 11 {
            (0..heads * runs).for_each(task);
        } else {
            crate::kernels::team::for_each(heads * runs, task);
        }
    }

    /// Query rows `rows` of one head (`q`: the head's m rows of hd) against its keys and values
    /// (`k`, `v`: every position the last row reaches), each row's result to `out(row)`.
    #[allow(clippy::too_many_arguments)]
    fn head_rows<'o, T: CacheValue>(
        q: &[f32],
        k: &[T],
        v: &[T],
        hd: usize,
        offset: usize,
        rows: Range<usize>,
        s: &mut Scratch,
        out: impl Fn(usize) -> &'o mut [f32],
    ) {
        let Scratch {
            keys,
            values,
            scores,
            max,
            sum,
            out: acc,
        } = s;
        let n = rows.len();
        keys.resize(KEYS * hd, 0.0);
        values.resize(KEYS * hd, 0.0);
        scores.resize(KEYS, 0.0);
        max.clear();
        max.resize(n, f32::NEG_INFINITY);
        sum.clear();
        sum.resize(n, 0.0);
        acc.clear();
        acc.resize(n * hd, 0.0);
        let positions = k.len() / hd;
        for j in (0..positions).step_by(KEYS) {
            let have = (positions - j).min(KEYS);
            T::widen(&k[j * hd..(j + have) * hd], &mut keys[..have * hd]);
            T::widen(&v[j * hd..(j + have) * hd], &mut values[..have * hd]);
            for (r, i) in rows.clone().enumerate() {
                let len = offset + i + 1;
                if len <= j {
                    continue;
                }
                let reach = (len - j).min(have);
                add_block(
                    &q[i * hd..(i + 1) * hd],
                    &keys[..reach * hd],
                    &values[..reach * hd],
                    &mut scores[..reach],
                    &mut max[r],
                    &mut sum[r],
                    &mut acc[r * hd..(r + 1) * hd],
                );
            }
        }
        for (r, i) in rows.enumerate() {
            let inv = 1.0 / sum[r];
            for (o, &a) in out(i).iter_mut().zip(&acc[r * hd..(r + 1) * hd]) {
                *o = a * inv;
            }
        }
    }

    multiversion! {
        /// One query's online softmax over one block of keys and values (`scores.len()` of
        /// them, hd values each): its running maximum `max`, sum of exponentials `sum` and
        /// unnormalised outputs `out` rescaled to the block's maximum where it is larger, then
        /// the block's exponentials and weighted values added in key order.
        fn add_block(
            q: &[f32],
            keys: &[f32],
            values: &[f32],
            scores: &mut [f32],
            max: &mut f32,
            sum: &mut f32,
            out: &mut [f32],
        ) {
            let hd = q.len();
            let scale = 1.0 / (hd as f32).sqrt();
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot8(q, &keys[j * hd..][..hd]) * scale;
            }
            let top = scores.iter().fold(*max, |a, &b| a.max(b));
            if top > *max {
                // Nothing to rescale before the first block.
                if *max > f32::NEG_INFINITY {
                    let c = exp_neg(*max - top);
                    *sum *= c;
                    out.iter_mut().for_each(|o| *o *= c);
                }
                *max = top;
            }
            // Apart from the sum and the values, so that the exponentials run as vectors.
            for s in scores.iter_mut() {
                *s = exp_neg(*s - top);
            }
            for (j, &p) in scores.iter().enumerate() {
                *sum += p;
                for (o, &x) in out.iter_mut().zip(&values[j * hd..][..hd]) {
                    *o += p * x;
                }
            }
        }
    }
}

/// The same attention with explicit vectors for head sizes of 64 and 128 (a constant, so that
/// every load's address is a register plus a fixed offset instead of a chain of additions).
///
/// A KV head's keys are cut into spans of [`avx2::SPAN`] positions, at fixed multiples of it.
/// A task is one KV head and one span against every query that reaches the span (grouped-query
/// attention: the query heads sharing the KV head, row after row), so each key and value is
/// read once per forward, and the tasks (KV heads times spans) balance over the threads even
/// for one token. Within the span the task walks keys, then values, a block at a time, and
/// every query passes over the block while it is in L1, two queries at a time sharing each
/// load. It leaves, per query, the span's score maximum, its sum of exponentials and its
/// unnormalised output; the task that finishes a KV head's last span merges them, span by span
/// in order. Blocks are read as stored, f16 widened in the multiply's own load: widening each
/// block into an f32 buffer first made attention in the forward 10 to 30% slower at 8 to 16
/// queries (the widening pass waited on the cache's lines, then its stores on the loads), and
/// widening a span once per task for a prefill's 1536 queries per KV head was no faster either
/// (0.98x to 1.06x the time in 512-token chunks at 0 to 3584 cached positions). Per query: each score a multiply-add chain over the head dimension whose lanes are folded by one
/// fixed tree, a vector softmax per span, each output column a chain over the span's keys in
/// order, and the merge. Spans are cut at absolute positions and nothing a query computes
/// depends on which other queries, or how many rows, share its task: a block of tokens gets
/// bit-identical results to one-token steps.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::CacheValue;
    use crate::kernels::simd::{exp_neg, exp_neg8, hint, sum_lanes, SharedOut};

    /// Keys scored together: 1 KB of f16 at a head size of 64.
    const KEYS: usize = 8;
    /// Values added together: 4 KB of f16 at a head size of 64.
    const VALUES: usize = 32;
    /// Positions per span: 15 tasks for one token on a 256-token cache with three KV heads.
    pub const SPAN: usize = 64;
    const _: () = assert!(SPAN.is_multiple_of(KEYS) && SPAN.is_multiple_of(VALUES));

    /// Per worker thread, reused across calls.
    #[derive(Default)]
    struct Scratch {
        /// The last, partial block of keys, widened and padded with zeros.
        keys: Vec<f32>,
        /// The task's scores, one row of [`SPAN`] per query.
        scores: Vec<f32>,
    }

    /// What a call's tasks share, kept by the calling thread and reused across calls, so that
    /// a forward allocates nothing per layer.
    #[derive(Default)]
    struct Call {
        /// Per query, the keys it attends to.
        lens: Vec<usize>,
        /// Per query, where its q row starts in its KV head's q rows.
        rows: Vec<usize>,
        /// Per query and span, the span's results (see [`OUT`]).
        parts: Vec<f32>,
        /// Per KV head, how many of its spans are done.
        done: Vec<AtomicUsize>,
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
        static CALL: RefCell<Call> = RefCell::new(Call::default());
    }

    /// What a task leaves per query: the span's maximum score, its sum of exponentials, then
    /// the HD outputs weighted by those exponentials.
    const MAX: usize = 0;
    const SUM: usize = 1;
    const OUT: usize = 2;

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
        out: &mut [f32],
    ) {
        let rep = heads / kv_heads;
        // A KV head's queries, row after row: query qi is row qi / rep, head qi % rep of the
        // group (whose q rows start at head g * rep).
        let n = m * rep;
        let keys = offset + m;
        let spans = keys.div_ceil(SPAN);
        let stride = OUT + HD;
        // Every value is written by a merge.
        let optr = SharedOut(out.as_mut_ptr());
        let with_call = |call: &mut Call| {
            let Call {
                lens,
                rows,
                parts,
                done,
            } = call;
            // Per query, worked out once: a task asks for them per block of keys and values,
            // and as closures over `qi / rep` the divisions were 4% of its time.
            lens.clear();
            lens.extend((0..n).map(|qi| offset + qi / rep + 1));
            // Head qi % rep of the group, row qi / rep.
            rows.clear();
            rows.extend((0..n).map(|qi| ((qi % rep) * m + qi / rep) * HD));
            done.clear();
            done.extend((0..kv_heads).map(|_| AtomicUsize::new(0)));
            // Every value read is written first by the call's tasks.
            parts.resize(parts.len().max(kv_heads * spans * n * stride), 0.0);
            let pptr = SharedOut(parts.as_mut_ptr());
            let (lens, rows, done) = (&*lens, &*rows, &*done);
            let run = |t: usize| {
                let (g, c) = (t / spans, t % spans);
                let head = |qi: usize| g * rep + qi % rep;
                let base = g * capacity * HD;
                let part =
                    |c: usize, qi: usize| pptr.get().add(((g * spans + c) * n + qi) * stride);
                let task = Task {
                    q: |qi: usize| q.as_ptr().add(g * rep * m * HD + rows[qi]),
                    part: |qi: usize| part(c, qi),
                    lens,
                    start: c * SPAN,
                    end: ((c + 1) * SPAN).min(keys),
                };
                SCRATCH.with_borrow_mut(|scratch| {
                    task.run::<T, HD>(
                        &k[base..base + keys * HD],
                        &v[base..base + keys * HD],
                        scratch,
                    )
                });
                // The last of the head's spans to finish merges them; the counter orders the
                // other tasks' writes before this one's reads.
                if done[g].fetch_add(1, Ordering::AcqRel) + 1 == spans {
                    for (qi, len) in lens.iter().enumerate() {
                        let at = optr.get().add(((qi / rep) * heads + head(qi)) * HD);
                        merge::<HD>(|c| part(c, qi), len.div_ceil(SPAN), at);
                    }
                }
            };
            if m * keys * heads <= 1 << 11 {
                (0..kv_heads * spans).for_each(run);
            } else {
                crate::kernels::team::for_each(kv_heads * spans, run);
            }
        };
        // Never borrowed already: the kernel threads do not run another call's work while
        // they wait (as rayon's workers did), and no task calls attention.
        CALL.with_borrow_mut(with_call);
    }

    /// One query's result from its spans `0..spans` (`part(c)`, see [`OUT`]), in span order:
    /// each span's exponentials rescaled to the largest maximum, outputs summed, divided by
    /// the sum.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn merge<const HD: usize>(
        part: impl Fn(usize) -> *mut f32,
        spans: usize,
        out: *mut f32,
    ) {
        let max = (0..spans).fold(f32::NEG_INFINITY, |a, c| a.max(*part(c).add(MAX)));
        let mut sum = 0f32;
        for c in 0..spans {
            let p = part(c);
            // The weight replaces the span's maximum; only the merge reads it again.
            *p.add(MAX) = exp_neg(*p.add(MAX) - max);
            sum += *p.add(MAX) * *p.add(SUM);
        }
        let inv = _mm256_set1_ps(1.0 / sum);
        for col in (0..HD).step_by(32) {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in 0..spans {
                let p = part(c);
                let w = _mm256_set1_ps(*p.add(MAX));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(p.add(OUT + col + i * 8)), *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(col + i * 8), _mm256_mul_ps(*a, inv));
            }
        }
    }

    /// Queries `0..lens.len()` of one KV head against its keys and values `start..end` (one
    /// span); query qi reads `q(qi)` (hd values), attends to keys `0..lens[qi]` (never fewer
    /// than an earlier query) and leaves its part of the span at `part(qi)` (see [`OUT`]).
    struct Task<'a, Q, P> {
        q: Q,
        part: P,
        lens: &'a [usize],
        start: usize,
        end: usize,
    }

    impl<Q, P> Task<'_, Q, P>
    where
        Q: Fn(usize) -> *const f32,
        P: Fn(usize) -> *mut f32,
    {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn run<T: CacheValue, const HD: usize>(&self, k: &[T], v: &[T], s: &mut Scratch) {
            let (hd, n) = (HD, self.lens.len());
            s.keys.resize(KEYS * hd, 0.0);
            s.scores.resize(s.scores.len().max(n * SPAN), 0.0);
            // The span's keys are hinted two blocks ahead of the scoring, and each block's
            // values while its keys are scored, so that the values pass finds them near (a
            // span is 16 KB of f16 at a head size of 64). Into L2, as the matmuls' hints (see
            // `simd::hint`): L1 hints made forwards of 1 to 4 tokens 2 to 3% slower. Past the end
            // the hints point nowhere, which a prefetch ignores (`wrapping_add` keeps the
            // arithmetic defined).
            let bytes = |rows: usize| rows * hd * std::mem::size_of::<T>();
            let hint_rows = |p: *const T, rows: std::ops::Range<usize>| {
                let p = p as *const i8;
                for l in (bytes(rows.start)..bytes(rows.end.min(self.end))).step_by(64) {
                    hint(p.wrapping_add(l));
                }
            };
            hint_rows(k.as_ptr(), self.start..self.start + 2 * KEYS);
            let sp = s.scores.as_mut_ptr();
            let scores = |j: usize| sp.add(j - self.start);
            for j in (self.start..self.end).step_by(KEYS) {
                hint_rows(k.as_ptr(), j + 2 * KEYS..j + 3 * KEYS);
                hint_rows(v.as_ptr(), j..j + KEYS);
                let have = (self.end - j).min(KEYS);
                if have == KEYS {
                    self.score::<T, HD>(j, k.as_ptr().add(j * hd), scores(j));
                } else {
                    // The cache past the last key is not ours to read: a copy, whose missing
                    // keys are scored, never used, kept finite (the f32 values are the same as
                    // the f16 ones).
                    T::widen(&k[j * hd..(j + have) * hd], &mut s.keys[..have * hd]);
                    s.keys[have * hd..].fill(0.0);
                    self.score::<f32, HD>(j, s.keys.as_ptr(), scores(j));
                }
            }
            for qi in self.first(self.start)..n {
                let part = (self.part)(qi);
                let reach = self.lens[qi].min(self.end) - self.start;
                let row = std::slice::from_raw_parts_mut(scores(self.start).add(qi * SPAN), reach);
                (*part.add(MAX), *part.add(SUM)) = softmax(row);
                std::ptr::write_bytes(part.add(OUT), 0, hd);
            }
            for j in (self.start..self.end).step_by(VALUES) {
                let have = (self.end - j).min(VALUES);
                self.add::<T, HD>(j, have, v.as_ptr().add(j * hd), scores(j));
            }
        }

        /// The first query that reaches key `j`: queries are in row order, so the ones that
        /// reach a block are a suffix, found by bisection.
        fn first(&self, j: usize) -> usize {
            self.lens.partition_point(|&len| len <= j)
        }

        /// Scores of every query that reaches them against the [`KEYS`] keys at `keys` (key j
        /// of the head onwards), into `scores` (key j of query 0's row; rows [`SPAN`] apart),
        /// two queries at a time sharing every load.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn score<E: CacheValue, const HD: usize>(
            &self,
            j: usize,
            keys: *const E,
            scores: *mut f32,
        ) {
            let scale = _mm_set1_ps(1.0 / (HD as f32).sqrt());
            let (n, out) = (self.lens.len(), |qi: usize| scores.add(qi * SPAN));
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
        /// softmax numerators at `p` (rows [`SPAN`] apart), to every query that reaches them,
        /// two queries at a time sharing every load.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn add<E: CacheValue, const HD: usize>(
            &self,
            j: usize,
            have: usize,
            values: *const E,
            p: *const f32,
        ) {
            let n = self.lens.len();
            let p = |qi: usize| p.add(qi * SPAN);
            let out = |qi: usize| (self.part)(qi).add(OUT);
            let rows = |qi: usize| (self.lens[qi] - j).min(have);
            let mut qi = self.first(j);
            while qi + 2 <= n {
                // Both take the values they share, then the later row its own last ones.
                let (a, b) = (rows(qi), rows(qi + 1));
                let o = [out(qi), out(qi + 1)];
                add_values::<E, HD, 2>([p(qi), p(qi + 1)], 0..a.min(b), values, o);
                add_values::<E, HD, 1>([p(qi + 1)], a.min(b)..b, values, [o[1]]);
                qi += 2;
            }
            if qi < n {
                add_values::<E, HD, 1>([p(qi)], 0..rows(qi), values, [out(qi)]);
            }
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

    /// Scores to softmax numerators in place; returns their maximum and the numerators' sum.
    /// The max is exact in any order; the sum keeps eight lane sums, folded by `sum_lanes`,
    /// then the tail in order.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn softmax(scores: &mut [f32]) -> (f32, f32) {
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
        (max, total)
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
        // Blocks within one span, across a span's end, on a cache of several spans, and more
        // rows than one portable task takes.
        for (m, off) in [(7, 30), (7, 60), (5, 190), (21, 40)] {
            check_block(hd, m, off);
        }
    }

    fn check_block(hd: usize, m: usize, off: usize) {
        let (nh, nkv, cap) = (6, 2, 256);
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
        let q: Vec<f32> = (0..nh * m * hd).map(|_| rnd() * 4.0).collect();
        // Filled with NaN first: every value must be written.
        let mut got = vec![f32::NAN; m * nh * hd];
        causal_attention(&q, &k, &v, nh, nkv, m, hd, cap, off, &mut got);
        let want = naive(&q, &kf, &vf, nh, nkv, m, hd, cap, off);
        // The portable path too where the vector one took the call.
        let mut portable = vec![f32::NAN; m * nh * hd];
        portable::attention(&q, &k, &v, nh, nkv, m, hd, cap, off, &mut portable);
        for (a, b) in got.iter().chain(&portable).zip(want.iter().cycle()) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Row i of the block equals a one-query call at offset + i, bit for bit.
        for i in 0..m {
            let q1: Vec<f32> = (0..nh)
                .flat_map(|h| q[(h * m + i) * hd..][..hd].to_vec())
                .collect();
            let mut one = vec![f32::NAN; nh * hd];
            causal_attention(&q1, &k, &v, nh, nkv, 1, hd, cap, off + i, &mut one);
            assert_eq!(&one[..], &got[i * nh * hd..(i + 1) * nh * hd]);
            portable::attention(&q1, &k, &v, nh, nkv, 1, hd, cap, off + i, &mut one);
            assert_eq!(&one[..], &portable[i * nh * hd..(i + 1) * nh * hd]);
        }
    }
}
