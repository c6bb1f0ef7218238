//! The llama forward again, this time differentiable: every weight but the token embedding is a
//! candle `Var`, and every op has a backward (candle's fused softmax, RMS norm and RoPE do not,
//! so they are spelled out here from primitive ops).
//!
//! The forward takes explicit positions and an explicit attention mask instead of a KV cache, so
//! one pass can carry several continuations of one shared prompt (see [`super::batch`]).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::model::Config;

/// One layer's trainable weights. Matrices are stored transposed, (in, out), so a linear layer
/// is `x @ w` and its weight gradient comes out contiguous (HF's (out, in) would make every
/// gradient a transposed view, accumulated element by element through strides).
struct Layer {
    input_layernorm: Var,
    q_proj: Var,
    k_proj: Var,
    v_proj: Var,
    o_proj: Var,
    post_attention_layernorm: Var,
    gate_proj: Var,
    up_proj: Var,
    down_proj: Var,
}

/// A trainable llama. The token embedding stays frozen: it is 20% of SmolLM2's weights and, tied
/// to the LM head, would cost a third of every step in the optimizer for little gain.
pub struct TrainLlama {
    cfg: Config,
    /// (vocab, hidden), not a `Var`.
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Var,
    /// `Some` only for untied heads, (vocab, hidden).
    lm_head: Option<Var>,
    /// (context, head_dim / 2)
    cos: Tensor,
    sin: Tensor,
    /// Every `Var` with its Hugging Face name, in a fixed order (checkpoints, the optimizer).
    params: Vec<(String, Var)>,
}

impl TrainLlama {
    /// Takes f32 tensors under Hugging Face names (as `Transformer::hf_tensors` gives them).
    pub fn new(cfg: Config, mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut params = Vec::new();
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
            if t.dims() != shape {
                return Err(Error::BadConfig(format!(
                    "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        let mut var = |name: String, shape: &[usize], params: &mut Vec<(String, Var)>| {
            let t = take(&name, shape)?;
            let t = if shape.len() == 2 {
                t.t()?.contiguous()?
            } else {
                t
            };
            let v = Var::from_tensor(&t)?;
            params.push((name, v.clone()));
            Ok::<_, Error>(v)
        };
        let (h, kv, q, ff) = (
            cfg.hidden_size,
            cfg.kv_dim(),
            cfg.num_heads * cfg.head_dim,
            cfg.intermediate_size,
        );
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_layernorm: var(format!("{p}.input_layernorm.weight"), &[h], &mut params)?,
                q_proj: var(format!("{p}.self_attn.q_proj.weight"), &[q, h], &mut params)?,
                k_proj: var(
                    format!("{p}.self_attn.k_proj.weight"),
                    &[kv, h],
                    &mut params,
                )?,
                v_proj: var(
                    format!("{p}.self_attn.v_proj.weight"),
                    &[kv, h],
                    &mut params,
                )?,
                o_proj: var(format!("{p}.self_attn.o_proj.weight"), &[h, q], &mut params)?,
                post_attention_layernorm: var(
                    format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    &mut params,
                )?,
                gate_proj: var(format!("{p}.mlp.gate_proj.weight"), &[ff, h], &mut params)?,
                up_proj: var(format!("{p}.mlp.up_proj.weight"), &[ff, h], &mut params)?,
                down_proj: var(format!("{p}.mlp.down_proj.weight"), &[h, ff], &mut params)?,
            });
        }
        let norm = var("model.norm.weight".into(), &[h], &mut params)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(var(
                "lm_head.weight".into(),
                &[cfg.vocab_size, h],
                &mut params,
            )?)
        };
        let embed_tokens = take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let (cos, sin) = crate::model::llama::rope_tables_vec(&cfg);
        let half = (cfg.context_length, cfg.head_dim / 2);
        Ok(Self {
            cos: Tensor::from_vec(cos, half, device)?,
            sin: Tensor::from_vec(sin, half, device)?,
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            params,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Every trainable weight under its Hugging Face name; matrices transposed, (in, out).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Every weight, trained or frozen, under its Hugging Face name (for saving a model folder).
    pub fn hf_tensors(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| {
                let t = v.as_tensor().detach();
                let t = if t.rank() == 2 {
                    t.t().and_then(|t| t.contiguous())
                } else {
                    Ok(t)
                };
                (n.clone(), t.expect("a transpose of a CPU tensor succeeds"))
            })
            .collect();
        out.insert(
            "model.embed_tokens.weight".into(),
            self.embed_tokens.clone(),
        );
        out
    }

    /// Final hidden states (after the last norm), (t, hidden), of `tokens` at `positions` under
    /// `mask` ((t, t), 0 where a query may attend to a key and -inf elsewhere).
    pub fn hidden(&self, tokens: &[u32], positions: &[u32], mask: &Tensor) -> Result<Tensor> {
        let t = tokens.len();
        if positions.len() != t || mask.dims() != [t, t] {
            return Err(Error::BadConfig(format!(
                "{t} tokens need {t} positions and a {t}x{t} mask"
            )));
        }
        if let Some(&p) = positions
            .iter()
            .find(|&&p| p as usize >= self.cfg.context_length)
        {
            return Err(Error::PromptTooLong {
                tokens: p as usize + 1,
                context: self.cfg.context_length,
            });
        }
        let dev = self.device();
        let ids = Tensor::new(tokens, dev)?;
        let pos = Tensor::new(positions, dev)?;
        let cos = self.cos.index_select(&pos, 0)?;
        let sin = self.sin.index_select(&pos, 0)?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        for layer in &self.layers {
            x = self.block(layer, &x, &cos, &sin, mask)?;
        }
        Ok(rms_norm(&x, self.norm.as_tensor(), self.cfg.rms_norm_eps)?)
    }

    /// Logits, (rows, vocab), of hidden states (rows, hidden).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(w) => Ok(hidden.matmul(w.as_tensor())?),
            // The frozen, tied head: candle would also compute the (vocab x hidden) gradient of
            // the embedding, never used, every step.
            None => Ok(hidden.apply_op1(FrozenHead(self.embed_tokens.clone()))?),
        }
    }

    fn block(
        &self,
        l: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (t, _) = x.dims2()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps;

        let h = rms_norm(x, l.input_layernorm.as_tensor(), eps)?;
        // (t, heads * hd) -> (heads, t, hd)
        let heads = |w: &Var, n: usize| -> candle_core::Result<Tensor> {
            linear(&h, w)?.reshape((t, n, hd))?.transpose(0, 1)
        };
        let q = rope(&heads(&l.q_proj, nh)?, cos, sin)?;
        let k = rope(&heads(&l.k_proj, nkv)?, cos, sin)?;
        let v = heads(&l.v_proj, nkv)?;
        // Grouped-query attention: each key/value head serves nh / nkv query heads.
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(mask)?;
        let attn = softmax_last(&scores)?.matmul(&v.contiguous()?)?;
        let attn = attn.transpose(0, 1)?.reshape((t, nh * hd))?;
        let x = (x + linear(&attn, &l.o_proj)?)?;

        let h = rms_norm(&x, l.post_attention_layernorm.as_tensor(), eps)?;
        let gate = linear(&h, &l.gate_proj)?;
        let up = linear(&h, &l.up_proj)?;
        let mlp = linear(&(gate.silu()? * up)?, &l.down_proj)?;
        x + mlp
    }
}

/// `x @ w` for `w` stored (in, out).
fn linear(x: &Tensor, w: &Var) -> candle_core::Result<Tensor> {
    x.matmul(w.as_tensor())
}

/// `h @ E^T` for a frozen E (vocab, hidden): the gradient flows to `h` only.
struct FrozenHead(Tensor);

impl candle_core::CustomOp1 for FrozenHead {
    fn name(&self) -> &'static str {
        "frozen-head"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, hidden) = layout.shape().dims2()?;
        let data = match layout.contiguous_offsets() {
            Some((a, b)) => &storage.as_slice::<f32>()?[a..b],
            None => candle_core::bail!("frozen-head: input must be contiguous"),
        };
        // Plain tensors without a graph: candle's matmul does the work.
        let h = Tensor::from_slice(data, (rows, hidden), self.0.device())?;
        let out = h.matmul(&self.0.t()?)?;
        let shape = out.shape().clone();
        let (s, l) = out.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*s else {
            candle_core::bail!("frozen-head runs on the CPU");
        };
        let values = cpu.as_slice::<f32>()?[l.start_offset()..][..shape.elem_count()].to_vec();
        Ok((candle_core::CpuStorage::F32(values), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.0)?))
    }
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)
}

/// Half-split RoPE (Hugging Face layout) on (heads, t, hd) with cos/sin (t, hd / 2).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let (x1, x2) = (
        x.narrow(D::Minus1, 0, hd / 2)?,
        x.narrow(D::Minus1, hd / 2, hd / 2)?,
    );
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}

fn repeat_kv(x: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (kv, t, hd) = x.dims3()?;
    x.unsqueeze(1)?
        .broadcast_as((kv, n, t, hd))?
        .reshape((kv * n, t, hd))
}

fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-probabilities along the last dimension; the max is a constant shift, so it is detached.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvCache, Logits};
    use crate::testing::TinySpec;

    /// The differentiable forward and the inference forward are the same function.
    #[test]
    fn matches_the_inference_forward() {
        let spec = TinySpec::default();
        let model = spec.build(&Device::Cpu).unwrap();
        let train =
            TrainLlama::new(spec.config(), spec.random_tensors().unwrap(), &Device::Cpu).unwrap();
        let tokens: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 250 + 3).collect();
        let mut cache = KvCache::new(2, 512);
        let want = model.forward(&tokens, &mut cache, Logits::All).unwrap();
        let t = tokens.len();
        let positions: Vec<u32> = (0..t as u32).collect();
        let mask = super::super::batch::causal_mask(t, &Device::Cpu).unwrap();
        let got = train
            .logits(&train.hidden(&tokens, &positions, &mask).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let max = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-3, "max |diff| {max}");
    }
}
