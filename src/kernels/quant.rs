//! Block formats. Weights: `Q4` (4-bit codes q in 0..16 with a scale d and an offset m per 32
//! values: w = d * q + m, the layout of GGUF Q4_1, and Q4_0 with m = -8 d) or `Q8` (int8 codes
//! with a scale per 32 values, GGUF Q8_0). Activations: int8 codes with a scale per 32 values
//! and the block's code sum (for the Q4 offset term).

use half::f16;

use super::arena::{HugePages, Store, StoreMut};
use super::simd::amax8;

/// Values per block.
pub const BLOCK: usize = 32;

/// Weight rows stored together: a tile's codes for one block are read as whole vectors, and its
/// scales for one block as one vector of eight.
pub const TILE: usize = 8;

/// Where the scale of (row o, block b) lives: `[o / TILE][b][o % TILE]`.
#[inline(always)]
pub fn scale_index(nb: usize, o: usize, b: usize) -> usize {
    ((o / TILE) * nb + b) * TILE + o % TILE
}

/// Where code byte `j` of block `b` of row `o` lives, for `bytes` code bytes per block (16 for
/// Q4, 32 for Q8): `[o / TILE][b][j / 4][o % TILE][j % 4]`. A tile's block is a run of 32-byte
/// vectors, each four consecutive bytes of all eight rows. Multiplying one by four activation
/// bytes broadcast eight times gives row r's sums in 32-bit lane r, with no folding between
/// rows.
///
/// Q8 used eight-byte runs (a row per 64-bit lane) until session 13; folding each lane to 32
/// bits and interleaving the rows took seven instructions per block and activation row in the
/// two-tile kernel, which then ran the LM head at 0.6x the multiply-adds per second of the Q4
/// layers (see BENCHMARKS.md).
#[inline(always)]
pub fn code_index(nb: usize, bytes: usize, o: usize, b: usize, j: usize) -> usize {
    let (tile, r) = (((o / TILE) * nb + b) * TILE * bytes, o % TILE);
    tile + (j / 4) * 32 + r * 4 + j % 4
}

/// An (n, k) weight matrix in blocks of 32 along k, stored by tiles of `TILE` rows (codes by
/// `code_index`, scales by `scale_index`). n is rounded up to whole tiles; the extra rows
/// are zero codes with zero scales, so kernels can read whole tiles. Scales stay f16, as in
/// GGUF.
#[derive(Debug, Clone)]
pub enum QuantMatrix {
    Q4 {
        n: usize,
        k: usize,
        /// 16 bytes per row and block; value j of a block is the low nibble of byte j and value
        /// j + 16 its high nibble (GGUF's order).
        qs: Store<u8>,
        d: Store<f16>,
        m: Store<f16>,
    },
    Q8 {
        n: usize,
        k: usize,
        qs: Store<i8>,
        d: Store<f16>,
    },
}

/// Row-major per-block values of an (n, k) matrix in [`scale_index`] order, zero-padded.
fn tiled(n: usize, nb: usize, linear: &[f16]) -> Vec<f16> {
    assert_eq!(linear.len(), n * nb, "one scale per block");
    let mut out = vec![f16::ZERO; n.div_ceil(TILE) * TILE * nb];
    for o in 0..n {
        for b in 0..nb {
            out[scale_index(nb, o, b)] = linear[o * nb + b];
        }
    }
    out
}

/// Row-major codes (`bytes` per row and block) in [`code_index`] order, zero-padded.
fn tiled_codes<T: Copy + Default>(n: usize, nb: usize, bytes: usize, linear: &[T]) -> Vec<T> {
    assert_eq!(linear.len(), n * nb * bytes, "code bytes");
    let mut out = vec![T::default(); n.div_ceil(TILE) * TILE * nb * bytes];
    for (o, row) in linear.chunks_exact(nb * bytes).enumerate() {
        for (b, block) in row.chunks_exact(bytes).enumerate() {
            // Runs of four bytes stay together.
            for (c, chunk) in block.chunks_exact(4).enumerate() {
                let at = code_index(nb, bytes, o, b, c * 4);
                out[at..at + 4].copy_from_slice(chunk);
            }
        }
    }
    out
}

/// The inverse of [`tiled_codes`]: the first n rows' codes, row-major.
fn untiled_codes<T: Copy + Default>(n: usize, nb: usize, bytes: usize, tiled: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); n * nb * bytes];
    for (o, row) in out.chunks_exact_mut(nb * bytes).enumerate() {
        for (b, block) in row.chunks_exact_mut(bytes).enumerate() {
            for (c, chunk) in block.chunks_exact_mut(4).enumerate() {
                let at = code_index(nb, bytes, o, b, c * 4);
                chunk.copy_from_slice(&tiled[at..at + 4]);
            }
        }
    }
    out
}

impl QuantMatrix {
    /// From row-major codes (k / 2 bytes per row) and one scale and offset per block.
    pub fn q4(n: usize, k: usize, qs: Vec<u8>, d: &[f16], m: &[f16]) -> Self {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(qs.len(), n * k / 2, "Q4 code bytes");
        let nb = k / BLOCK;
        QuantMatrix::Q4 {
            n,
            k,
            qs: tiled_codes(n, nb, 16, &qs).into(),
            d: tiled(n, nb, d).into(),
            m: tiled(n, nb, m).into(),
        }
    }

    /// From row-major codes (k per row) and one scale per block.
    pub fn q8(n: usize, k: usize, qs: Vec<i8>, d: &[f16]) -> Self {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(qs.len(), n * k, "Q8 codes");
        QuantMatrix::Q8 {
            n,
            k,
            qs: tiled_codes(n, k / BLOCK, BLOCK, &qs).into(),
            d: tiled(n, k / BLOCK, d).into(),
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        match self {
            QuantMatrix::Q4 { n, k, .. } | QuantMatrix::Q8 { n, k, .. } => (*n, *k),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            QuantMatrix::Q4 { .. } => "Q4_1",
            QuantMatrix::Q8 { .. } => "Q8_0",
        }
    }

    /// How much of the arena holding this matrix's codes is in huge pages (`None` before it
    /// is packed).
    pub fn huge_pages(&self) -> Option<HugePages> {
        match self {
            QuantMatrix::Q4 { qs, .. } => qs.huge_pages(),
            QuantMatrix::Q8 { qs, .. } => qs.huge_pages(),
        }
    }

    /// The arrays a kernel reads, for [`super::pack`].
    pub fn stores(&mut self) -> Vec<StoreMut<'_>> {
        match self {
            QuantMatrix::Q4 { qs, d, m, .. } => {
                vec![StoreMut::U8(qs), StoreMut::F16(d), StoreMut::F16(m)]
            }
            QuantMatrix::Q8 { qs, d, .. } => vec![StoreMut::I8(qs), StoreMut::F16(d)],
        }
    }

    /// Scale of block b of row o.
    pub fn scale(&self, o: usize, b: usize) -> f32 {
        let nb = self.dims().1 / BLOCK;
        match self {
            QuantMatrix::Q4 { d, .. } | QuantMatrix::Q8 { d, .. } => {
                d[scale_index(nb, o, b)].to_f32()
            }
        }
    }

    /// Offset of block b of row o (Q4; zero for Q8).
    pub fn offset(&self, o: usize, b: usize) -> f32 {
        let nb = self.dims().1 / BLOCK;
        match self {
            QuantMatrix::Q4 { m, .. } => m[scale_index(nb, o, b)].to_f32(),
            QuantMatrix::Q8 { .. } => 0.0,
        }
    }

    /// Stacks matrices of the same width and format by rows.
    pub fn stack(parts: &[QuantMatrix]) -> Option<Self> {
        let k = parts.first()?.dims().1;
        let nb = k / BLOCK;
        let n: usize = parts.iter().map(|p| p.dims().0).sum();
        let scales = |f: &dyn Fn(&QuantMatrix, usize, usize) -> f32| -> Vec<f16> {
            parts
                .iter()
                .flat_map(|p| (0..p.dims().0 * nb).map(move |i| (p, i)))
                .map(|(p, i)| f16::from_f32(f(p, i / nb, i % nb)))
                .collect()
        };
        if parts.iter().any(|p| p.dims().1 != k) {
            return None;
        }
        if parts.iter().all(|p| matches!(p, QuantMatrix::Q4 { .. })) {
            let mut qs = Vec::with_capacity(n * k / 2);
            for p in parts {
                if let QuantMatrix::Q4 { n, qs: c, .. } = p {
                    qs.extend(untiled_codes(*n, nb, 16, c));
                }
            }
            let (d, m) = (
                scales(&|p, o, b| p.scale(o, b)),
                scales(&|p, o, b| p.offset(o, b)),
            );
            return Some(QuantMatrix::q4(n, k, qs, &d, &m));
        }
        if parts.iter().all(|p| matches!(p, QuantMatrix::Q8 { .. })) {
            let mut qs = Vec::with_capacity(n * k);
            for p in parts {
                if let QuantMatrix::Q8 { n, qs: c, .. } = p {
                    qs.extend(untiled_codes(*n, nb, BLOCK, c));
                }
            }
            return Some(QuantMatrix::q8(n, k, qs, &scales(&|p, o, b| p.scale(o, b))));
        }
        None
    }

    /// Code bytes of block b of row o, in GGUF's order (16 for Q4, 32 for Q8).
    pub fn block_codes(&self, o: usize, b: usize) -> impl Iterator<Item = u8> + '_ {
        let nb = self.dims().1 / BLOCK;
        let bytes = match self {
            QuantMatrix::Q4 { .. } => 16,
            QuantMatrix::Q8 { .. } => BLOCK,
        };
        (0..bytes).map(move |j| {
            let at = code_index(nb, bytes, o, b, j);
            match self {
                QuantMatrix::Q4 { qs, .. } => qs[at],
                QuantMatrix::Q8 { qs, .. } => qs[at] as u8,
            }
        })
    }

    /// From raw GGUF Q4_1 blocks (f16 d, f16 m, 16 bytes of codes).
    pub fn from_q4_1(n: usize, k: usize, raw: &[u8]) -> Self {
        let nb = n * k / BLOCK;
        assert_eq!(raw.len(), nb * 20, "Q4_1 data size");
        let (mut qs, mut d, mut m) = (
            Vec::with_capacity(nb * 16),
            Vec::with_capacity(nb),
            Vec::with_capacity(nb),
        );
        for b in raw.chunks_exact(20) {
            d.push(f16::from_le_bytes([b[0], b[1]]));
            m.push(f16::from_le_bytes([b[2], b[3]]));
            qs.extend_from_slice(&b[4..20]);
        }
        QuantMatrix::q4(n, k, qs, &d, &m)
    }

    /// From raw GGUF Q4_0 blocks (f16 d, 16 bytes of codes, w = d * (q - 8)): exactly Q4 with
    /// m = -8 d (a power-of-two multiple, exact in f16 too).
    pub fn from_q4_0(n: usize, k: usize, raw: &[u8]) -> Self {
        let nb = n * k / BLOCK;
        assert_eq!(raw.len(), nb * 18, "Q4_0 data size");
        let (mut qs, mut d, mut m) = (
            Vec::with_capacity(nb * 16),
            Vec::with_capacity(nb),
            Vec::with_capacity(nb),
        );
        for b in raw.chunks_exact(18) {
            let scale = f16::from_le_bytes([b[0], b[1]]);
            d.push(scale);
            m.push(f16::from_f32(-8.0 * scale.to_f32()));
            qs.extend_from_slice(&b[2..18]);
        }
        QuantMatrix::q4(n, k, qs, &d, &m)
    }

    /// From raw GGUF Q8_0 blocks (f16 d, 32 int8 codes).
    pub fn from_q8_0(n: usize, k: usize, raw: &[u8]) -> Self {
        let nb = n * k / BLOCK;
        assert_eq!(raw.len(), nb * 34, "Q8_0 data size");
        let (mut qs, mut d) = (Vec::with_capacity(nb * 32), Vec::with_capacity(nb));
        for b in raw.chunks_exact(34) {
            d.push(f16::from_le_bytes([b[0], b[1]]));
            qs.extend(b[2..34].iter().map(|&x| x as i8));
        }
        QuantMatrix::q8(n, k, qs, &d)
    }

    /// Quantizes f32 weights (n, k) to Q8 blocks (scale = max |w| / 127).
    pub fn quantize_q8(n: usize, k: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), n * k);
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        let mut qs = Vec::with_capacity(n * k);
        let mut d = Vec::with_capacity(n * k / BLOCK);
        for block in w.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
            // Stored as f16, as in GGUF.
            let scale = f16::from_f32(amax / 127.0);
            let s = scale.to_f32();
            let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
            qs.extend(
                block
                    .iter()
                    .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8),
            );
            d.push(scale);
        }
        QuantMatrix::q8(n, k, qs, &d)
    }

    /// The given rows as f32 values, concatenated, into `out` (cleared first): embedding
    /// lookups, into a buffer the forward keeps so that they allocate nothing.
    pub fn dequantize_rows_into(&self, rows: &[u32], out: &mut Vec<f32>) {
        let (_, k) = self.dims();
        let nb = k / BLOCK;
        out.clear();
        out.reserve(rows.len() * k);
        for &o in rows {
            let o = o as usize;
            for b in 0..nb {
                let (d, m) = (self.scale(o, b), self.offset(o, b));
                match self {
                    QuantMatrix::Q4 { .. } => {
                        let lo = self.block_codes(o, b).map(|q| d * (q & 0x0F) as f32 + m);
                        out.extend(lo);
                        let hi = self.block_codes(o, b).map(|q| d * (q >> 4) as f32 + m);
                        out.extend(hi);
                    }
                    QuantMatrix::Q8 { .. } => {
                        out.extend(self.block_codes(o, b).map(|q| q as i8 as f32 * d));
                    }
                }
            }
        }
    }

    /// The whole matrix as f32 values (tests, saving).
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.dims().0 as u32;
        let mut out = Vec::new();
        self.dequantize_rows_into(&(0..n).collect::<Vec<_>>(), &mut out);
        out
    }
}

/// Per-block outputs of [`quantize_rows`], one entry per block.
struct BlockStats<'a> {
    /// Scale.
    d: &'a mut [f32],
    /// Scale times the code sum.
    s: &'a mut [f32],
    /// 128 times the code sum.
    bias: &'a mut [i32],
}

/// Quantizes rows `x` (m, k): codes, row-major, and per block the scale and code sums. Each
/// block: scale = max |v| / 127, code = round(v / scale) (halves away from zero).
fn quantize_rows(x: &[f32], qs: &mut [i8], out: &mut BlockStats) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { avx2::quantize_rows(x, qs, out) };
        return;
    }
    quantize_rows_portable(x, qs, out);
}

/// [`quantize_rows`] and the scales' broadcast copy for some whole rows.
fn quantize_part(x: &[f32], qs: &mut [i8], mut out: BlockStats, d8: &mut [f32]) {
    quantize_rows(x, qs, &mut out);
    for (v, &d) in d8.chunks_exact_mut(8).zip(out.d.iter()) {
        v.fill(d);
    }
}

/// The quantization in plain code, for CPUs without AVX2 (where AVX2 exists, the explicit
/// vector version below runs instead).
fn quantize_rows_portable(x: &[f32], qs: &mut [i8], out: &mut BlockStats) {
    for ((((block, codes), d), s), bias) in x
        .chunks_exact(BLOCK)
        .zip(qs.chunks_exact_mut(BLOCK))
        .zip(out.d.iter_mut())
        .zip(out.s.iter_mut())
        .zip(out.bias.iter_mut())
    {
        let scale = amax8(block) / 127.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        let mut sum = 0i32;
        for (q, v) in codes.iter_mut().zip(block) {
            *q = (v * inv).round() as i8;
            sum += *q as i32;
        }
        *d = scale;
        *s = scale * sum as f32;
        *bias = 128 * sum;
    }
}

/// The same quantization with explicit vectors (the compiler's version of the loop above ran at
/// about 1.7 ns per value): the same maxima, quotients and products, and `round`'s
/// halves-away-from-zero rebuilt from truncation, so codes and scales are bit-identical to the
/// portable path.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockStats, BLOCK};

    /// Blocks whose maxima are found first and divided into scales as one vector. One block at
    /// a time, each block's codes waited on its maximum and two scalar divisions, a chain too
    /// long for the core to overlap blocks: 8 x 576 values took 2.45 to 2.50 us (61 cycles a
    /// block), in groups 1.3 to 1.4 (criterion's `quantize_acts/8x576`, one thread).
    const GROUP: usize = 8;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_rows(x: &[f32], qs: &mut [i8], out: &mut BlockStats) {
        let blocks = x.len() / BLOCK;
        assert!(qs.len() >= blocks * BLOCK);
        assert!(out.d.len() >= blocks && out.s.len() >= blocks && out.bias.len() >= blocks);
        let sign = _mm256_set1_ps(-0.0);
        // The largest float below a half. Added to q (with q's sign) and truncated, it rounds
        // halves away from zero and the rest to nearest, as `f32::round` does: a sum meant to
        // stay below an integer cannot round up to it (LLVM lowers `round` the same way).
        let below_half = _mm256_set1_ps(0.499_999_97);
        for g in (0..blocks).step_by(GROUP) {
            let n = (blocks - g).min(GROUP);
            let block = |j: usize| x.as_ptr().add((g + j) * BLOCK);
            let mut amax = [0f32; GROUP];
            for (j, a) in amax.iter_mut().enumerate().take(n) {
                let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block(j).add(i * 8)));
                let abs = v.map(|v| _mm256_andnot_ps(sign, v));
                let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
                let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                *a = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            }
            let scale = _mm256_div_ps(_mm256_loadu_ps(amax.as_ptr()), _mm256_set1_ps(127.0));
            // 1 / scale, and 0 where the scale is 0.
            let zero = _mm256_cmp_ps(scale, _mm256_setzero_ps(), _CMP_EQ_OQ);
            let inv = _mm256_andnot_ps(zero, _mm256_div_ps(_mm256_set1_ps(1.0), scale));
            let mut invs = [0f32; GROUP];
            _mm256_storeu_ps(invs.as_mut_ptr(), inv);
            let mut sums = [0i32; GROUP];
            for (j, sum) in sums.iter_mut().enumerate().take(n) {
                let inv = _mm256_set1_ps(invs[j]);
                let codes: [__m256i; 4] = std::array::from_fn(|i| {
                    let q = _mm256_mul_ps(_mm256_loadu_ps(block(j).add(i * 8)), inv);
                    let half = _mm256_or_ps(_mm256_and_ps(q, sign), below_half);
                    _mm256_cvttps_epi32(_mm256_add_ps(q, half))
                });
                let total = _mm256_add_epi32(
                    _mm256_add_epi32(codes[0], codes[1]),
                    _mm256_add_epi32(codes[2], codes[3]),
                );
                let t = _mm_add_epi32(
                    _mm256_castsi256_si128(total),
                    _mm256_extracti128_si256(total, 1),
                );
                let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
                *sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0b00_00_00_01)));
                // i32 -> i16 -> i8 with saturation (as `as i8` does), then undo the packs'
                // lane interleaving.
                let packed = _mm256_packs_epi16(
                    _mm256_packs_epi32(codes[0], codes[1]),
                    _mm256_packs_epi32(codes[2], codes[3]),
                );
                let ordered =
                    _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                let dst = qs.as_mut_ptr().add((g + j) * BLOCK) as *mut __m256i;
                _mm256_storeu_si256(dst, ordered);
            }
            let total = _mm256_loadu_si256(sums.as_ptr() as *const __m256i);
            let (mut d, mut s, mut bias) = ([0f32; GROUP], [0f32; GROUP], [0i32; GROUP]);
            _mm256_storeu_ps(d.as_mut_ptr(), scale);
            _mm256_storeu_ps(
                s.as_mut_ptr(),
                _mm256_mul_ps(scale, _mm256_cvtepi32_ps(total)),
            );
            _mm256_storeu_si256(
                bias.as_mut_ptr() as *mut __m256i,
                _mm256_slli_epi32::<7>(total),
            );
            out.d[g..g + n].copy_from_slice(&d[..n]);
            out.s[g..g + n].copy_from_slice(&s[..n]);
            out.bias[g..g + n].copy_from_slice(&bias[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_quantization_is_bit_identical_to_the_portable_one() {
        // Random blocks, a zero block, and blocks whose products land exactly on halves
        // (max 127 gives scale 1: 2.5 and -3.5 must round away from zero).
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let mut x: Vec<f32> = (0..BLOCK * 20)
            .map(|i| rnd() * if i % 37 == 0 { 60.0 } else { 3.0 })
            .collect();
        x.extend(std::iter::repeat_n(0.0, BLOCK));
        // Just below and above halves too (0.49999997 must give 0, 1.4999999 1, 2.5000002 3).
        let below = |v: f32| f32::from_bits(v.to_bits() - 1);
        let above = |v: f32| f32::from_bits(v.to_bits() + 1);
        let near = [
            below(0.5),
            -below(0.5),
            below(1.5),
            above(2.5),
            -below(126.5),
        ];
        x.extend((0..BLOCK).map(|i| [127.0, 2.5, -3.5, 0.5, -0.5, 126.5, -1.5, 0.0][i % 8]));
        x.extend((0..BLOCK).map(|i| if i == 0 { 127.0 } else { near[i % near.len()] }));
        let blocks = x.len() / BLOCK;
        let (mut q1, mut d1, mut s1) = (vec![0i8; x.len()], vec![0f32; blocks], vec![0f32; blocks]);
        let mut b1 = vec![0i32; blocks];
        let (mut q2, mut d2, mut s2, mut b2) = (q1.clone(), d1.clone(), s1.clone(), b1.clone());
        let stats = |d, s, bias| BlockStats { d, s, bias };
        quantize_rows_portable(&x, &mut q1, &mut stats(&mut d1, &mut s1, &mut b1));
        quantize_rows(&x, &mut q2, &mut stats(&mut d2, &mut s2, &mut b2));
        assert_eq!(q1, q2);
        assert_eq!(d1, d2);
        assert_eq!(s1, s2);
        assert_eq!(b1, b2);
        for (codes, &bias) in q1.chunks_exact(BLOCK).zip(&b1) {
            assert_eq!(bias, 128 * codes.iter().map(|&q| q as i32).sum::<i32>());
        }
        let halves = &q1[x.len() - 2 * BLOCK..][..8];
        assert_eq!(halves, &[127, 3, -4, 1, -1, 127, -2, 0]);
        let near = &q1[x.len() - BLOCK..][..6];
        assert_eq!(near, &[127, 0, 1, 3, -126, 0]);
    }

    #[test]
    fn rows_split_over_threads_quantize_as_alone() {
        // 16 x 576 values: enough to be split over the kernel threads (where it has two).
        let (m, k) = (16, 576);
        assert!(m * k >= crate::kernels::SPLIT_VALUES);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / if i % 37 == 0 { 5.0 } else { 50.0 })
            .collect();
        let mut all = QuantActs::default();
        all.quantize(&x, m, k);
        let nb = k / BLOCK;
        for r in 0..m {
            let mut one = QuantActs::default();
            one.quantize(&x[r * k..(r + 1) * k], 1, k);
            assert_eq!(one.qs, all.qs[r * k..(r + 1) * k]);
            assert_eq!(one.d, all.d[r * nb..(r + 1) * nb]);
            assert_eq!(one.s, all.s[r * nb..(r + 1) * nb]);
            assert_eq!(one.bias, all.bias[r * nb..(r + 1) * nb]);
            assert_eq!(one.d8, all.d8[r * nb * 8..(r + 1) * nb * 8]);
        }
    }
}

/// m rows of activations quantized to int8 per 32 values, for a matmul with a (n, k) weight.
#[derive(Debug, Clone, Default)]
pub struct QuantActs {
    pub m: usize,
    pub k: usize,
    /// Codes, row-major (m, k).
    pub qs: Vec<i8>,
    /// Scale per (row, block).
    pub d: Vec<f32>,
    /// `d * sum(codes)` per (row, block): what multiplies a Q4 block's offset.
    pub s: Vec<f32>,
    /// `128 * sum(codes)` per (row, block): what a block's integer sum overcounts by when the
    /// VNNI kernels take Q8 weights as unsigned bytes (w + 128, see `matmul`).
    pub bias: Vec<i32>,
    /// `d` with each scale repeated eight times: a vector the kernels multiply by straight from
    /// memory (a broadcast would be an instruction of its own in the inner loop).
    pub d8: Vec<f32>,
}

impl QuantActs {
    /// Quantizes `x` (m, k) in place of the previous contents (buffers are reused).
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        assert_eq!(x.len(), m * k);
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        self.m = m;
        self.k = k;
        self.qs.resize(m * k, 0);
        self.d.resize(m * k / BLOCK, 0.0);
        self.s.resize(m * k / BLOCK, 0.0);
        self.bias.resize(m * k / BLOCK, 0);
        self.d8.resize(self.d.len() * 8, 0.0);
        let rows = super::rows_per_task(m, k);
        let nb = k / BLOCK;
        if rows < m {
            use super::team::{for_each, Chunks};
            let qs = Chunks::new(&mut self.qs, rows * k);
            let d = Chunks::new(&mut self.d, rows * nb);
            let s = Chunks::new(&mut self.s, rows * nb);
            let bias = Chunks::new(&mut self.bias, rows * nb);
            let d8 = Chunks::new(&mut self.d8, rows * nb * 8);
            for_each(qs.len(), |i| {
                // SAFETY: task i takes chunk i of each buffer, once.
                let (qs, d, s, bias, d8) =
                    unsafe { (qs.get(i), d.get(i), s.get(i), bias.get(i), d8.get(i)) };
                let x = &x[i * rows * k..][..qs.len()];
                quantize_part(x, qs, BlockStats { d, s, bias }, d8)
            });
        } else {
            let out = BlockStats {
                d: &mut self.d,
                s: &mut self.s,
                bias: &mut self.bias,
            };
            quantize_part(x, &mut self.qs, out, &mut self.d8);
        }
    }

    /// Code of value `j` of row `r`.
    pub fn code(&self, r: usize, j: usize) -> i8 {
        self.qs[r * self.k + j]
    }

    /// Scale of block `b` of row `r`.
    pub fn scale(&self, r: usize, b: usize) -> f32 {
        self.d[r * self.k / BLOCK + b]
    }

    /// `scale * sum(codes)` of block `b` of row `r`.
    pub fn scaled_sum(&self, r: usize, b: usize) -> f32 {
        self.s[r * self.k / BLOCK + b]
    }
}
