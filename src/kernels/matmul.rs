//! `out (m, n) = x (m, k) @ w (n, k)^T` on quantized blocks. Weight rows are split over the
//! kernel threads in tiles of [`TILE`].
//!
//! The kernel takes one tile of eight weight rows against up to [`CHUNK`] activation rows (see
//! [`Isa::chunk`]). Per block it loads the tile's codes once (four or eight 32-byte vectors, see
//! [`super::quant::code_index`]) and, for each activation row, multiplies them by the row's
//! bytes broadcast, each weight row's sum landing in its own lane; the float steps (scales,
//! Q4 offsets) then run for eight weight rows per instruction. The tile stays in L1 while the
//! next chunk of activation rows passes over it, so weights are read from memory once per call
//! whatever m is.
//!
//! Without VNNI the work is `vpmaddubsw`, 32 byte products per instruction, two per cycle on
//! Zen 3; everything around it (broadcasts, sums, conversions, scales) competes for the same
//! four vector pipes, so the kernels are written to spend as few instructions per block and
//! activation row as they can (see BENCHMARKS.md for the count).
//!
//! With AVX-512 VNNI a second kernel takes two tiles at once on 512-bit vectors ([`Isa::pair`]):
//! each instruction does the work of two, which on Zen 4 (where a 512-bit instruction occupies
//! a 256-bit pipe for two cycles) still saves the issue slots, loads and broadcasts that the
//! 256-bit kernel spends per activation row.
//!
//! Each (row, output) gets the same integer sum (exact) and then the same float operations in
//! the same order, whichever chunk size or kernel carried it, so a row's result never depends
//! on which other rows share the call.

use super::quant::{QuantActs, QuantMatrix, BLOCK, TILE};
use super::simd::SharedOut;

/// Activation rows per kernel call, at most, for any instruction set ([`Isa::chunk`] is each
/// one's own): enough to spread a tile's loads and unpacking over several rows, few enough
/// that the accumulators stay in registers.
pub const CHUNK: usize = 8;

/// Weight rows per call of the two-tile kernel ([`Isa::pair`]).
const PAIR: usize = 2 * TILE;

/// Weight rows per task: small enough to balance two threads, large enough to amortise.
const ROWS_PER_TASK: usize = 32;
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(PAIR));

pub fn matmul(w: &QuantMatrix, x: &QuantActs, out: &mut [f32]) {
    matmul_with(Isa::current(), w, x, out)
}

/// [`matmul`] with a given instruction set, which must be one of [`Isa::available`].
pub fn matmul_with(isa: Isa, w: &QuantMatrix, x: &QuantActs, out: &mut [f32]) {
    assert!(
        isa.is_available(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    let (n, k) = w.dims();
    assert_eq!(x.k, k, "activation width {} vs weight width {k}", x.k);
    let m = x.m;
    assert_eq!(out.len(), m * n);
    let ptr = SharedOut(out.as_mut_ptr());
    let tasks = n.div_ceil(ROWS_PER_TASK);
    let chunk = isa.chunk(w);
    let pair_from = isa.pair_rows(w);
    let run = |t: usize| {
        let (start, end) = (t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n));
        // Row r0, weight row o0 onwards, of `out`; `width` weight rows of which those before
        // `end` are this task's.
        // SAFETY: row r0 < m and o0 < end <= n.
        let dest = |r0: usize, o0: usize, width: usize| Dest {
            ptr: unsafe { ptr.get().add(r0 * n + o0) },
            stride: n,
            cols: (end - o0).min(width),
        };
        // Tasks start at multiples of ROWS_PER_TASK, itself a multiple of PAIR; rows past n
        // in the last tile are zero padding, computed and dropped.
        let mut o0 = start;
        while o0 < end {
            // Two tiles at once where the second has rows of this task.
            let tiles = if pair_from.is_some() && o0 + TILE < end {
                2
            } else {
                1
            };
            for r0 in (0..m).step_by(chunk) {
                let rows = (m - r0).min(chunk);
                if tiles == 2 && pair_from.is_some_and(|from| rows >= from) {
                    isa.pair(w, x, r0, rows, o0, dest(r0, o0, PAIR));
                    continue;
                }
                for o0 in (o0..end).step_by(TILE).take(tiles) {
                    let out = dest(r0, o0, TILE);
                    match rows {
                        1 => isa.tile::<1>(w, x, r0, o0, out),
                        2 => isa.tile::<2>(w, x, r0, o0, out),
                        3 => isa.tile::<3>(w, x, r0, o0, out),
                        4 => isa.tile::<4>(w, x, r0, o0, out),
                        5 => isa.tile::<5>(w, x, r0, o0, out),
                        6 => isa.tile::<6>(w, x, r0, o0, out),
                        7 => isa.tile::<7>(w, x, r0, o0, out),
                        _ => isa.tile::<8>(w, x, r0, o0, out),
                    }
                }
            }
            o0 += tiles * TILE;
        }
    };
    if tasks > 1 && m * n * k >= 1 << 16 {
        super::team::for_each(tasks, run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Where a kernel call writes its results: activation row i's sums for the tile's (or pair's)
/// weight rows go to `ptr + i * stride` onwards, the first `cols` of them; the rest are padding
/// or another task's. The kernels store straight into the output (whole tiles with plain
/// vector stores, others masked), since copying each row out of a buffer cost a call to
/// memmove per row and tile, 4% of a 16-token forward.
#[derive(Clone, Copy)]
struct Dest {
    ptr: *mut f32,
    stride: usize,
    cols: usize,
}

impl Dest {
    /// # Safety
    /// Row i must be one of the call's activation rows.
    #[inline(always)]
    unsafe fn row(self, i: usize) -> *mut f32 {
        unsafe { self.ptr.add(i * self.stride) }
    }
}

/// The instruction set the tile kernel runs with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// AVX2 plus AVX-512 VNNI and VL (`vpdpbusd` on 256-bit vectors: Intel Ice Lake and later
    /// servers, AMD Zen 4 and later).
    Avx512Vnni,
    /// AArch64 with the dot-product extension (`sdot`: Apple M1 and later, Cortex-A55/A76 and
    /// later, Graviton 2 and later).
    NeonDot,
    /// Plain scalar code: correct everywhere, several times slower.
    Portable,
}

impl Isa {
    const ALL: [Isa; 4] = [Isa::Avx512Vnni, Isa::Avx2, Isa::NeonDot, Isa::Portable];

    /// The fastest instruction set this CPU has.
    pub fn detect() -> Self {
        Self::available()[0]
    }

    /// The one the kernels use: [`Isa::detect`], unless the environment variable
    /// `FIXPOINT_KERNELS` names another that this CPU has (for comparing them in one run).
    pub fn current() -> Self {
        static CURRENT: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CURRENT.get_or_init(|| {
            let Ok(name) = std::env::var("FIXPOINT_KERNELS") else {
                return Self::detect();
            };
            match Self::available().into_iter().find(|isa| isa.name() == name) {
                Some(isa) => isa,
                None => {
                    let have: Vec<_> = Self::available().iter().map(|i| i.name()).collect();
                    tracing::warn!(
                        "FIXPOINT_KERNELS={name}: this CPU has {}; using {}",
                        have.join(", "),
                        Self::detect().name()
                    );
                    Self::detect()
                }
            }
        })
    }

    /// Every instruction set this CPU can run, fastest first.
    pub fn available() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    pub fn is_available(self) -> bool {
        match self {
            Isa::Avx2 => super::simd::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                super::simd::has_avx2()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Activation rows per kernel call for weights `w`. Measured on one thread in L1 with
    /// calls alternating (8 and 16 rows, weights of 64 x 576, Zen 4), eight rows per call
    /// against four took: Q8 0.63x (AVX2) and 0.96x (VNNI), Q4 0.92x to 0.95x (VNNI) and
    /// 1.00x (AVX2). Whole AVX2 forwards with eight rows for Q4 too were up to 8% slower, and
    /// with AVX2, Q4 at three rows per call ran 4 to 12% slower than at four. NEON keeps four
    /// (not measured on Arm hardware).
    pub fn chunk(self, w: &QuantMatrix) -> usize {
        match (self, w) {
            (Isa::Avx512Vnni, _) | (Isa::Avx2, QuantMatrix::Q8 { .. }) => CHUNK,
            _ => 4,
        }
    }

    /// The fewest activation rows for which the two-tile kernel ([`Isa::pair`]) is used, where
    /// this instruction set has one. Whole forwards (Zen 4, two threads, commits alternating
    /// in one process, paired medians), since the hints go to L2 (see `simd::hint`): Q4 pairs
    /// from two rows instead of six took 0.96x to 0.98x the time at 2 tokens, 0.92x at 3 and
    /// 0.91x at 4; Q8 pairs from four rows instead of eight 0.91x at 4 tokens (a model on Q8_0
    /// throughout), but from two rows 1.02x at 2 tokens. With the hints in L1, Q4 pairs from
    /// two rows had made 2 and 3 tokens 1 to 13% slower.
    fn pair_rows(self, w: &QuantMatrix) -> Option<usize> {
        match (self, w) {
            (Isa::Avx512Vnni, QuantMatrix::Q4 { .. }) => Some(2),
            (Isa::Avx512Vnni, QuantMatrix::Q8 { .. }) => Some(4),
            _ => None,
        }
    }

    /// Two tiles (weight rows o0..o0 + 16) against activation rows r0..r0 + rows, for the row
    /// counts [`Isa::pair_rows`] sends here (an instance per count, so no others).
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn pair(self, w: &QuantMatrix, x: &QuantActs, r0: usize, rows: usize, o0: usize, out: Dest) {
        #[cfg(target_arch = "x86_64")]
        if self == Isa::Avx512Vnni {
            // SAFETY: AVX-512 F, VL, BW and VNNI were detected; both tiles are stored and
            // rows r0..r0 + rows exist.
            unsafe {
                match rows {
                    2 => avx2::pair_vnni::<2>(w, x, r0, o0, out),
                    3 => avx2::pair_vnni::<3>(w, x, r0, o0, out),
                    4 => avx2::pair_vnni::<4>(w, x, r0, o0, out),
                    5 => avx2::pair_vnni::<5>(w, x, r0, o0, out),
                    6 => avx2::pair_vnni::<6>(w, x, r0, o0, out),
                    7 => avx2::pair_vnni::<7>(w, x, r0, o0, out),
                    8 => avx2::pair_vnni::<8>(w, x, r0, o0, out),
                    _ => unreachable!("no two-tile kernel for {rows} rows"),
                }
            }
            return;
        }
        unreachable!("{} has no two-tile kernel", self.name());
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::NeonDot => "neon-dotprod",
            Isa::Portable => "portable",
        }
    }

    /// One tile against activation rows `r0..r0 + R` (see [`avx2::tile`]).
    #[inline(always)]
    fn tile<const R: usize>(self, w: &QuantMatrix, x: &QuantActs, r0: usize, o0: usize, out: Dest) {
        match self {
            // SAFETY: AVX2, FMA and F16C were detected; the tile is stored whole and rows
            // r0..r0 + R exist.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::tile::<R>(w, x, r0, o0, out) },
            // SAFETY: as above, with AVX-512 F, VL, BW and VNNI detected.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { avx2::tile_vnni::<R>(w, x, r0, o0, out) },
            // SAFETY: as above, with the dot-product extension detected.
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => unsafe { neon::tile::<R>(w, x, r0, o0, out) },
            _ => tile_portable(w, x, r0, R, o0, out),
        }
    }
}

/// Where activation rows `r0..r0 + R` start in each array of a [`QuantActs`], for the vector
/// tile kernels.
struct ActRows<const R: usize> {
    /// Int8 codes, k per row.
    q: [*const i8; R],
    /// Scales, one per block.
    d: [*const f32; R],
    /// Each scale eight times ([`QuantActs::d8`]; only the AVX2 kernel reads them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    d8: [*const f32; R],
    /// Scales times code sums, one per block (the Q4 offset term).
    s: [*const f32; R],
    /// 128 times the code sums, one per block ([`QuantActs::bias`]; only the VNNI kernels
    /// read them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    bias: [*const i32; R],
}

impl<const R: usize> ActRows<R> {
    /// # Safety
    /// Rows `r0..r0 + R` must exist in `x`.
    #[inline(always)]
    unsafe fn new(x: &QuantActs, r0: usize) -> Self {
        let (k, nb) = (x.k, x.k / BLOCK);
        // SAFETY: row r0 + i < x.m, and each array holds x.m rows.
        unsafe {
            Self {
                q: std::array::from_fn(|i| x.qs.as_ptr().add((r0 + i) * k)),
                d: std::array::from_fn(|i| x.d.as_ptr().add((r0 + i) * nb)),
                d8: std::array::from_fn(|i| x.d8.as_ptr().add((r0 + i) * nb * 8)),
                s: std::array::from_fn(|i| x.s.as_ptr().add((r0 + i) * nb)),
                bias: std::array::from_fn(|i| x.bias.as_ptr().add((r0 + i) * nb)),
            }
        }
    }
}

/// The kernel without SIMD, for CPUs without AVX2 or NEON's dot product: exact integer block
/// sums, then per block `acc += isum * (dw * dx)` and (Q4) `offset += m * s`, then
/// `acc + offset`.
fn tile_portable(w: &QuantMatrix, x: &QuantActs, r0: usize, rows: usize, o0: usize, out: Dest) {
    let nb = x.k / BLOCK;
    for i in 0..rows {
        let r = r0 + i;
        for lane in 0..out.cols {
            let o = o0 + lane;
            let (mut acc, mut offset) = (0f32, 0f32);
            for b in 0..nb {
                let xb = &x.qs[r * x.k + b * BLOCK..][..BLOCK];
                let isum: i32 = match w {
                    QuantMatrix::Q4 { .. } => w
                        .block_codes(o, b)
                        .enumerate()
                        .map(|(j, q)| {
                            (q & 0x0F) as i32 * xb[j] as i32 + (q >> 4) as i32 * xb[j + 16] as i32
                        })
                        .sum(),
                    QuantMatrix::Q8 { .. } => w
                        .block_codes(o, b)
                        .zip(xb)
                        .map(|(q, &v)| q as i8 as i32 * v as i32)
                        .sum(),
                };
                acc += isum as f32 * (w.scale(o, b) * x.scale(r, b));
                offset += w.offset(o, b) * x.scaled_sum(r, b);
            }
            // SAFETY: row i is one of the call's and lane < cols.
            unsafe { *out.row(i).add(lane) = acc + offset };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::quant::{scale_index, QuantActs, QuantMatrix, BLOCK, TILE};
    use super::super::simd::{hint, load_f16x8};
    use super::{ActRows, Dest, PAIR};

    /// Bytes `at..at + 4` of `p` in all eight 32-bit lanes.
    #[inline(always)]
    unsafe fn bcast4(p: *const i8, at: usize) -> __m256i {
        _mm256_set1_epi32((p.add(at) as *const i32).read_unaligned())
    }

    /// How a kernel sums products of unsigned and signed bytes into 32-bit lanes, four bytes
    /// per lane. Both ways give the same exact integers, so the two kernels' results are
    /// bit-identical.
    trait Dot {
        /// A Q4 block's sums for one activation row: lane r is weight row r's 32 codes (low
        /// nibbles `lo`, high `hi`, four bytes per lane and vector) times the row's codes
        /// `x[xb..xb + 32]`.
        unsafe fn q4(lo: &[__m256i; 4], hi: &[__m256i; 4], x: *const i8, xb: usize) -> __m256i;
        /// A Q8 block's sums for one activation row: lane r is weight row r's 32 codes (eight
        /// vectors at `w`) times the row's codes `x[xb..xb + 32]`, whose [`QuantActs::bias`]
        /// is `bias`.
        unsafe fn q8(w: *const i8, x: *const i8, xb: usize, bias: i32) -> __m256i;
    }

    /// AVX2: `vpmaddubsw` (pairs into 16 bits), then `vpmaddwd` by ones (into 32).
    struct Madd;

    // No closures in the `Dot` bodies: a closure is compiled as a function of its own, without
    // the caller's target features, and where the compiler does not inline it every
    // intrinsic in it becomes a call. That happened to `Madd::q8`'s (the AVX2 LM head ran 10x
    // slower, unnoticed for a round); `scripts/check-intrinsics.sh`, run by CI, now fails on it.
    impl Dot for Madd {
        #[inline(always)]
        unsafe fn q4(lo: &[__m256i; 4], hi: &[__m256i; 4], x: *const i8, xb: usize) -> __m256i {
            let mut part = [_mm256_setzero_si256(); 4];
            for (v, p) in part.iter_mut().enumerate() {
                *p = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo[v], bcast4(x, xb + 4 * v)),
                    _mm256_maddubs_epi16(hi[v], bcast4(x, xb + 16 + 4 * v)),
                );
            }
            // Codes < 16 and |x| <= 127: a lane's eight 2-value sums stay below
            // 8 * 15 * 127 * 2 = 30480 < 2^15.
            let sum = _mm256_add_epi16(
                _mm256_add_epi16(part[0], part[1]),
                _mm256_add_epi16(part[2], part[3]),
            );
            _mm256_madd_epi16(sum, _mm256_set1_epi16(1))
        }

        #[inline(always)]
        unsafe fn q8(w: *const i8, x: *const i8, xb: usize, _bias: i32) -> __m256i {
            // Products of two int8 codes: sum pairs into i32 at once (two would overflow i16).
            let ones = _mm256_set1_epi16(1);
            let mut part = [_mm256_setzero_si256(); 8];
            for (v, p) in part.iter_mut().enumerate() {
                let wv = _mm256_loadu_si256(w.add(v * 32) as *const __m256i);
                // maddubs multiplies unsigned by signed: move w's sign onto x.
                let xv = _mm256_sign_epi8(bcast4(x, xb + 4 * v), wv);
                let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), xv);
                *p = _mm256_madd_epi16(prod, ones);
            }
            let [p0, p1, p2, p3, p4, p5, p6, p7] = part;
            _mm256_add_epi32(
                _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)),
                _mm256_add_epi32(_mm256_add_epi32(p4, p5), _mm256_add_epi32(p6, p7)),
            )
        }
    }

    /// AVX-512 VNNI on 256-bit vectors: `vpdpbusd` multiplies and adds four bytes into each
    /// 32-bit lane in one instruction, where AVX2 takes three.
    struct Vnni;

    impl Vnni {
        /// Lane r: row r's bytes in `code[v]` times the activation bytes `x[xb + 4v..][..4]`,
        /// summed over the eight vectors v of a block, in two chains of four so that each
        /// waits on four multiply-adds instead of eight.
        #[inline(always)]
        unsafe fn sums(code: &[__m256i; 8], x: *const i8, xb: usize) -> __m256i {
            let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for v in 0..4 {
                a = _mm256_dpbusd_epi32(a, code[v], bcast4(x, xb + 4 * v));
                b = _mm256_dpbusd_epi32(b, code[4 + v], bcast4(x, xb + 16 + 4 * v));
            }
            _mm256_add_epi32(a, b)
        }
    }

    impl Dot for Vnni {
        #[inline(always)]
        unsafe fn q4(lo: &[__m256i; 4], hi: &[__m256i; 4], x: *const i8, xb: usize) -> __m256i {
            let code = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
            Self::sums(&code, x, xb)
        }

        /// The weights go in as unsigned bytes, w + 128 (w ^ 0x80): `vpdpbusd` multiplies
        /// unsigned by signed bytes, and the activations can then stay signed and be broadcast
        /// from memory, as for Q4. What that adds, 128 times the activation codes' sum, comes
        /// off at the end. Exact integers either way. The weights are loaded and flipped per
        /// activation row (from L1 after the first): flipping a block once for all rows ahead
        /// of them made one-token forwards of a model on Q8_0 throughout 4 to 9% slower than
        /// this, where the kernel waits on memory (two builds' engines alternating in one
        /// process).
        #[inline(always)]
        unsafe fn q8(w: *const i8, x: *const i8, xb: usize, bias: i32) -> __m256i {
            let flip = _mm256_set1_epi8(-128);
            let mut code = [_mm256_setzero_si256(); 8];
            for (v, c) in code.iter_mut().enumerate() {
                *c = _mm256_xor_si256(_mm256_loadu_si256(w.add(v * 32) as *const __m256i), flip);
            }
            _mm256_sub_epi32(Self::sums(&code, x, xb), _mm256_set1_epi32(bias))
        }
    }

    /// Weight rows `o0..o0 + 8` (a tile) against activation rows `r0..r0 + R`: lane l of
    /// `out.row(i)` is row r0 + i against weight row o0 + l. Per block, each activation row's eight
    /// integer sums end up in one vector (lane = weight row), then
    /// `acc = fma(isum, dw * dx, acc)` and (Q4) `offset = fma(m, s, offset)`; the result is
    /// `acc + offset`. Nothing here depends on R but the number of rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const R: usize>(
        w: &QuantMatrix,
        x: &QuantActs,
        r0: usize,
        o0: usize,
        out: Dest,
    ) {
        tile_with::<R, Madd>(w, x, r0, o0, out)
    }

    /// [`tile`] with AVX-512 VNNI's multiply-adds (bit-identical results). With AVX-512VL
    /// the compiler also has 32 vector registers instead of 16.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn tile_vnni<const R: usize>(
        w: &QuantMatrix,
        x: &QuantActs,
        r0: usize,
        o0: usize,
        out: Dest,
    ) {
        tile_with::<R, Vnni>(w, x, r0, o0, out)
    }

    /// Two tiles (weight rows o0..o0 + 16) against activation rows `r0..r0 + R` on 512-bit
    /// vectors, the first tile in the low half: the same integer sums and float steps per lane
    /// as [`tile`], so the same bits, with half the instructions per activation row. Lane l of
    /// `out.row(i)` is row r0 + i against weight row o0 + l.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn pair_vnni<const R: usize>(
        w: &QuantMatrix,
        x: &QuantActs,
        r0: usize,
        o0: usize,
        out: Dest,
    ) {
        let nb = x.k / BLOCK;
        let ActRows {
            q: xq,
            d: xd,
            s: xs,
            bias: xbias,
            ..
        } = ActRows::<R>::new(x, r0);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut offset = [_mm512_setzero_ps(); R];
        // The two tiles' per-block values (f16 scales or offsets) at block b.
        let halves = |v: &[half::f16], b: usize| {
            let at = |o: usize| v.as_ptr().add(scale_index(nb, o, b)) as *const __m128i;
            let both = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(at(o0))),
                _mm_loadu_si128(at(o0 + TILE)),
            );
            _mm512_cvtph_ps(both)
        };
        // Vector `at` of the first tile's codes and the same one of the second's, `tile` bytes
        // later.
        let join = |p: *const u8, tile: usize, at: usize| {
            let a = _mm256_loadu_si256(p.add(at) as *const __m256i);
            let c = _mm256_loadu_si256(p.add(tile + at) as *const __m256i);
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), c)
        };
        // The next pair follows this one: a block's share of it per block, in order.
        let hint_bytes = |next: *const u8, bytes: usize| {
            for l in (0..bytes).step_by(64) {
                hint(next.wrapping_add(l));
            }
        };
        match w {
            QuantMatrix::Q4 { qs, d, m, .. } => {
                let mask = _mm512_set1_epi8(0x0F);
                let tile = nb * TILE * 16;
                let base = qs.as_ptr().add(o0 / TILE * tile);
                for b in 0..nb {
                    hint_bytes(base.wrapping_add(2 * tile + b * 256), 256);
                    for next in [o0 + PAIR, o0 + PAIR + TILE] {
                        hint_scales(d, nb, next, b);
                        hint_scales(m, nb, next, b);
                    }
                    let raw: [__m512i; 4] =
                        std::array::from_fn(|v| join(base, tile, b * 128 + v * 32));
                    let lo = raw.map(|v| _mm512_and_si512(v, mask));
                    let hi = raw.map(|v| _mm512_and_si512(_mm512_srli_epi16(v, 4), mask));
                    // Vector v against bytes 4v..4v + 4: low nibbles are values 4v.., high
                    // nibbles 16 + 4v.. .
                    let codes = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
                    let dw = halves(d, b);
                    for i in 0..R {
                        let isum = pair_sums(&codes, xq[i].add(b * BLOCK));
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*xd[i].add(b)));
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[i]);
                    }
                }
                for b in 0..nb {
                    let mw = halves(m, b);
                    for i in 0..R {
                        offset[i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*xs[i].add(b)), offset[i]);
                    }
                }
            }
            QuantMatrix::Q8 { qs, d, .. } => {
                // As unsigned bytes, w + 128, as in the one-tile kernel (`Vnni::q8`), here
                // flipped once per block for all rows (used from four rows up, see
                // `Isa::pair_rows`).
                let flip = _mm512_set1_epi8(-128);
                let tile = nb * TILE * BLOCK;
                let base = qs.as_ptr().add(o0 / TILE * tile) as *const u8;
                for b in 0..nb {
                    hint_bytes(base.wrapping_add(2 * tile + b * 512), 512);
                    for next in [o0 + PAIR, o0 + PAIR + TILE] {
                        hint_scales(d, nb, next, b);
                    }
                    // Vector v: bytes 4v..4v + 4 of the sixteen rows.
                    let codes: [__m512i; 8] = std::array::from_fn(|v| {
                        _mm512_xor_si512(join(base, tile, b * 256 + v * 32), flip)
                    });
                    let dw = halves(d, b);
                    for i in 0..R {
                        let bias = _mm512_set1_epi32(*xbias[i].add(b));
                        let isum = _mm512_sub_epi32(pair_sums(&codes, xq[i].add(b * BLOCK)), bias);
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*xd[i].add(b)));
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[i]);
                    }
                }
            }
        }
        let lanes: __mmask16 = if out.cols >= PAIR {
            !0
        } else {
            (1 << out.cols) - 1
        };
        for i in 0..R {
            _mm512_mask_storeu_ps(out.row(i), lanes, _mm512_add_ps(acc[i], offset[i]));
        }
    }

    /// One activation row's sums against a block of two tiles: lane l of vector v holds
    /// bytes 4v..4v + 4 of weight row l (unsigned), multiplied by the row's codes at
    /// `x + 4v` (signed), in two chains of four.
    #[inline(always)]
    unsafe fn pair_sums(codes: &[__m512i; 8], x: *const i8) -> __m512i {
        let bytes = |at: usize| _mm512_set1_epi32((x.add(at) as *const i32).read_unaligned());
        let (mut a, mut c) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for v in 0..4 {
            a = _mm512_dpbusd_epi32(a, codes[v], bytes(4 * v));
            c = _mm512_dpbusd_epi32(c, codes[4 + v], bytes(16 + 4 * v));
        }
        _mm512_add_epi32(a, c)
    }

    /// Hints block b's per-block values (scales or offsets) of the tile at weight row `o`: a
    /// stream of its own beside the codes, which the hardware prefetcher left the kernels
    /// waiting on (hinting it made one-token forwards 3 to 10% faster).
    #[inline(always)]
    unsafe fn hint_scales(v: &[half::f16], nb: usize, o: usize, b: usize) {
        hint(v.as_ptr().wrapping_add(scale_index(nb, o, b)));
    }

    #[inline(always)]
    unsafe fn tile_with<const R: usize, D: Dot>(
        w: &QuantMatrix,
        x: &QuantActs,
        r0: usize,
        o0: usize,
        out: Dest,
    ) {
        let nb = x.k / BLOCK;
        // Q4 multiplies by the activation scales straight from memory (`xd8`, see
        // `QuantActs::d8`); for Q8 that measured 3% slower than a broadcast (`xd`).
        let ActRows {
            q: xq,
            d: xd,
            d8: xd8,
            s: xs,
            bias: xbias,
        } = ActRows::<R>::new(x, r0);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offset = [_mm256_setzero_ps(); R];
        match w {
            QuantMatrix::Q4 { qs, d, m, .. } => {
                let mask = _mm256_set1_epi8(0x0F);
                let base = qs.as_ptr().add(o0 / TILE * nb * TILE * 16);
                // The next tile follows this one.
                let next = base.wrapping_add(nb * TILE * 16);
                for b in 0..nb {
                    hint(next.wrapping_add(b * 128));
                    hint(next.wrapping_add(b * 128 + 64));
                    hint_scales(d, nb, o0 + TILE, b);
                    hint_scales(m, nb, o0 + TILE, b);
                    // Vector v: bytes 4v..4v + 4 of the eight rows; low nibbles are values
                    // 4v..4v + 4 of the block, high nibbles 16 + 4v.. .
                    let raw: [__m256i; 4] = std::array::from_fn(|v| {
                        _mm256_loadu_si256(base.add(b * 128 + v * 32) as *const __m256i)
                    });
                    let lo = raw.map(|v| _mm256_and_si256(v, mask));
                    let hi = raw.map(|v| _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
                    let at = scale_index(nb, o0, b);
                    let dw = load_f16x8(d.as_ptr().add(at));
                    for i in 0..R {
                        let isum = D::q4(&lo, &hi, xq[i], b * BLOCK);
                        let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(xd8[i].add(b * 8)));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[i]);
                    }
                }
                // The offsets' own chain, in the same block order: a pass of its own keeps
                // the loop above within the sixteen vector registers.
                for b in 0..nb {
                    let mw = load_f16x8(m.as_ptr().add(scale_index(nb, o0, b)));
                    for i in 0..R {
                        offset[i] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*xs[i].add(b)), offset[i]);
                    }
                }
            }
            QuantMatrix::Q8 { qs, d, .. } => {
                let base = qs.as_ptr().add(o0 / TILE * nb * TILE * BLOCK);
                let next = base.wrapping_add(nb * TILE * BLOCK);
                for b in 0..nb {
                    for l in 0..4 {
                        hint(next.wrapping_add(b * 256 + l * 64));
                    }
                    let dw = load_f16x8(d.as_ptr().add(scale_index(nb, o0, b)));
                    hint_scales(d, nb, o0 + TILE, b);
                    for i in 0..R {
                        // Vector v: bytes 4v..4v + 4 of the eight rows.
                        let isum = D::q8(base.add(b * 256), xq[i], b * BLOCK, *xbias[i].add(b));
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*xd[i].add(b)));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[i]);
                    }
                }
            }
        }
        let lanes = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(out.cols as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        for i in 0..R {
            let sum = _mm256_add_ps(acc[i], offset[i]);
            if out.cols >= TILE {
                _mm256_storeu_ps(out.row(i), sum);
            } else {
                _mm256_maskstore_ps(out.row(i), lanes, sum);
            }
        }
    }
}

/// The tile kernel for AArch64 with the dot-product extension: the same tiles, sums and float
/// steps as [`avx2::tile`], on 128-bit vectors (a tile's eight rows are two vectors of four).
/// `sdot` multiplies four bytes by four bytes and adds them into each 32-bit lane, so each
/// block's integer sum needs no widening steps between the multiplies. Its intrinsic is not
/// stable in Rust yet, hence the one-line `asm!` (as for the f16 -> f32 widening).
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::arch::asm;

    use super::super::quant::{scale_index, QuantActs, QuantMatrix, BLOCK, TILE};
    use super::{ActRows, Dest};

    /// `acc` plus, in lane r, the dot product of bytes 4r..4r + 4 of `w` with bytes
    /// 4L..4L + 4 of `x`.
    #[inline(always)]
    unsafe fn sdot_lane<const L: i32>(mut acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            x = in(vreg) x,
            lane = const L,
            options(pure, nomem, nostack),
        );
        acc
    }

    /// A block's sums for one activation row whose codes are at `x`: lane r sums bytes
    /// 4r..4r + 4 of `codes[v]` times the row's bytes 4v..4v + 4, over v, in two chains of
    /// four (halving the wait on each `sdot`'s result).
    #[inline(always)]
    unsafe fn block_sums(codes: &[int8x16_t; 8], x: *const i8) -> int32x4_t {
        let (x0, x1) = (vld1q_s8(x), vld1q_s8(x.add(16)));
        let mut low = sdot_lane::<0>(vdupq_n_s32(0), codes[0], x0);
        low = sdot_lane::<1>(low, codes[1], x0);
        low = sdot_lane::<2>(low, codes[2], x0);
        low = sdot_lane::<3>(low, codes[3], x0);
        let mut high = sdot_lane::<0>(vdupq_n_s32(0), codes[4], x1);
        high = sdot_lane::<1>(high, codes[5], x1);
        high = sdot_lane::<2>(high, codes[6], x1);
        high = sdot_lane::<3>(high, codes[7], x1);
        vaddq_s32(low, high)
    }

    /// Four f16 values at `p` as f32 lanes (`fcvtl` is base AArch64; its intrinsic needs the
    /// unstable f16 types).
    #[inline(always)]
    unsafe fn load_f16x4(p: *const half::f16) -> float32x4_t {
        let h = vld1_u16(p as *const u16);
        let out: float32x4_t;
        asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack),
        );
        out
    }

    /// Weight rows `o0..o0 + 8` against activation rows `r0..r0 + R`, as [`super::avx2::tile`]:
    /// per block an exact integer sum per (row, weight row), then
    /// `acc = fma(isum, dw * dx, acc)` and (Q4) `offset = fma(m, s, offset)`; the result is
    /// `acc + offset`. Lanes 0..4 of each pair are weight rows o0..o0 + 4, lanes 4..8 the rest.
    pub unsafe fn tile<const R: usize>(
        w: &QuantMatrix,
        x: &QuantActs,
        r0: usize,
        o0: usize,
        out: Dest,
    ) {
        let nb = x.k / BLOCK;
        let ActRows {
            q: xq,
            d: xd,
            s: xs,
            ..
        } = ActRows::<R>::new(x, r0);
        let zero = vdupq_n_f32(0.0);
        let mut acc = [[zero; 2]; R];
        let mut offset = [[zero; 2]; R];
        match w {
            QuantMatrix::Q4 { qs, d, m, .. } => {
                let mask = vdupq_n_u8(0x0F);
                let base = qs.as_ptr().add(o0 / TILE * nb * TILE * 16);
                for b in 0..nb {
                    let at = scale_index(nb, o0, b);
                    // Vector v of the AVX2 layout (bytes 4v..4v + 4 of the eight rows) is two
                    // here: half h holds rows 4h..4h + 4. A half at a time keeps its eight
                    // unpacked vectors in registers (arrays of both halves went to the stack).
                    for h in 0..2 {
                        let codes = base.add(b * 128 + h * 16);
                        let raw = [0, 1, 2, 3].map(|v| vld1q_u8(codes.add(v * 32)));
                        // Low nibbles are values 4v..4v + 4 of the block, high nibbles
                        // 16 + 4v.. .
                        let lo = raw.map(|r| vreinterpretq_s8_u8(vandq_u8(r, mask)));
                        let hi = raw.map(|r| vreinterpretq_s8_u8(vshrq_n_u8::<4>(r)));
                        let codes = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
                        let dw = load_f16x4(d.as_ptr().add(at + 4 * h));
                        for i in 0..R {
                            let isum = block_sums(&codes, xq[i].add(b * BLOCK));
                            let scale = vmulq_f32(dw, vdupq_n_f32(*xd[i].add(b)));
                            acc[i][h] = vfmaq_f32(acc[i][h], vcvtq_f32_s32(isum), scale);
                        }
                    }
                }
                for b in 0..nb {
                    let at = scale_index(nb, o0, b);
                    let mw = [
                        load_f16x4(m.as_ptr().add(at)),
                        load_f16x4(m.as_ptr().add(at + 4)),
                    ];
                    for i in 0..R {
                        let s = vdupq_n_f32(*xs[i].add(b));
                        for h in 0..2 {
                            offset[i][h] = vfmaq_f32(offset[i][h], mw[h], s);
                        }
                    }
                }
            }
            QuantMatrix::Q8 { qs, d, .. } => {
                let base = qs.as_ptr().add(o0 / TILE * nb * TILE * BLOCK);
                for b in 0..nb {
                    let at = scale_index(nb, o0, b);
                    // Half h of vector v of the AVX2 layout: bytes 4v..4v + 4 of rows
                    // 4h..4h + 4.
                    for h in 0..2 {
                        let codes: [int8x16_t; 8] =
                            std::array::from_fn(|v| vld1q_s8(base.add(b * 256 + v * 32 + h * 16)));
                        let dw = load_f16x4(d.as_ptr().add(at + 4 * h));
                        for i in 0..R {
                            let isum = block_sums(&codes, xq[i].add(b * BLOCK));
                            let scale = vmulq_f32(dw, vdupq_n_f32(*xd[i].add(b)));
                            acc[i][h] = vfmaq_f32(acc[i][h], vcvtq_f32_s32(isum), scale);
                        }
                    }
                }
            }
        }
        for i in 0..R {
            for h in 0..2 {
                let sum = vaddq_f32(acc[i][h], offset[i][h]);
                if out.cols >= 4 * h + 4 {
                    vst1q_f32(out.row(i).add(4 * h), sum);
                } else {
                    let mut lanes = [0f32; 4];
                    vst1q_f32(lanes.as_mut_ptr(), sum);
                    for (l, &v) in lanes
                        .iter()
                        .enumerate()
                        .take(out.cols.saturating_sub(4 * h))
                    {
                        *out.row(i).add(4 * h + l) = v;
                    }
                }
            }
        }
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

    /// Every instruction set this CPU has against the reference; the vector ones against each
    /// other, bit for bit (they sum the same integers and run the same float steps).
    fn check(w: &QuantMatrix, x: &QuantActs) {
        let (n, _) = w.dims();
        let want = matmul_reference(w, x);
        let mut vector: Option<(Isa, Vec<f32>)> = None;
        for isa in Isa::available() {
            let mut out = vec![0f32; x.m * n];
            matmul_with(isa, w, x, &mut out);
            check_close(&out, &want);
            if isa == Isa::Portable {
                continue;
            }
            match &vector {
                Some((first, v)) => assert!(
                    v.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} and {} kernels differ",
                    first.name(),
                    isa.name()
                ),
                None => vector = Some((isa, out)),
            }
        }
    }

    fn check_close(out: &[f32], want: &[f32]) {
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in out.iter().zip(want).enumerate() {
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
            // Two-tile calls whose second tile is part padding, at 7 (Q4 only) and 8 rows.
            (44, 64, 8),
            (12, 96, 7),
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
        // n = 100: the last tile of eight rows is part padding. m = 11: chunks of 4, 4 and 3
        // (or 8 and 3, see `Isa::chunk`).
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
            for isa in Isa::available() {
                let mut all = vec![0f32; m * n];
                matmul_with(isa, &w, &x, &mut all);
                // Every chunk size, at every offset into the rows.
                for rows in 1..=CHUNK + 1 {
                    for r0 in [0, 1, m - rows] {
                        let mut part = QuantActs::default();
                        part.quantize(&raw[r0 * k..(r0 + rows) * k], rows, k);
                        let mut out = vec![0f32; rows * n];
                        matmul_with(isa, &w, &part, &mut out);
                        assert_eq!(
                            &out[..],
                            &all[r0 * n..(r0 + rows) * n],
                            "{}: {rows} rows from {r0}",
                            isa.name()
                        );
                    }
                }
            }
            let mut all = vec![0f32; m * n];
            matmul(&w, &x, &mut all);
            // The portable kernel sums in another order (no fused multiply-add): close, not
            // equal.
            let mut portable = [[0f32; TILE]; 3];
            let out = Dest {
                ptr: portable.as_mut_ptr() as *mut f32,
                stride: TILE,
                cols: TILE,
            };
            tile_portable(&w, &x, 8, 3, 96, out);
            for (i, res) in portable.iter().enumerate().take(3) {
                for (lane, &v) in res.iter().enumerate().take(n - 96) {
                    let a = all[(8 + i) * n + 96 + lane];
                    assert!((v - a).abs() <= 1e-4 * a.abs().max(1.0), "{v} vs {a}");
                }
            }
        }
    }

    #[test]
    fn tiled_layout_round_trips_row_major_codes() {
        let (n, k) = (13, 64);
        let codes: Vec<u8> = (0..n * k / 2).map(|i| (i * 31 % 256) as u8).collect();
        let d = vec![f16::ONE; n * k / BLOCK];
        let w = QuantMatrix::q4(n, k, codes.clone(), &d, &d);
        let back: Vec<u8> = (0..n)
            .flat_map(|o| (0..k / BLOCK).map(move |b| (o, b)))
            .flat_map(|(o, b)| w.block_codes(o, b).collect::<Vec<_>>())
            .collect();
        assert_eq!(back, codes);
        let stacked = QuantMatrix::stack(&[w.clone(), w]).unwrap();
        assert_eq!(stacked.dims(), (2 * n, k));
        assert_eq!(
            stacked.block_codes(n + 5, 1).collect::<Vec<_>>(),
            codes[(5 * 2 + 1) * 16..][..16]
        );
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
