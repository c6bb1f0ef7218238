//! CPU kernels for the fast forward path: weights kept in 32-value quantized blocks, activations
//! quantized to int8 per 32 values, and a matmul that streams each weight row **once** for all
//! m activation rows of a Jacobi block (candle's quantized matmul loops rows outermost, so a
//! block of m tokens reads every weight m times).
//!
//! Every output `(r, o)` is computed by the same instruction sequence whatever m is, so a block
//! of tokens gets bit-identical results to one-token steps: Jacobi stays lossless.

mod attention;
mod matmul;
mod quant;
pub(crate) mod simd;

pub use attention::causal_attention;
pub use matmul::{matmul, matmul_reference};
pub use quant::{QuantActs, QuantMatrix, BLOCK, ROWS};
