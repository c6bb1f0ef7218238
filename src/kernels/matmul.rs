//! `out (m, n) = x (m, k) @ w (n, k)^T` on quantized blocks. Output rows of the weight are split
//! over the thread pool; for each weight row, every block is loaded (and for Q4 unpacked) once
//! and used for all m activation rows.

use rayon::prelude::*;

use super::quant::{QuantActs, QuantMatrix, BLOCK};

/// Weight rows per task: small enough to balance two threads, large enough to amortise.
const ROWS_PER_TASK: usize = 32;

/// Activation rows handled against one unpacked weight row at a time.
const MAX_ROWS: usize = 64;

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
    let run = |t: usize| {
        let ptr = ptr;
        let mut res = [0f32; MAX_ROWS];
        for o in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n) {
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(MAX_ROWS);
                row_block(w, x, o, r, rows, &mut res);
                for i in 0..rows {
                    // SAFETY: (r + i, o) is in bounds and owned by this task.
                    unsafe { *ptr.0.add((r + i) * n + o) = res[i] };
                }
                r += rows;
            }
        }
    };
    if tasks > 1 && m * n * k >= 1 << 16 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Dot products of weight row `o` with activation rows `r0..r0 + rows` (rows <= MAX_ROWS).
fn row_block(
    w: &QuantMatrix,
    x: &QuantActs,
    o: usize,
    r0: usize,
    rows: usize,
    res: &mut [f32; MAX_ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            unsafe { avx2::row_block(w, x, o, r0, rows, res) };
            return;
        }
    }
    for i in 0..rows {
        res[i] = scalar_dot(w, x, o, r0 + i);
    }
}

/// Portable kernel: exact integer block sums, scaled and accumulated in block order.
fn scalar_dot(w: &QuantMatrix, x: &QuantActs, o: usize, r: usize) -> f32 {
    let k = x.k;
    let nb = k / BLOCK;
    let xq = &x.qs[r * k..(r + 1) * k];
    let mut acc = 0f32;
    match w {
        QuantMatrix::Q4 { qs, d, m, .. } => {
            let mut offset = 0f32;
            for b in 0..nb {
                let bytes = &qs[(o * nb + b) * 16..][..16];
                let xb = &xq[b * BLOCK..][..BLOCK];
                let mut isum = 0i32;
                for j in 0..16 {
                    isum += (bytes[j] & 0x0F) as i32 * xb[j] as i32;
                    isum += (bytes[j] >> 4) as i32 * xb[j + 16] as i32;
                }
                acc += isum as f32 * (d[o * nb + b] * x.d[r * nb + b]);
                offset += m[o * nb + b] * x.s[r * nb + b];
            }
            acc + offset
        }
        QuantMatrix::Q8 { qs, d, .. } => {
            for b in 0..nb {
                let wb = &qs[(o * nb + b) * BLOCK..][..BLOCK];
                let xb = &xq[b * BLOCK..][..BLOCK];
                let isum: i32 = wb.iter().zip(xb).map(|(&a, &b)| a as i32 * b as i32).sum();
                acc += isum as f32 * (d[o * nb + b] * x.d[r * nb + b]);
            }
            acc
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::super::quant::{QuantActs, QuantMatrix, BLOCK};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Dot product of two f32 runs with eight lanes (fixed order).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc);
            i += 8;
        }
        let mut s = hsum(acc);
        while i < n {
            s += *a.add(i) * *b.add(i);
            i += 1;
        }
        s
    }

    /// Sums the eight i32 lanes of each of `p[0..8]`: lane j of the result is the sum of p[j].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reduce8(p: &[__m256i; 8]) -> __m256i {
        let t0 = _mm256_hadd_epi32(p[0], p[1]);
        let t1 = _mm256_hadd_epi32(p[2], p[3]);
        let t2 = _mm256_hadd_epi32(p[4], p[5]);
        let t3 = _mm256_hadd_epi32(p[6], p[7]);
        let u0 = _mm256_hadd_epi32(t0, t1);
        let u1 = _mm256_hadd_epi32(t2, t3);
        _mm256_add_epi32(
            _mm256_permute2x128_si256(u0, u1, 0x20),
            _mm256_permute2x128_si256(u0, u1, 0x31),
        )
    }

    /// A Q4 block's 32 codes as bytes in value order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn unpack_q4(p: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(raw, 4), mask),
            _mm_and_si128(raw, mask),
        )
    }

    /// Weight block `b` (global index) as unsigned bytes for maddubs, plus (Q8) its signs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(w: &QuantMatrix, b: usize) -> (__m256i, __m256i) {
        match w {
            QuantMatrix::Q4 { qs, .. } => {
                (unpack_q4(qs.as_ptr().add(b * 16)), _mm256_setzero_si256())
            }
            QuantMatrix::Q8 { qs, .. } => {
                let v = _mm256_loadu_si256(qs.as_ptr().add(b * BLOCK) as *const __m256i);
                (_mm256_sign_epi8(v, v), v)
            }
        }
    }

    /// The eight pairwise i32 sums of one block's 32 products.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn prod(is_q4: bool, wu: __m256i, ws: __m256i, xv: __m256i, ones: __m256i) -> __m256i {
        let xv = if is_q4 { xv } else { _mm256_sign_epi8(xv, ws) };
        _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), ones)
    }

    /// `rows` activation rows against one weight row. Blocks go in groups of eight: the eight
    /// integer block sums of a row are reduced into one vector and scaled with one multiply-add,
    /// which is what keeps a many-row call cheap. Each row has its own accumulators and the same
    /// instruction sequence whatever `rows` is, so its result does not depend on the batch.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_block(
        w: &QuantMatrix,
        x: &QuantActs,
        o: usize,
        r0: usize,
        rows: usize,
        res: &mut [f32; super::MAX_ROWS],
    ) {
        let k = x.k;
        let nb = k / BLOCK;
        let groups = nb / 8;
        let ones = _mm256_set1_epi16(1);
        // Only the first `rows` entries are used; zeroing all of them per call would cost more
        // than a one-row matmul.
        let mut acc = [const { MaybeUninit::<__m256>::uninit() }; super::MAX_ROWS];
        let mut tail = [const { MaybeUninit::<__m256>::uninit() }; super::MAX_ROWS];
        for r in 0..rows {
            acc[r].write(_mm256_setzero_ps());
            tail[r].write(_mm256_setzero_ps());
        }
        let xq = x.qs.as_ptr();
        let xd = x.d.as_ptr();
        // Unsigned weight bytes for maddubs, and for Q8 the signs to move onto x.
        let mut wu = [_mm256_setzero_si256(); 8];
        let mut ws = [_mm256_setzero_si256(); 8];
        let (is_q4, d) = match w {
            QuantMatrix::Q4 { d, .. } => (true, d.as_ptr().add(o * nb)),
            QuantMatrix::Q8 { d, .. } => (false, d.as_ptr().add(o * nb)),
        };
        for g in 0..groups {
            for j in 0..8 {
                (wu[j], ws[j]) = load(w, o * nb + g * 8 + j);
            }
            let dw = _mm256_loadu_ps(d.add(g * 8));
            for r in 0..rows {
                let row = r0 + r;
                let xp = xq.add(row * k + g * 8 * BLOCK);
                let mut p = [_mm256_setzero_si256(); 8];
                for j in 0..8 {
                    p[j] = prod(
                        is_q4,
                        wu[j],
                        ws[j],
                        _mm256_loadu_si256(xp.add(j * BLOCK) as *const __m256i),
                        ones,
                    );
                }
                let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(xd.add(row * nb + g * 8)));
                acc[r].write(_mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(reduce8(&p)),
                    scale,
                    acc[r].assume_init(),
                ));
            }
        }
        for b in groups * 8..nb {
            let (u, sg) = load(w, o * nb + b);
            let dw = *d.add(b);
            for r in 0..rows {
                let row = r0 + r;
                let p = prod(
                    is_q4,
                    u,
                    sg,
                    _mm256_loadu_si256(xq.add(row * k + b * BLOCK) as *const __m256i),
                    ones,
                );
                let scale = _mm256_set1_ps(dw * *xd.add(row * nb + b));
                tail[r].write(_mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(p),
                    scale,
                    tail[r].assume_init(),
                ));
            }
        }
        for r in 0..rows {
            let row = r0 + r;
            let offset = match w {
                QuantMatrix::Q4 { m, .. } => {
                    dot(m.as_ptr().add(o * nb), x.s.as_ptr().add(row * nb), nb)
                }
                QuantMatrix::Q8 { .. } => 0.0,
            };
            res[r] = hsum(acc[r].assume_init()) + hsum(tail[r].assume_init()) + offset;
        }
    }
}

/// Plain f64 math on the same quantized values: what the kernels must agree with.
pub fn matmul_reference(w: &QuantMatrix, x: &QuantActs) -> Vec<f32> {
    let (n, k) = w.dims();
    let wf = w.dequantize();
    let nb = k / BLOCK;
    let xf: Vec<f64> = (0..x.m * k)
        .map(|i| x.qs[i] as f64 * x.d[(i / k) * nb + (i % k) / BLOCK] as f64)
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

    fn acts(m: usize, k: usize, seed: u64) -> QuantActs {
        let mut r = rng(seed);
        // Outliers in a few channels, like real activations.
        let x: Vec<f32> = (0..m * k)
            .map(|i| r() * if i % 37 == 0 { 40.0 } else { 2.0 })
            .collect();
        let mut a = QuantActs::default();
        a.quantize(&x, m, k);
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
            let x = acts(m, k, 9);
            let mut all = vec![0f32; m * n];
            matmul(&w, &x, &mut all);
            for r in 0..m {
                let mut one = QuantActs::default();
                one.m = 1;
                one.k = k;
                one.qs = x.qs[r * k..(r + 1) * k].to_vec();
                one.d = x.d[r * k / BLOCK..(r + 1) * k / BLOCK].to_vec();
                one.s = x.s[r * k / BLOCK..(r + 1) * k / BLOCK].to_vec();
                let mut out = vec![0f32; n];
                matmul(&w, &one, &mut out);
                assert_eq!(&out[..], &all[r * n..(r + 1) * n], "row {r}");
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
