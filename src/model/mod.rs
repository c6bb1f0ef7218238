//! The llama-family transformer and how its weights get on and off disk.

pub mod config;
pub mod cpu;
pub mod kv_cache;
pub mod llama;
pub mod weights;

use std::path::Path;

use candle_core::Device;

pub use config::{Config, HfConfig};
pub use cpu::CpuLlama;
pub use kv_cache::KvCache;
pub use llama::{Llama, Logits};
pub use weights::{GgufFile, Linear, RawTensor, WeightPolicy};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// A loaded model: candle's tensors (any device, training, exact weights) or our CPU kernels
/// (fast inference on the CPU).
// One per loaded model, so the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Transformer {
    Candle(Llama),
    Cpu(CpuLlama),
}

impl Transformer {
    /// Builds the model from tensors in Hugging Face layout; `Fast` on the CPU takes our kernels.
    pub fn load(
        cfg: Config,
        get: impl FnMut(&str) -> Result<RawTensor>,
        policy: WeightPolicy,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu() && policy == WeightPolicy::Fast {
            Ok(Transformer::Cpu(CpuLlama::load(cfg, get)?))
        } else {
            Ok(Transformer::Candle(Llama::load(cfg, get, policy, device)?))
        }
    }

    pub fn config(&self) -> &Config {
        match self {
            Transformer::Candle(m) => m.config(),
            Transformer::Cpu(m) => m.config(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Transformer::Candle(m) => m.device().clone(),
            Transformer::Cpu(_) => Device::Cpu,
        }
    }

    /// "candle", or "cpu-kernels" with the instruction set its matmul runs on, e.g.
    /// "cpu-kernels (avx2)".
    pub fn backend(&self) -> String {
        match self {
            Transformer::Candle(_) => "candle".into(),
            Transformer::Cpu(_) => {
                format!("cpu-kernels ({})", crate::kernels::Isa::current().name())
            }
        }
    }

    /// For the CPU kernels' weights, how much is in huge pages: streaming them through 4 KiB
    /// pages made the matmuls 1.3x to 1.5x slower (BENCHMARKS.md).
    pub fn weight_pages(&self) -> Option<crate::kernels::HugePages> {
        match self {
            Transformer::Candle(_) => None,
            Transformer::Cpu(m) => m.weight_pages(),
        }
    }

    pub fn weight_format(&self) -> String {
        match self {
            Transformer::Candle(m) => m.weight_format(),
            Transformer::Cpu(m) => m.weight_format(),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        let cfg = self.config();
        KvCache::new(cfg.num_layers, cfg.context_length)
    }

    /// Runs `tokens` at positions `cache.len()..cache.len() + m`, appends their keys and values
    /// to the cache and returns logits, (1 or m) x vocab, row-major.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.forward_into(tokens, cache, logits, &mut out)?;
        Ok(out)
    }

    /// [`Self::forward`] into `out` (its contents replaced): a decode loop that keeps `out`
    /// between passes allocates nothing per pass on the CPU path.
    pub fn forward_into(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let cfg = self.config();
        let m = tokens.len();
        if m == 0 {
            return Err(Error::EmptyPrompt);
        }
        if cache.len() + m > cfg.context_length {
            return Err(Error::PromptTooLong {
                tokens: cache.len() + m,
                context: cfg.context_length,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                cfg.vocab_size
            )));
        }
        let start = cache.len();
        match self {
            Transformer::Candle(model) => {
                *out = model
                    .forward(tokens, cache, logits)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
            }
            Transformer::Cpu(model) => model.forward_into(tokens, cache, logits, out),
        }
        cache.record(start, tokens);
        Ok(())
    }

    /// Whether a token's logits and KV entries are the same bits however many tokens share its
    /// forward pass: true for our CPU forward (see `cpu`), not for candle's, whose matmuls
    /// round differently for different shapes. Where it holds, entries computed in one
    /// generation can stand in for a later prompt's without changing its answer.
    pub fn batch_invariant(&self) -> bool {
        matches!(self, Transformer::Cpu(_))
    }

    /// Every weight as a dense f32 tensor under its Hugging Face name.
    pub fn hf_tensors(&self) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
        match self {
            Transformer::Candle(m) => m.hf_tensors(),
            Transformer::Cpu(m) => m.hf_tensors(),
        }
    }
}

/// Greedy predictions of each row of `logits` (rows x vocab). Ties go to the lowest id, as in
/// [`crate::decode::sampling::argmax`], so every decoder breaks them the same way.
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks_exact(vocab)
        .map(crate::decode::sampling::argmax)
        .collect()
}

/// Loads the transformer of an opened GGUF file.
pub fn load_gguf(
    file: &mut GgufFile,
    policy: WeightPolicy,
    device: &Device,
) -> Result<Transformer> {
    let cfg = Config::from_gguf(&file.content)?;
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    Transformer::load(
        cfg,
        |hf_name| {
            let raw = file.tensor(&gguf_name(hf_name), device)?;
            // GGUF permutes q/k rows for interleaved RoPE; go back to HF's half-split order.
            if hf_name.ends_with("q_proj.weight") {
                weights::permute_rows(raw, &weights::rope_row_permutation(nh, hd, false))
            } else if hf_name.ends_with("k_proj.weight") {
                weights::permute_rows(raw, &weights::rope_row_permutation(nkv, hd, false))
            } else {
                Ok(raw)
            }
        },
        policy,
        device,
    )
}

/// Loads the transformer of a Hugging Face model folder (`config.json` + safetensors).
pub fn load_hf(dir: &Path, policy: WeightPolicy, device: &Device) -> Result<Transformer> {
    let hf = read_hf_config(dir)?;
    let cfg = Config::from_hf(&hf)?;
    let tensors = weights::load_safetensors(dir, device)?;
    load_float_tensors(cfg, tensors, policy, device)
}

/// Builds the model from float tensors under Hugging Face names.
pub fn load_float_tensors(
    cfg: Config,
    mut tensors: std::collections::HashMap<String, candle_core::Tensor>,
    policy: WeightPolicy,
    device: &Device,
) -> Result<Transformer> {
    Transformer::load(
        cfg,
        |name| {
            tensors
                .remove(name)
                .map(RawTensor::Float)
                .ok_or_else(|| Error::MissingTensor(name.to_string()))
        },
        policy,
        device,
    )
}

pub fn read_hf_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadConfig(format!("{}: {e}", path.display())))
}

/// Writes `config.json` and `model.safetensors` (f32) into `dir`, each atomically.
pub fn save_hf(model: &Transformer, dir: &Path) -> Result<()> {
    save_hf_tensors(model.config(), &model.hf_tensors()?, dir)
}

/// Writes `config.json` for `cfg` and `tensors` (under Hugging Face names) as
/// `model.safetensors` into `dir`, each atomically.
pub fn save_hf_tensors(
    cfg: &Config,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_vec_pretty(&cfg.to_hf()).expect("config serializes");
    write_atomic(&dir.join("config.json"), &json)?;
    let target = dir.join("model.safetensors");
    let tmp = dir.join(".model.safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    Ok(())
}

/// GGUF's name for a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let (idx, name) = rest.split_once('.').unwrap_or((rest, ""));
    let short = match name {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        other => other,
    };
    format!("blk.{idx}.{short}")
}
