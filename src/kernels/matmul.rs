//! `out (m, n) = x (m, k) @ w (n, k)^T` on quantized blocks. Weight rows are split over the
//! thread pool. Each weight row is unpacked once, then each four-value chunk of it is broadcast
//! against a vector holding that chunk for eight activation rows ([`QuantActs`]' layout): one
//! multiply gives eight rows' partial sums, and each vector lane is one row from start to end.
//! A pass over eight rows therefore costs what a pass over one row costs, and a row's result
//! never depends on which other rows share the call.

use rayon::prelude::*;

use super::quant::{QuantActs, QuantMatrix, BLOCK, ROWS};
use super::simd::multiversion;

/// Weight rows per task: small enough to balance two threads, large enough to amortise.
const ROWS_PER_TASK: usize = 32;

/// Writes through a raw pointer from several threads; each (r, o) is written by exactly one.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

pub fn matmul(w: &QuantMatrix, x: &QuantActs, out: &mut [f32]) {
    let (n, k) = w.dims();
    assert_eq!(x.k, k, "activation width {} vs weight width {k}", x.k);
    let m = x.m;
    assert_eq!(out.len(), m * n);
    let ptr = OutPtr(out.as_mut_ptr());
    let tasks = n.div_ceil(ROWS_PER_TASK);
    let avx2 = super::simd::has_avx2();
    let run = |t: usize| {
        let ptr = ptr;
        let (start, end) = (t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n));
        #[cfg(target_arch = "x86_64")]
        if avx2 && m == 1 {
            let mut four = [0f32; 4];
            let mut o = start;
            while o < end {
                let r = (end - o).min(4);
                // SAFETY: AVX2 and FMA were detected; rows o..o + r are in bounds.
                unsafe {
                    match r {
                        4 => avx2::row1::<4>(w, x, o, &mut four),
                        3 => avx2::row1::<3>(w, x, o, &mut four),
                        2 => avx2::row1::<2>(w, x, o, &mut four),
                        _ => avx2::row1::<1>(w, x, o, &mut four),
                    }
                }
                for i in 0..r {
                    // SAFETY: (0, o + i) is owned by this task.
                    unsafe { *ptr.0.add(o + i) = four[i] };
                }
                o += r;
            }
            return;
        }
        let mut unpacked = vec![0u8; k];
        let mut unpacked2 = vec![0u8; k];
        let mut res = [0f32; ROWS];
        let mut res2 = [0f32; ROWS];
        let mut o = start;
        while o < end {
            // Two Q4 weight rows per pass share every activation load (the kernel is bound by
            // loads, not multiplies); each output is still computed exactly as alone.
            let pair = cfg!(target_arch = "x86_64")
                && avx2
                && o + 1 < end
                && matches!(w, QuantMatrix::Q4 { .. });
            unpack_row(w, o, &mut unpacked);
            if pair {
                unpack_row(w, o + 1, &mut unpacked2);
            }
            for g in 0..x.groups() {
                #[cfg(target_arch = "x86_64")]
                if pair {
                    // SAFETY: AVX2 and FMA were detected; rows o and o + 1 are in bounds.
                    unsafe {
                        avx2::rows8x2(w, x, o, g, [&unpacked, &unpacked2], [&mut res, &mut res2])
                    };
                } else if avx2 {
                    // SAFETY: AVX2 and FMA were detected.
                    unsafe { avx2::rows8(w, x, o, g, &unpacked, &mut res) };
                } else {
                    rows8_scalar(w, x, o, g, &unpacked, &mut res);
                }
                #[cfg(not(target_arch = "x86_64"))]
                rows8_scalar(w, x, o, g, &unpacked, &mut res);
                let outs: &[(usize, &[f32; ROWS])] = if pair {
                    &[(o, &res), (o + 1, &res2)]
                } else {
                    &[(o, &res)]
                };
                for &(col, r) in outs {
                    for (lane, &v) in r.iter().enumerate().take(m - g * ROWS) {
                        // SAFETY: (g * ROWS + lane, col) is in bounds and owned by this task.
                        unsafe { *ptr.0.add((g * ROWS + lane) * n + col) = v };
                    }
                }
            }
            o += if pair { 2 } else { 1 };
        }
    };
    let _ = avx2;
    if tasks > 1 && m * n * k >= 1 << 16 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Weight row `o` as one code byte per value: Q4 codes 0..16, or Q8 codes as their bits.
fn unpack_row(w: &QuantMatrix, o: usize, out: &mut [u8]) {
    let k = out.len();
    match w {
        QuantMatrix::Q4 { qs, .. } => unpack_q4(&qs[o * k / 2..(o + 1) * k / 2], out),
        QuantMatrix::Q8 { qs, .. } => {
            for (o, &q) in out.iter_mut().zip(&qs[o * k..(o + 1) * k]) {
                *o = q as u8;
            }
        }
    }
}

multiversion! {
    fn unpack_q4(row: &[u8], out: &mut [u8]) {
        for (bytes, vals) in row.chunks_exact(16).zip(out.chunks_exact_mut(BLOCK)) {
            let (lo, hi) = vals.split_at_mut(16);
            for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(bytes) {
                *l = b & 0x0F;
                *h = b >> 4;
            }
        }
    }
}

/// Portable kernel with the same per-row arithmetic order as the AVX2 one: exact integer block
/// sums, then per block `acc += isum * (dw * dx)` and (Q4) `offset += m * s`.
fn rows8_scalar(
    w: &QuantMatrix,
    x: &QuantActs,
    o: usize,
    g: usize,
    wq: &[u8],
    res: &mut [f32; ROWS],
) {
    let k = x.k;
    let nb = k / BLOCK;
    for lane in 0..ROWS {
        let r = g * ROWS + lane;
        if r >= x.m {
            res[lane] = 0.0;
            continue;
        }
        let (mut acc, mut offset) = (0f32, 0f32);
        for b in 0..nb {
            let mut isum = 0i32;
            for j in 0..BLOCK {
                let wv = match w {
                    QuantMatrix::Q4 { .. } => wq[b * BLOCK + j] as i32,
                    QuantMatrix::Q8 { .. } => wq[b * BLOCK + j] as i8 as i32,
                };
                isum += wv * x.code(r, b * BLOCK + j) as i32;
            }
            let (dw, mw) = match w {
                QuantMatrix::Q4 { d, m, .. } => (d[o * nb + b], m[o * nb + b]),
                QuantMatrix::Q8 { d, .. } => (d[o * nb + b], 0.0),
            };
            acc += isum as f32 * (dw * x.scale(r, b));
            offset += mw * x.scaled_sum(r, b);
        }
        res[lane] = acc + offset;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::quant::{QuantActs, QuantMatrix, BLOCK, ROWS};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// Weight row `o` against the only activation row (m == 1), straight from the packed
    /// weights. The integer block sums are exact however they are computed, and the float steps
    /// per block are the ones `rows8` does in each lane (`acc = fma(isum, dw * dx, acc)`,
    /// `offset = fma(m, s, offset)`, then `acc + offset`), so the result is bit-identical to
    /// that row's lane in a many-row call.
    /// `R` consecutive weight rows from `o`, each with its own chains (independent chains
    /// hide the multiply-add latency).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row1<const R: usize>(
        w: &QuantMatrix,
        x: &QuantActs,
        o: usize,
        out: &mut [f32; 4],
    ) {
        let nb = x.k / BLOCK;
        let ones = _mm256_set1_epi16(1);
        let xr = x.row.as_ptr();
        let mut acc = [0f32; R];
        let mut offset = [0f32; R];
        match w {
            QuantMatrix::Q4 { qs, d, m, .. } => {
                let mask = _mm_set1_epi8(0x0F);
                for b in 0..nb {
                    let xv = _mm256_loadu_si256(xr.add(b * BLOCK) as *const __m256i);
                    let (dx, sx) = (*x.d.get_unchecked(b * ROWS), *x.s.get_unchecked(b * ROWS));
                    for r in 0..R {
                        let blk = (o + r) * nb + b;
                        _mm_prefetch::<_MM_HINT_T0>(qs.as_ptr().add((blk + 8) * 16) as *const i8);
                        let raw = _mm_loadu_si128(qs.as_ptr().add(blk * 16) as *const __m128i);
                        let wv = _mm256_set_m128i(
                            _mm_and_si128(_mm_srli_epi16(raw, 4), mask),
                            _mm_and_si128(raw, mask),
                        );
                        let isum =
                            hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones));
                        acc[r] = (isum as f32).mul_add(*d.get_unchecked(blk) * dx, acc[r]);
                        offset[r] = m.get_unchecked(blk).mul_add(sx, offset[r]);
                    }
                }
            }
            QuantMatrix::Q8 { qs, d, .. } => {
                for b in 0..nb {
                    let xv = _mm256_loadu_si256(xr.add(b * BLOCK) as *const __m256i);
                    let dx = *x.d.get_unchecked(b * ROWS);
                    for r in 0..R {
                        let blk = (o + r) * nb + b;
                        _mm_prefetch::<_MM_HINT_T0>(qs.as_ptr().add((blk + 4) * BLOCK) as *const i8);
                        let wv = _mm256_loadu_si256(qs.as_ptr().add(blk * BLOCK) as *const __m256i);
                        let p = _mm256_maddubs_epi16(
                            _mm256_sign_epi8(wv, wv),
                            _mm256_sign_epi8(xv, wv),
                        );
                        let isum = hsum_epi32(_mm256_madd_epi16(p, ones));
                        acc[r] = (isum as f32).mul_add(*d.get_unchecked(blk) * dx, acc[r]);
                    }
                }
            }
        }
        for r in 0..R {
            out[r] = acc[r] + offset[r];
        }
    }

    /// Weight row `o` (unpacked codes `wq`) against activation rows `g*8..g*8+8`; lane r of
    /// every vector belongs to row g*8+r.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows8(
        w: &QuantMatrix,
        x: &QuantActs,
        o: usize,
        g: usize,
        wq: &[u8],
        res: &mut [f32; ROWS],
    ) {
        let nb = x.k / BLOCK;
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut offset = _mm256_setzero_ps();
        let wp = wq.as_ptr();
        match w {
            QuantMatrix::Q4 { d, m, .. } => {
                for b in 0..nb {
                    let xb = x.qs.as_ptr().add((g * nb + b) * ROWS * BLOCK);
                    // Q4 codes are < 16, so eight chunks of pair sums fit in i16.
                    let mut s16 = _mm256_setzero_si256();
                    for c in 0..8 {
                        let wc = _mm256_set1_epi32(
                            (wp.add(b * BLOCK + c * 4) as *const i32).read_unaligned(),
                        );
                        let xv = _mm256_loadu_si256(xb.add(c * ROWS * 4) as *const __m256i);
                        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(wc, xv));
                    }
                    let isum = _mm256_madd_epi16(s16, ones);
                    let at = (g * nb + b) * ROWS;
                    let scale = _mm256_mul_ps(
                        _mm256_set1_ps(*d.get_unchecked(o * nb + b)),
                        _mm256_loadu_ps(x.d.as_ptr().add(at)),
                    );
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
                    offset = _mm256_fmadd_ps(
                        _mm256_set1_ps(*m.get_unchecked(o * nb + b)),
                        _mm256_loadu_ps(x.s.as_ptr().add(at)),
                        offset,
                    );
                }
            }
            QuantMatrix::Q8 { d, .. } => {
                for b in 0..nb {
                    let xb = x.qs.as_ptr().add((g * nb + b) * ROWS * BLOCK);
                    let mut isum = _mm256_setzero_si256();
                    for c in 0..8 {
                        let wc = _mm256_set1_epi32(
                            (wp.add(b * BLOCK + c * 4) as *const i32).read_unaligned(),
                        );
                        let xv = _mm256_loadu_si256(xb.add(c * ROWS * 4) as *const __m256i);
                        // maddubs multiplies unsigned by signed: move w's sign onto x.
                        let p = _mm256_maddubs_epi16(
                            _mm256_sign_epi8(wc, wc),
                            _mm256_sign_epi8(xv, wc),
                        );
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
                    }
                    let at = (g * nb + b) * ROWS;
                    let scale = _mm256_mul_ps(
                        _mm256_set1_ps(*d.get_unchecked(o * nb + b)),
                        _mm256_loadu_ps(x.d.as_ptr().add(at)),
                    );
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
                }
            }
        }
        _mm256_storeu_ps(res.as_mut_ptr(), _mm256_add_ps(acc, offset));
    }

    /// [`rows8`] for Q4 weight rows `o` and `o + 1` at once: each activation vector is loaded
    /// once for both. Per lane the operations are `rows8`'s, in the same order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows8x2(
        w: &QuantMatrix,
        x: &QuantActs,
        o: usize,
        g: usize,
        wq: [&[u8]; 2],
        res: [&mut [f32; ROWS]; 2],
    ) {
        let nb = x.k / BLOCK;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut offset = [_mm256_setzero_ps(); 2];
        let wp = [wq[0].as_ptr(), wq[1].as_ptr()];
        let chunk = |r: usize, b: usize, c: usize| {
            _mm256_set1_epi32((wp[r].add(b * BLOCK + c * 4) as *const i32).read_unaligned())
        };
        match w {
            QuantMatrix::Q4 { d, m, .. } => {
                for b in 0..nb {
                    let xb = x.qs.as_ptr().add((g * nb + b) * ROWS * BLOCK);
                    let mut s16 = [_mm256_setzero_si256(); 2];
                    for c in 0..8 {
                        let xv = _mm256_loadu_si256(xb.add(c * ROWS * 4) as *const __m256i);
                        for r in 0..2 {
                            s16[r] =
                                _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(chunk(r, b, c), xv));
                        }
                    }
                    let at = (g * nb + b) * ROWS;
                    let xd = _mm256_loadu_ps(x.d.as_ptr().add(at));
                    let xs = _mm256_loadu_ps(x.s.as_ptr().add(at));
                    for r in 0..2 {
                        let isum = _mm256_madd_epi16(s16[r], ones);
                        let scale =
                            _mm256_mul_ps(_mm256_set1_ps(*d.get_unchecked((o + r) * nb + b)), xd);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
                        offset[r] = _mm256_fmadd_ps(
                            _mm256_set1_ps(*m.get_unchecked((o + r) * nb + b)),
                            xs,
                            offset[r],
                        );
                    }
                }
            }
            QuantMatrix::Q8 { .. } => {
                // Pairing measured 40% slower on Q8 (the LM head): one row at a time.
                let [r0, r1] = res;
                rows8(w, x, o, g, wq[0], r0);
                rows8(w, x, o + 1, g, wq[1], r1);
                return;
            }
        }
        let [r0, r1] = res;
        _mm256_storeu_ps(r0.as_mut_ptr(), _mm256_add_ps(acc[0], offset[0]));
        _mm256_storeu_ps(r1.as_mut_ptr(), _mm256_add_ps(acc[1], offset[1]));
    }
}

/// Plain f64 math on the same quantized values: what the kernels must agree with.
pub fn matmul_reference(w: &QuantMatrix, x: &QuantActs) -> Vec<f32> {
    let (n, k) = w.dims();
    let wf = w.dequantize();
    let xf: Vec<f64> = (0..x.m * k)
        .map(|i| x.code(i / k, i % k) as f64 * x.scale(i / k, (i % k) / BLOCK) as f64)
        .collect();
    let mut out = vec![0f32; x.m * n];
    for r in 0..x.m {
        for o in 0..n {
            let s: f64 = (0..k).map(|j| xf[r * k + j] * wf[o * k + j] as f64).sum();
            out[r * n + o] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    fn q4(n: usize, k: usize, seed: u64) -> QuantMatrix {
        let mut r = rng(seed);
        let nb = n * k / BLOCK;
        QuantMatrix::Q4 {
            n,
            k,
            qs: (0..nb * 16).map(|_| ((r() + 0.5) * 255.0) as u8).collect(),
            d: (0..nb).map(|_| r() * 0.1).collect(),
            m: (0..nb).map(|_| r() * 0.5).collect(),
        }
    }

    fn raw_acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        // Outliers in a few channels, like real activations.
        (0..m * k)
            .map(|i| r() * if i % 37 == 0 { 40.0 } else { 2.0 })
            .collect()
    }

    fn acts(m: usize, k: usize, seed: u64) -> QuantActs {
        let mut a = QuantActs::default();
        a.quantize(&raw_acts(m, k, seed), m, k);
        a
    }

    fn check(w: &QuantMatrix, x: &QuantActs) {
        let (n, _) = w.dims();
        let mut out = vec![0f32; x.m * n];
        matmul(w, x, &mut out);
        let want = matmul_reference(w, x);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * scale.max(1e-6),
                "{}: {a} vs {b} (scale {scale})",
                i
            );
        }
    }

    #[test]
    fn kernels_match_the_reference_on_ragged_sizes() {
        for (n, k, m) in [
            (1, 32, 1),
            (33, 64, 3),
            (70, 96, 5),
            (129, 576, 9),
            (64, 1536, 16),
            (5, 32, 17),
        ] {
            let w4 = q4(n, k, n as u64);
            let x = acts(m, k, k as u64 + m as u64);
            check(&w4, &x);
            let wf = w4.dequantize();
            let w8 = QuantMatrix::quantize_q8(n, k, &wf);
            check(&w8, &x);
        }
    }

    #[test]
    fn results_do_not_depend_on_how_many_rows_share_the_call() {
        let (n, k, m) = (100, 192, 11);
        for w in [
            q4(n, k, 3),
            QuantMatrix::quantize_q8(n, k, &q4(n, k, 4).dequantize()),
        ] {
            let raw = raw_acts(m, k, 9);
            let mut x = QuantActs::default();
            x.quantize(&raw, m, k);
            let mut all = vec![0f32; m * n];
            matmul(&w, &x, &mut all);
            for r in 0..m {
                let mut one = QuantActs::default();
                one.quantize(&raw[r * k..(r + 1) * k], 1, k);
                let mut out = vec![0f32; n];
                matmul(&w, &one, &mut out);
                assert_eq!(&out[..], &all[r * n..(r + 1) * n], "row {r}");
            }
            // And against the portable kernel's arithmetic order, row by row.
            let mut scalar = [0f32; ROWS];
            let mut wq = vec![0u8; k];
            unpack_row(&w, 7, &mut wq);
            rows8_scalar(&w, &x, 7, 1, &wq, &mut scalar);
            for lane in 0..ROWS.min(m - ROWS) {
                let a = all[(ROWS + lane) * n + 7];
                assert!(
                    (scalar[lane] - a).abs() <= 1e-4 * a.abs().max(1.0),
                    "{} vs {a}",
                    scalar[lane]
                );
            }
        }
    }

    #[test]
    fn gguf_block_parsers_agree_with_dequantization() {
        // One Q4_0 block: d = 0.5, codes 0..16 then 15..0 -> values (q - 8) / 2.
        let mut raw = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let w = QuantMatrix::from_q4_0(1, 32, &raw);
        let vals = w.dequantize();
        assert_eq!(vals[0], -4.0);
        assert_eq!(vals[15], 3.5);
        assert_eq!(vals[16], 3.5);
        assert_eq!(vals[31], -4.0);
        let mut raw = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        raw.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let w = QuantMatrix::from_q8_0(1, 32, &raw);
        assert_eq!(w.dequantize()[0], -4.0);
        assert_eq!(w.dequantize()[31], 3.75);
    }
}
