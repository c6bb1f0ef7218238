//! AdamW fused into one in-place pass per tensor, on both cores.
//!
//! candle's `AdamW` spends as long as the backward pass here: about thirteen element-wise ops per
//! tensor, each allocating and single-threaded. This one reads each weight, gradient and moment
//! once, with the same math (decoupled weight decay, bias-corrected moments) and the gradient
//! clipping factor folded in.

use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments for each parameter, in the order of the parameter list.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far (bias correction).
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], config: AdamWConfig) -> Self {
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| vec![0f32; p.elem_count()])
                .collect()
        };
        Self {
            config,
            step: 0,
            m: zeros(),
            v: zeros(),
        }
    }

    /// Applies one update with learning rate `lr`, the gradients multiplied by `grad_scale`.
    pub fn update(
        &mut self,
        params: &[(String, Var)],
        grads: &[Tensor],
        lr: f32,
        grad_scale: f32,
    ) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.m.len() {
            return Err(Error::BadConfig(
                "optimizer state does not match the parameters".into(),
            ));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        for (((_, p), g), (m, v)) in params
            .iter()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            let op = Update {
                moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                lr,
                grad_scale,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                decay: 1.0 - lr * c.weight_decay,
                bias1: 1.0 - c.beta1.powi(t),
                bias2: 1.0 - c.beta2.powi(t),
            };
            p.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
        }
        Ok(())
    }
}

/// Global L2 norm of the gradients, on the f32 data itself.
pub fn grad_norm(grads: &[Tensor]) -> Result<f32> {
    let mut sum = 0f64;
    for g in grads {
        let g = g.contiguous()?;
        let (storage, layout) = g.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(Error::BadConfig("training runs on the CPU".into()));
        };
        let data = &cpu.as_slice::<f32>()?[layout.start_offset()..][..g.elem_count()];
        sum += data
            .par_chunks(1 << 14)
            .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .sum::<f64>();
    }
    Ok(sum.sqrt() as f32)
}

struct Update<'a> {
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
    lr: f32,
    grad_scale: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    bias1: f32,
    bias2: f32,
}

impl candle_core::InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        lp: &Layout,
        grad: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(param) = param else {
            candle_core::bail!("fused-adamw: parameters must be f32");
        };
        if !lp.is_contiguous() || !lg.is_contiguous() {
            candle_core::bail!("fused-adamw: tensors must be contiguous");
        }
        let n = lp.shape().elem_count();
        let param = &mut param[lp.start_offset()..][..n];
        let grad = &grad.as_slice::<f32>()?[lg.start_offset()..][..n];
        let mut moments = self.moments.lock().expect("not poisoned");
        let (m, v) = &mut *moments;
        const CHUNK: usize = 1 << 14;
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let g = g[i] * self.grad_scale;
                    m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * g;
                    v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * g * g;
                    let m_hat = m[i] / self.bias1;
                    let v_hat = v[i] / self.bias2;
                    p[i] = p[i] * self.decay - self.lr * m_hat / (v_hat.sqrt() + self.eps);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Same trajectory as candle's reference AdamW.
    #[test]
    fn matches_candle_adamw() {
        use candle_nn::Optimizer;
        let init: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin()).collect();
        let ours = Var::from_vec(init.clone(), 1000, &Device::Cpu).unwrap();
        let theirs = Var::from_vec(init, 1000, &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), ours.clone())];
        let cfg = AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut adam = AdamW::new(&params, cfg);
        let mut reference = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.01,
                beta1: cfg.beta1 as f64,
                beta2: cfg.beta2 as f64,
                eps: cfg.eps as f64,
                weight_decay: cfg.weight_decay as f64,
            },
        )
        .unwrap();
        for _ in 0..5 {
            let loss = |w: &Var| {
                (w.as_tensor().sqr().unwrap() * 0.5)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let g = loss(&ours).backward().unwrap();
            adam.update(
                &params,
                &[g.get(ours.as_tensor()).unwrap().clone()],
                0.01,
                1.0,
            )
            .unwrap();
            reference.backward_step(&loss(&theirs)).unwrap();
        }
        let a = ours.as_tensor().to_vec1::<f32>().unwrap();
        let b = theirs.as_tensor().to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
}
