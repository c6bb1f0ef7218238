//! `out (m, n) = x (m, k) @ w (n, k)^T` on quantized blocks. Weight rows are split over the
//! thread pool.
//!
//! Many rows (more than [`FEW_ROWS`]): each weight row is unpacked once, then each four-value
//! chunk of it is broadcast against a vector holding that chunk for eight activation rows
//! ([`QuantActs`]' layout): one multiply gives eight rows' partial sums, and each vector lane is
//! one row from start to end. A pass over eight rows therefore costs what a pass over one row
//! costs.
//!
//! One row (autoregressive decoding), or up to [`FEW_ROWS`] rows one after another: eight
//! weight rows at a time ([`TILE`]), straight from the packed codes, their block sums folded
//! into one vector with a lane per weight row, so the float steps run eight weight rows per
//! instruction instead of one.
//!
//! Either way each (row, output) gets the same float operations in the same order, so a row's
//! result never depends on which other rows share the call.

use rayon::prelude::*;

use super::quant::{QuantActs, QuantMatrix, BLOCK, FEW_ROWS, ROWS, TILE};

/// Weight rows per task: small enough to balance two threads, large enough to amortise.
const ROWS_PER_TASK: usize = 32;
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(TILE));

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
        if avx2 && m <= FEW_ROWS {
            // Tasks start at multiples of ROWS_PER_TASK, itself a multiple of TILE; rows past
            // n in the last tile are zero padding, computed and dropped.
            let mut tile = [0f32; TILE];
            for o0 in (start..end).step_by(TILE) {
                for r in 0..m {
                    // SAFETY: AVX2, FMA and F16C were detected; the tile's rows are stored.
                    unsafe { avx2::tile1(w, x, r, o0, &mut tile) };
                    for (i, &v) in tile.iter().enumerate().take(end - o0) {
                        // SAFETY: (r, o0 + i) is owned by this task.
                        unsafe { *ptr.0.add(r * n + o0 + i) = v };
                    }
                }
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
            let codes = unpack_row(w, o, &mut unpacked);
            let codes2 = if pair {
                unpack_row(w, o + 1, &mut unpacked2)
            } else {
                &[]
            };
            for g in 0..x.groups() {
                #[cfg(target_arch = "x86_64")]
                if pair {
                    // SAFETY: AVX2 and FMA were detected; rows o and o + 1 are in bounds.
                    unsafe { avx2::rows8x2(w, x, o, g, [codes, codes2], [&mut res, &mut res2]) };
                } else if avx2 {
                    // SAFETY: AVX2 and FMA were detected.
                    unsafe { avx2::rows8(w, x, o, g, codes, &mut res) };
                } else {
                    rows8_scalar(w, x, o, g, codes, &mut res);
                }
                #[cfg(not(target_arch = "x86_64"))]
                rows8_scalar(w, x, o, g, codes, &mut res);
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

/// Weight row `o` as one code byte per value: Q4 codes 0..16 unpacked into `buf` (k bytes),
/// or the Q8 codes themselves, read as bytes.
fn unpack_row<'a>(w: &'a QuantMatrix, o: usize, buf: &'a mut [u8]) -> &'a [u8] {
    let k = buf.len();
    match w {
        QuantMatrix::Q4 { qs, .. } => {
            let row = &qs[o * k / 2..(o + 1) * k / 2];
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx2() {
                // SAFETY: AVX2 was detected.
                unsafe { avx2::unpack_q4(row, buf) };
                return buf;
            }
            for (bytes, vals) in row.chunks_exact(16).zip(buf.chunks_exact_mut(BLOCK)) {
                let (lo, hi) = vals.split_at_mut(16);
                for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(bytes) {
                    *l = b & 0x0F;
                    *h = b >> 4;
                }
            }
            buf
        }
        QuantMatrix::Q8 { qs, .. } => {
            let row = &qs[o * k..(o + 1) * k];
            // SAFETY: i8 and u8 have the same size and alignment; the kernels read the bits.
            unsafe { std::slice::from_raw_parts(row.as_ptr() as *const u8, k) }
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
            let (dw, mw) = (w.scale(o, b), w.offset(o, b));
            acc += isum as f32 * (dw * x.scale(r, b));
            offset += mw * x.scaled_sum(r, b);
        }
        res[lane] = acc + offset;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::quant::{scale_index, QuantActs, QuantMatrix, BLOCK, ROWS, TILE};

    /// Q4 blocks of 16 bytes into 32 codes each: low nibbles, then high nibbles.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn unpack_q4(row: &[u8], out: &mut [u8]) {
        let mask = _mm_set1_epi8(0x0F);
        assert_eq!(out.len(), row.len() * 2);
        for b in 0..row.len() / 16 {
            let raw = _mm_loadu_si128(row.as_ptr().add(b * 16) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            _mm256_storeu_si256(
                out.as_mut_ptr().add(b * 32) as *mut __m256i,
                _mm256_set_m128i(hi, lo),
            );
        }
    }

    /// Pairwise sums within 128-bit halves, twice: lane i of each half holds the sum of that
    /// half of input i's lanes (`hadd` order).
    #[inline(always)]
    unsafe fn fold4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d))
    }

    /// Eight f16 values at `p` as f32 lanes.
    #[inline(always)]
    unsafe fn load_f16x8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// The f16 at `v[at]` in all eight lanes.
    #[inline(always)]
    unsafe fn bcast_f16(v: &[f16], at: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_set1_epi16(v.get_unchecked(at).to_bits() as i16))
    }

    /// The eight rows of a tile (`o0` a multiple of [`TILE`]) against activation row `row` (of
    /// at most `FEW_ROWS`), straight from the packed weights, one vector lane per weight row.
    /// Per block, the eight rows' integer sums are folded into one vector, then each lane does the float
    /// steps the many-row kernel does for that row (`acc = fma(isum, dw * dx, acc)`,
    /// `offset = fma(m, s, offset)`, then `acc + offset`), so the result is bit-identical to
    /// that row's lane in a many-row call.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile1(
        w: &QuantMatrix,
        x: &QuantActs,
        row: usize,
        o0: usize,
        out: &mut [f32; TILE],
    ) {
        let k = x.k;
        let nb = k / BLOCK;
        let ones = _mm256_set1_epi16(1);
        let xr = x.rows.as_ptr().add(row * k);
        // This row's scales: lane `row % ROWS` of its group.
        let xs_at = (row / ROWS) * nb * ROWS + row % ROWS;
        let mut acc = _mm256_setzero_ps();
        let mut offset = _mm256_setzero_ps();
        match w {
            QuantMatrix::Q4 { qs, d, m, .. } => {
                let mask = _mm256_set1_epi8(0x0F);
                let base = qs.as_ptr().add(o0 * k / 2);
                // The next tile follows this one: 128 bytes of it per block. (Past the last
                // tile the hints point nowhere, which a prefetch ignores; `wrapping_add` keeps
                // the address arithmetic defined.)
                let next = base.wrapping_add(TILE * k / 2);
                for b in 0..nb {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * 128) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * 128 + 64) as *const i8);
                    // The block's values 0..16 and 16..32 in both halves, against the low and
                    // high nibbles of two rows' 16 bytes.
                    let x1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        xr.add(b * BLOCK) as *const __m128i
                    ));
                    let x2 = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        xr.add(b * BLOCK + 16) as *const __m128i
                    ));
                    let v: [__m256i; 4] = std::array::from_fn(|i| {
                        let row = |r: usize| base.add(r * k / 2 + b * 16) as *const __m128i;
                        let raw = _mm256_loadu2_m128i(row(2 * i + 1), row(2 * i));
                        let lo = _mm256_and_si256(raw, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                        // Codes < 16: two 2-value sums per i16 stay below 2^15.
                        let s = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, x1),
                            _mm256_maddubs_epi16(hi, x2),
                        );
                        // Lanes 0..4: row 2i, lanes 4..8: row 2i + 1.
                        _mm256_madd_epi16(s, ones)
                    });
                    // -> rows [0 2 4 6 | 1 3 5 7], then into order.
                    let h = fold4(v[0], v[1], v[2], v[3]);
                    let isum =
                        _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                    let at = scale_index(nb, o0, b);
                    let dw = load_f16x8(d.as_ptr().add(at));
                    let mw = load_f16x8(m.as_ptr().add(at));
                    let at_x = xs_at + b * ROWS;
                    let (dx, sx) = (*x.d.get_unchecked(at_x), *x.s.get_unchecked(at_x));
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(dx));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
                    offset = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx), offset);
                }
            }
            QuantMatrix::Q8 { qs, d, .. } => {
                let base = qs.as_ptr().add(o0 * k);
                let next = base.wrapping_add(TILE * k);
                for b in 0..nb {
                    for l in 0..4 {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * 256 + l * 64));
                    }
                    let xv = _mm256_loadu_si256(xr.add(b * BLOCK) as *const __m256i);
                    let v: [__m256i; TILE] = std::array::from_fn(|r| {
                        let wv = _mm256_loadu_si256(base.add(r * k + b * BLOCK) as *const __m256i);
                        // maddubs multiplies unsigned by signed: move w's sign onto x.
                        let p = _mm256_maddubs_epi16(
                            _mm256_sign_epi8(wv, wv),
                            _mm256_sign_epi8(xv, wv),
                        );
                        _mm256_madd_epi16(p, ones)
                    });
                    // Each h: [r, r+1, r+2, r+3 | the same rows' other halves].
                    let h0 = fold4(v[0], v[1], v[2], v[3]);
                    let h1 = fold4(v[4], v[5], v[6], v[7]);
                    let isum = _mm256_add_epi32(
                        _mm256_permute2x128_si256(h0, h1, 0x20),
                        _mm256_permute2x128_si256(h0, h1, 0x31),
                    );
                    let at = scale_index(nb, o0, b);
                    let dw = load_f16x8(d.as_ptr().add(at));
                    let scale =
                        _mm256_mul_ps(dw, _mm256_set1_ps(*x.d.get_unchecked(xs_at + b * ROWS)));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
                }
            }
        }
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, offset));
    }

    /// Weight row `o` (unpacked codes `wq`) against activation rows `g*8..g*8+8`; lane r of
    /// every vector belongs to row g*8+r.
    #[target_feature(enable = "avx2,fma,f16c")]
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
                        bcast_f16(d, scale_index(nb, o, b)),
                        _mm256_loadu_ps(x.d.as_ptr().add(at)),
                    );
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
                    offset = _mm256_fmadd_ps(
                        bcast_f16(m, scale_index(nb, o, b)),
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
                        bcast_f16(d, scale_index(nb, o, b)),
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
    #[target_feature(enable = "avx2,fma,f16c")]
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
                        let scale = _mm256_mul_ps(bcast_f16(d, scale_index(nb, o + r, b)), xd);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
                        offset[r] =
                            _mm256_fmadd_ps(bcast_f16(m, scale_index(nb, o + r, b)), xs, offset[r]);
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
    use half::f16;

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
        let qs = (0..nb * 16).map(|_| ((r() + 0.5) * 255.0) as u8).collect();
        let d: Vec<f16> = (0..nb).map(|_| f16::from_f32(r() * 0.1)).collect();
        let m: Vec<f16> = (0..nb).map(|_| f16::from_f32(r() * 0.5)).collect();
        QuantMatrix::q4(n, k, qs, &d, &m)
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
        // n = 100: the last tile of eight rows is part padding.
        let (n, m) = (100, 11);
        for (k, w) in [192, 576].into_iter().flat_map(|k| {
            [
                (k, q4(n, k, 3)),
                (k, QuantMatrix::quantize_q8(n, k, &q4(n, k, 4).dequantize())),
            ]
        }) {
            let raw = raw_acts(m, k, 9);
            let mut x = QuantActs::default();
            x.quantize(&raw, m, k);
            let mut all = vec![0f32; m * n];
            matmul(&w, &x, &mut all);
            // A few rows (the per-row kernel) against the same rows of the many-row call.
            let few = 3.min(FEW_ROWS);
            let mut x3 = QuantActs::default();
            x3.quantize(&raw[..few * k], few, k);
            let mut out3 = vec![0f32; few * n];
            matmul(&w, &x3, &mut out3);
            assert_eq!(&out3[..], &all[..few * n], "{few} rows");
            for r in 0..m {
                let mut one = QuantActs::default();
                one.quantize(&raw[r * k..(r + 1) * k], 1, k);
                let mut out = vec![0f32; n];
                matmul(&w, &one, &mut out);
                assert_eq!(&out[..], &all[r * n..(r + 1) * n], "row {r}");
            }
            // And against the portable kernel's arithmetic order, row by row.
            let mut scalar = [0f32; ROWS];
            let mut buf = vec![0u8; k];
            let wq = unpack_row(&w, 7, &mut buf);
            rows8_scalar(&w, &x, 7, 1, wq, &mut scalar);
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
