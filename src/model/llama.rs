//! The llama-family transformer: embedding, `num_layers` pre-norm blocks of grouped-query
//! attention and a SwiGLU MLP, a final norm and the LM head. Weight names follow Hugging Face's
//! `LlamaForCausalLM`, so the struct tree is the weight tree.
//!
//! A forward takes `m` new tokens at the cache's current offset and can return logits for every
//! one of them: Jacobi decoding needs the prediction at each block position.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::config::Config;
use super::kv_cache::KvCache;
use super::weights::{Linear, RawTensor, WeightPolicy};
use crate::error::{Error, Result};

/// Which positions of a forward to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last input position (prefill, autoregressive steps).
    Last,
    /// Every input position (Jacobi blocks).
    All,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// A loaded model. Immutable during decoding; all per-sequence state lives in [`KvCache`].
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: Config,
    /// (vocab, hidden), f32: looked up, never multiplied.
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    /// (context, head_dim / 2)
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Llama {
    /// Builds the model from tensors named as in Hugging Face checkpoints.
    /// `get` returns each tensor in HF layout (q/k rows in half-split RoPE order).
    pub fn load(
        cfg: Config,
        mut get: impl FnMut(&str) -> Result<RawTensor>,
        policy: WeightPolicy,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let linear = |get: &mut dyn FnMut(&str) -> Result<RawTensor>,
                      name: &str,
                      out: usize,
                      inp: usize|
         -> Result<Linear> {
            let raw = get(name)?;
            check_shape(name, &raw.dims(), &[out, inp])?;
            raw.into_linear(policy, device)
        };
        let (h, kv, hd) = (cfg.hidden_size, cfg.kv_dim(), cfg.head_dim);
        let q_dim = cfg.num_heads * hd;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let self_attn = Attention {
                q_proj: linear(&mut get, &format!("{p}.self_attn.q_proj.weight"), q_dim, h)?,
                k_proj: linear(&mut get, &format!("{p}.self_attn.k_proj.weight"), kv, h)?,
                v_proj: linear(&mut get, &format!("{p}.self_attn.v_proj.weight"), kv, h)?,
                o_proj: linear(&mut get, &format!("{p}.self_attn.o_proj.weight"), h, q_dim)?,
            };
            let ff = cfg.intermediate_size;
            let mlp = Mlp {
                gate_proj: linear(&mut get, &format!("{p}.mlp.gate_proj.weight"), ff, h)?,
                up_proj: linear(&mut get, &format!("{p}.mlp.up_proj.weight"), ff, h)?,
                down_proj: linear(&mut get, &format!("{p}.mlp.down_proj.weight"), h, ff)?,
            };
            layers.push(Block {
                input_layernorm: Self::norm(
                    &mut get,
                    &format!("{p}.input_layernorm.weight"),
                    &cfg,
                    device,
                )?,
                self_attn,
                post_attention_layernorm: Self::norm(
                    &mut get,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &cfg,
                    device,
                )?,
                mlp,
            });
        }
        let norm = Self::norm(&mut get, "model.norm.weight", &cfg, device)?;
        let embed_raw = get("model.embed_tokens.weight")?;
        check_shape(
            "model.embed_tokens.weight",
            &embed_raw.dims(),
            &[cfg.vocab_size, h],
        )?;
        let embed_tokens = embed_raw.to_f32(device)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_raw.into_linear(policy, device)?
        } else {
            let raw = get("lm_head.weight")?;
            check_shape("lm_head.weight", &raw.dims(), &[cfg.vocab_size, h])?;
            raw.into_linear(policy, device)?
        };
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Self {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
        })
    }

    fn norm(
        get: &mut impl FnMut(&str) -> Result<RawTensor>,
        name: &str,
        cfg: &Config,
        device: &Device,
    ) -> Result<RmsNorm> {
        let raw = get(name)?;
        check_shape(name, &raw.dims(), &[cfg.hidden_size])?;
        Ok(RmsNorm {
            weight: raw.to_f32(device)?,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Short description of the weight formats, e.g. "Q8_0".
    pub fn weight_format(&self) -> String {
        self.layers
            .first()
            .map(|b| b.self_attn.q_proj.describe())
            .unwrap_or_default()
    }

    /// Runs `tokens` at positions `cache.len()..cache.len() + m`, appends their keys and values to
    /// the cache and returns logits, (1 or m, vocab) f32. Callers go through
    /// [`super::Transformer::forward`], which checks the input.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let m = tokens.len();
        let offset = cache.len();
        let ids = Tensor::from_slice(tokens, m, &self.device)?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?; // (m, hidden)
                                                              // Only the GPU path uses a mask; the CPU attention bounds each query's keys itself.
        let mask = if self.device.is_cpu() {
            None
        } else {
            causal_mask(m, offset, &self.device)?
        };
        let cos = self.cos.narrow(0, offset, m)?;
        let sin = self.sin.narrow(0, offset, m)?;
        for (i, block) in self.layers.iter().enumerate() {
            let residual = &x;
            let h = block.input_layernorm.forward(&x)?;
            let h = self.attention(&block.self_attn, &h, i, cache, &cos, &sin, mask.as_ref())?;
            let x1 = (residual + h)?;
            let h = block.post_attention_layernorm.forward(&x1)?;
            let gate = candle_nn::ops::silu(&block.mlp.gate_proj.forward(&h)?)?;
            let up = block.mlp.up_proj.forward(&h)?;
            let h = block.mlp.down_proj.forward(&(gate * up)?)?;
            x = (x1 + h)?;
        }
        cache.advance(m);
        let x = match logits {
            Logits::Last => x.narrow(0, m - 1, 1)?,
            Logits::All => x,
        };
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        layer: usize,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (m, _) = x.dims2()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            // (m, n * hd) -> (1, n, m, hd)
            t.reshape((m, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
        };
        let q = heads(attn.q_proj.forward(x)?, nh)?;
        let k = heads(attn.k_proj.forward(x)?, nkv)?;
        let v = heads(attn.v_proj.forward(x)?, nkv)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = cache.append(layer, &k, &v)?; // (1, nkv, L, hd)
        let out = if self.device.is_cpu() {
            let (kbuf, vbuf) = cache.buffers(layer).expect("appended above");
            let q = q.flatten_all()?.to_vec1::<f32>()?; // (nh, m, hd)
            let capacity = kbuf.dims()[2];
            let offset = k.dim(2)? - m;
            let mut out = vec![0f32; m * nh * hd];
            with_cpu_slice(kbuf, |ks| {
                with_cpu_slice(vbuf, |vs| {
                    crate::kernels::causal_attention(
                        &q, ks, vs, nh, nkv, m, hd, capacity, offset, &mut out,
                    )
                })
            })??;
            Tensor::from_vec(out, (m, nh * hd), &self.device)?
        } else {
            let l = k.dim(2)?;
            let rep = nh / nkv;
            // Query heads h*rep..h*rep+rep share kv head h: fold them into the row dimension.
            let q = q.reshape((1, nkv, rep * m, hd))?;
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?; // (1, nkv, rep*m, L)
            let scores = match mask {
                Some(mask) => scores
                    .reshape((1, nkv, rep, m, l))?
                    .broadcast_add(mask)?
                    .reshape((1, nkv, rep * m, l))?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = probs.matmul(&v.contiguous()?)?; // (1, nkv, rep*m, hd)
            out.reshape((nh, m, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((m, nh * hd))?
        };
        Ok(attn.o_proj.forward(&out)?)
    }

    /// Every weight as a dense f32 tensor under its Hugging Face name (for saving a folder).
    pub fn hf_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        );
        out.insert("model.norm.weight".to_string(), self.norm.weight.clone());
        if !self.cfg.tie_word_embeddings {
            out.insert("lm_head.weight".to_string(), self.lm_head.to_f32()?);
        }
        for (i, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let lin = [
                ("self_attn.q_proj", &b.self_attn.q_proj),
                ("self_attn.k_proj", &b.self_attn.k_proj),
                ("self_attn.v_proj", &b.self_attn.v_proj),
                ("self_attn.o_proj", &b.self_attn.o_proj),
                ("mlp.gate_proj", &b.mlp.gate_proj),
                ("mlp.up_proj", &b.mlp.up_proj),
                ("mlp.down_proj", &b.mlp.down_proj),
            ];
            for (name, l) in lin {
                out.insert(format!("{p}.{name}.weight"), l.to_f32()?);
            }
            out.insert(
                format!("{p}.input_layernorm.weight"),
                b.input_layernorm.weight.clone(),
            );
            out.insert(
                format!("{p}.post_attention_layernorm.weight"),
                b.post_attention_layernorm.weight.clone(),
            );
        }
        Ok(out)
    }
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(Error::BadConfig(format!(
            "tensor `{name}` has shape {got:?}, the config implies {want:?}"
        )));
    }
    Ok(())
}

/// Runs `f` on the f32 data of a CPU tensor, from its first element on.
fn with_cpu_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(&cpu.as_slice::<f32>()?[layout.start_offset()..])),
        _ => Err(Error::Candle(candle_core::Error::Msg(
            "expected a CPU tensor".into(),
        ))),
    }
}

/// cos/sin of `position * theta^(-2i/head_dim)`, (context, head_dim / 2).
fn rope_tables(cfg: &Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = rope_tables_vec(cfg);
    let shape = (cfg.context_length, cfg.head_dim / 2);
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

pub(crate) fn rope_tables_vec(cfg: &Config) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / cfg.head_dim as f32))
        .collect();
    let n = cfg.context_length;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for pos in 0..n {
        for &f in &inv_freq {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// (m, offset + m) additive mask: query i (at position offset + i) sees keys 0..=offset + i.
fn causal_mask(m: usize, offset: usize, device: &Device) -> Result<Option<Tensor>> {
    if m == 1 {
        return Ok(None);
    }
    let l = offset + m;
    let mask: Vec<f32> = (0..m)
        .flat_map(|i| {
            (0..l).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (m, l), device)?))
}
