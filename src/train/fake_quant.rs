//! Quantization-aware training: the forward sees weights and activations rounded the way the CPU
//! kernels round them once the trained model is deployed, and gradients pass through the
//! rounding unchanged (the straight-through estimator).
//!
//! Without it, what consistency training learns is partly lost at deployment: a trained
//! SmolLM2-135M that fixed 1.195 tokens per pass in f32 fixed 1.116 on the kernels' int8
//! activations and Q8_0 weights (BENCHMARKS.md). The rounding here is the kernels' own:
//! activations per 32 consecutive values with scale `max |x| / 127` (`QuantActs::quantize`),
//! weights per 32 values along the input dimension with the scale stored as f16
//! (`QuantMatrix::quantize_q8`, what a float model folder is requantized to at load).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::kernels::BLOCK;

/// What is rounded, and along which dimension its blocks of 32 run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeQuant {
    /// Activations (rows, k): blocks along the last dimension.
    Acts,
    /// A weight stored (in, out), as training keeps them: blocks along the first dimension.
    Weight,
}

impl FakeQuant {
    /// `x` rounded as the kernels would round it; the identity where the kernels would not run
    /// (a quantized dimension that is not a multiple of 32: the CPU engine then runs candle on
    /// float weights).
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let along = match self {
            FakeQuant::Acts => dims[dims.len() - 1],
            FakeQuant::Weight => dims[0],
        };
        if along % BLOCK != 0 || (self == FakeQuant::Weight && dims.len() != 2) {
            return Ok(x.clone());
        }
        x.apply_op1(self)
    }
}

/// Rounds 32 values in place as `QuantActs::quantize` does: codes `round(x / d)`, `d = max|x| /
/// 127`, kept as `code * d`.
fn round_acts(block: &mut [f32]) {
    let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
    let d = amax / 127.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    for v in block {
        *v = (*v * inv).round() * d;
    }
}

/// The Q8_0 scale of a block whose largest magnitude is `amax`, and its inverse, as
/// `QuantMatrix::quantize_q8` computes them (the scale stored as f16).
fn q8_scale(amax: f32) -> (f32, f32) {
    let d = f16::from_f32(amax / 127.0).to_f32();
    (d, if d == 0.0 { 0.0 } else { 1.0 / d })
}

impl CustomOp1 for FakeQuant {
    fn name(&self) -> &'static str {
        "fake-quant"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let mut values = match layout.contiguous_offsets() {
            Some((a, b)) => storage.as_slice::<f32>()?[a..b].to_vec(),
            None => candle_core::bail!("fake-quant: input must be contiguous"),
        };
        match self {
            FakeQuant::Acts => values.par_chunks_mut(BLOCK).for_each(round_acts),
            FakeQuant::Weight => {
                // (in, out): a block is 32 consecutive rows of one column, so a band of 32 rows
                // holds one block of every column.
                let out = shape.dims()[1];
                values.par_chunks_mut(BLOCK * out).for_each(|band| {
                    for o in 0..out {
                        let amax = (0..BLOCK).fold(0f32, |a, j| a.max(band[j * out + o].abs()));
                        let (d, inv) = q8_scale(amax);
                        for j in 0..BLOCK {
                            let v = &mut band[j * out + o];
                            *v = (*v * inv).round().clamp(-127.0, 127.0) * d;
                        }
                    }
                });
            }
        }
        Ok((CpuStorage::F32(values), shape))
    }

    /// Straight through: the rounding's own derivative is zero almost everywhere, and the
    /// point is to let the weights move as if it were not there.
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{QuantActs, QuantMatrix};
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed);
                (h % 2001) as f32 / 1000.0 - 1.0 + if i % 97 == 0 { 6.0 } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn activations_round_as_the_kernels_quantize_them() {
        let (m, k) = (3, 96);
        let x = values(m * k, 1);
        let mut acts = QuantActs::default();
        acts.quantize(&x, m, k);
        let t = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let got: Vec<f32> = FakeQuant::Acts
            .apply(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for r in 0..m {
            for j in 0..k {
                let want = acts.code(r, j) as f32 * acts.scale(r, j / BLOCK);
                assert_eq!(got[r * k + j], want, "row {r}, value {j}");
            }
        }
    }

    #[test]
    fn weights_round_as_a_float_folder_is_requantized_at_load() {
        // Stored (in, out) for training; the kernels quantize the (out, in) matrix by rows.
        let (k, n) = (64, 5);
        let w_t = values(k * n, 2);
        let w: Vec<f32> = (0..n * k).map(|i| w_t[(i % k) * n + i / k]).collect();
        let want = QuantMatrix::quantize_q8(n, k, &w).dequantize();
        let t = Tensor::from_vec(w_t, (k, n), &Device::Cpu).unwrap();
        let got: Vec<f32> = FakeQuant::Weight
            .apply(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for o in 0..n {
            for j in 0..k {
                assert_eq!(got[j * n + o], want[o * k + j], "row {o}, value {j}");
            }
        }
    }

    #[test]
    fn gradients_pass_straight_through() {
        let w = Var::from_vec(values(32 * 3, 3), (32, 3), &Device::Cpu).unwrap();
        let loss = (FakeQuant::Weight.apply(w.as_tensor()).unwrap() * 2.0)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(g.iter().all(|&v| v == 2.0), "{g:?}");
    }

    #[test]
    fn dimensions_the_kernels_would_not_quantize_are_left_alone() {
        let t = Tensor::from_vec(values(2 * 40, 4), (2, 40), &Device::Cpu).unwrap();
        let got = FakeQuant::Acts.apply(&t).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }
}
