//! CPU kernels for the fast forward path: weights kept in 32-value quantized blocks, activations
//! quantized to int8 per 32 values, and a matmul that streams each weight row **once** for all
//! m activation rows of a Jacobi block (candle's quantized matmul loops rows outermost, so a
//! block of m tokens reads every weight m times).
//!
//! Every output `(r, o)` is computed by the same instruction sequence whatever m is, so a block
//! of tokens gets bit-identical results to one-token steps: Jacobi stays lossless.

mod arena;
mod attention;
mod matmul;
mod quant;
pub(crate) mod simd;
pub mod team;

pub use arena::{pack, HugePages, Store, StoreMut};
pub use attention::causal_attention;
pub use matmul::{matmul, matmul_reference, Isa};
pub use quant::{QuantActs, QuantMatrix, BLOCK};

/// Rows per task for a row-wise step between the matmuls (activation quantization, SwiGLU) over
/// m rows of `row_len` values: split evenly over the kernel threads from [`SPLIT_VALUES`] values
/// up, else one task. Each row is computed by the same code either way.
pub fn rows_per_task(m: usize, row_len: usize) -> usize {
    if m * row_len < SPLIT_VALUES {
        return m.max(1);
    }
    m.div_ceil(team::threads()).max(1)
}

/// Below this many values a step between matmuls runs on one thread. Measured in one process
/// (quantization, calls alternating) with rayon's hand-offs: 8 rows of 576 took 3.5 us on one
/// thread and 4.0 split in two, 16 x 576 6.0 against 5.1 us, 8 x 1536 8.7 against 6.4. With the
/// team's cheaper hand-offs, 2048 and 4096 measured the same as this in whole forwards (0.997x
/// to 1.008x at 1 to 16 tokens).
pub const SPLIT_VALUES: usize = 8192;
