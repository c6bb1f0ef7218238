//! Block formats. Weights: `Q4` (4-bit codes q in 0..16 with a scale d and an offset m per 32
//! values: w = d * q + m, the layout of GGUF Q4_1, and Q4_0 with m = -8 d) or `Q8` (int8 codes
//! with a scale per 32 values, GGUF Q8_0). Activations: int8 codes with a scale per 32 values
//! and the block's code sum (for the Q4 offset term).

use half::f16;

use super::arena::{Store, StoreMut};
use super::simd::{amax8, multiversion};

/// Values per block.
pub const BLOCK: usize = 32;

/// Weight rows whose scales are stored side by side: one 16-byte load gives a block's scale for
/// eight rows, which is what the one-row kernel multiplies eight rows' sums by at once.
pub const TILE: usize = 8;

/// Where the scale of (row o, block b) lives: `[o / TILE][b][o % TILE]`.
#[inline(always)]
pub fn scale_index(nb: usize, o: usize, b: usize) -> usize {
    ((o / TILE) * nb + b) * TILE + o % TILE
}

/// An (n, k) weight matrix, row-major in blocks of 32 along k. Codes are stored for n rounded
/// up to whole [`TILE`]s (the extra rows are zero codes with zero scales, so kernels can read
/// whole tiles); scales stay f16, as in GGUF, and are laid out by [`scale_index`].
#[derive(Debug, Clone)]
pub enum QuantMatrix {
    Q4 {
        n: usize,
        k: usize,
        /// k / 2 bytes per row; in each block of 16 bytes, value j is the low nibble of byte j
        /// and value j + 16 its high nibble (GGUF's order).
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

impl QuantMatrix {
    /// From row-major codes (k / 2 bytes per row) and one scale and offset per block.
    pub fn q4(n: usize, k: usize, mut qs: Vec<u8>, d: &[f16], m: &[f16]) -> Self {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(qs.len(), n * k / 2, "Q4 code bytes");
        qs.resize(n.div_ceil(TILE) * TILE * k / 2, 0);
        let nb = k / BLOCK;
        QuantMatrix::Q4 {
            n,
            k,
            qs: qs.into(),
            d: tiled(n, nb, d).into(),
            m: tiled(n, nb, m).into(),
        }
    }

    /// From row-major codes (k per row) and one scale per block.
    pub fn q8(n: usize, k: usize, mut qs: Vec<i8>, d: &[f16]) -> Self {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(qs.len(), n * k, "Q8 codes");
        qs.resize(n.div_ceil(TILE) * TILE * k, 0);
        QuantMatrix::Q8 {
            n,
            k,
            qs: qs.into(),
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
                    qs.extend_from_slice(&c[..n * k / 2]);
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
                    qs.extend_from_slice(&c[..n * k]);
                }
            }
            return Some(QuantMatrix::q8(n, k, qs, &scales(&|p, o, b| p.scale(o, b))));
        }
        None
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

    /// The given rows as f32 values, concatenated (embedding lookups).
    pub fn dequantize_rows(&self, rows: &[u32]) -> Vec<f32> {
        let (_, k) = self.dims();
        let nb = k / BLOCK;
        let mut out = Vec::with_capacity(rows.len() * k);
        for &o in rows {
            let o = o as usize;
            match self {
                QuantMatrix::Q4 { qs, .. } => {
                    for b in 0..nb {
                        let (d, m) = (self.scale(o, b), self.offset(o, b));
                        let bytes = &qs[(o * nb + b) * 16..][..16];
                        let lo = bytes.iter().map(|&q| d * (q & 0x0F) as f32 + m);
                        let hi = bytes.iter().map(|&q| d * (q >> 4) as f32 + m);
                        out.extend(lo.chain(hi));
                    }
                }
                QuantMatrix::Q8 { qs, .. } => {
                    for b in 0..nb {
                        let d = self.scale(o, b);
                        out.extend(
                            qs[(o * nb + b) * BLOCK..][..BLOCK]
                                .iter()
                                .map(|&q| q as f32 * d),
                        );
                    }
                }
            }
        }
        out
    }

    /// The whole matrix as f32 values (tests, saving).
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.dims().0 as u32;
        self.dequantize_rows(&(0..n).collect::<Vec<_>>())
    }
}

/// Activation rows are processed in groups of this many, one per vector lane.
pub const ROWS: usize = 8;

multiversion! {
    /// Quantizes rows `x` (m, k) into the interleaved layout of [`QuantActs`].
    fn quantize_rows(x: &[f32], k: usize, qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        let nb = k / BLOCK;
        for (r, row) in x.chunks_exact(k).enumerate() {
            let (g, lane) = (r / ROWS, r % ROWS);
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                let scale = amax8(block) / 127.0;
                let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
                let mut sum = 0i32;
                let base = (g * nb + b) * ROWS * BLOCK;
                for (j, v) in block.iter().enumerate() {
                    let q = (v * inv).round() as i8;
                    sum += q as i32;
                    qs[base + (j / 4) * ROWS * 4 + lane * 4 + j % 4] = q;
                }
                d[(g * nb + b) * ROWS + lane] = scale;
                s[(g * nb + b) * ROWS + lane] = scale * sum as f32;
            }
        }
    }
}

/// m rows of activations quantized to int8 per 32 values, for a matmul with a (n, k) weight.
///
/// Rows are interleaved in groups of [`ROWS`] so that one 32-byte vector holds the same four
/// consecutive values of eight rows: a weight chunk broadcast against it gives all eight rows'
/// partial dot products at once. Rows past `m` in the last group are zero.
#[derive(Debug, Clone, Default)]
pub struct QuantActs {
    pub m: usize,
    pub k: usize,
    /// [group][block][chunk of 4 values][row in group][4 codes]
    pub qs: Vec<i8>,
    /// Scale per (group, block, row in group).
    pub d: Vec<f32>,
    /// `d * sum(codes)` per (group, block, row): what multiplies a Q4 block's offset.
    pub s: Vec<f32>,
    /// When m <= [`FEW_ROWS`]: each row's codes in natural order, for the per-row kernel.
    pub rows: Vec<i8>,
}

/// Up to this many activation rows, a matmul runs the one-row kernel per row over each tile of
/// weights (loaded from memory once, then from L1) instead of the eight-lane kernel, whose cost
/// is that of eight rows however few are used.
pub const FEW_ROWS: usize = 4;

impl QuantActs {
    /// Quantizes `x` (m, k) in place of the previous contents (buffers are reused).
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        assert_eq!(x.len(), m * k);
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        self.m = m;
        self.k = k;
        let groups = m.div_ceil(ROWS);
        self.qs.clear();
        self.qs.resize(groups * ROWS * k, 0);
        self.d.clear();
        self.d.resize(groups * ROWS * k / BLOCK, 0.0);
        self.s.clear();
        self.s.resize(groups * ROWS * k / BLOCK, 0.0);
        quantize_rows(x, k, &mut self.qs, &mut self.d, &mut self.s);
        let mut rows = std::mem::take(&mut self.rows);
        rows.clear();
        if m <= FEW_ROWS {
            rows.extend((0..m * k).map(|i| self.code(i / k, i % k)));
        }
        self.rows = rows;
    }

    pub fn groups(&self) -> usize {
        self.m.div_ceil(ROWS)
    }

    /// Code of value `j` of row `r`.
    pub fn code(&self, r: usize, j: usize) -> i8 {
        let nb = self.k / BLOCK;
        let (g, lane, b, jj) = (r / ROWS, r % ROWS, j / BLOCK, j % BLOCK);
        self.qs[(g * nb + b) * ROWS * BLOCK + (jj / 4) * ROWS * 4 + lane * 4 + jj % 4]
    }

    /// Scale of block `b` of row `r`.
    pub fn scale(&self, r: usize, b: usize) -> f32 {
        let nb = self.k / BLOCK;
        self.d[((r / ROWS) * nb + b) * ROWS + r % ROWS]
    }

    /// `scale * sum(codes)` of block `b` of row `r`.
    pub fn scaled_sum(&self, r: usize, b: usize) -> f32 {
        let nb = self.k / BLOCK;
        self.s[((r / ROWS) * nb + b) * ROWS + r % ROWS]
    }
}
