//! Hyperparameters of a llama-family model, read from GGUF metadata or a Hugging Face config.json.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;

/// The configuration the model code uses, whatever file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    /// Longest sequence (prompt + generated tokens) the model was trained for.
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadConfig(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return bad("vocab size, hidden size and layer count must be positive".into());
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim * self.num_heads != self.hidden_size {
            return bad(format!(
                "head dim {} x {} heads does not match hidden size {}",
                self.head_dim, self.num_heads, self.hidden_size
            ));
        }
        if self.context_length == 0 {
            return bad("context length must be positive".into());
        }
        Ok(())
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Reads `llama.*` metadata of a GGUF file.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = gguf_str(ct, "general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture(arch.to_string()));
        }
        let int = |key: &str| -> Result<usize> {
            let v = ct
                .metadata
                .get(key)
                .ok_or_else(|| Error::MissingMetadata(key.to_string()))?;
            gguf_int(v).ok_or_else(|| Error::BadConfig(format!("`{key}` is not an integer")))
        };
        let float = |key: &str| -> Option<f64> {
            ct.metadata.get(key).and_then(|v| match v {
                // Via the shortest decimal, so 1e-5 stored as f32 reads back as 1e-5.
                gguf_file::Value::F32(f) => f.to_string().parse().ok(),
                gguf_file::Value::F64(f) => Some(*f),
                _ => None,
            })
        };
        if ct.metadata.contains_key("llama.rope.scaling.type") {
            let kind = gguf_str(ct, "llama.rope.scaling.type").unwrap_or("?");
            if kind != "none" {
                return Err(Error::BadConfig(format!(
                    "RoPE scaling `{kind}` is not supported"
                )));
            }
        }
        let hidden_size = int("llama.embedding_length")?;
        let num_heads = int("llama.attention.head_count")?;
        let num_kv_heads = int("llama.attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = int("llama.attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match int("llama.vocab_size") {
            Ok(v) => v,
            Err(_) => ct
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| Error::MissingMetadata("llama.vocab_size".into()))?,
        };
        let tie = !ct.tensor_infos.contains_key("output.weight");
        let cfg = Config {
            vocab_size,
            hidden_size,
            intermediate_size: int("llama.feed_forward_length")?,
            num_layers: int("llama.block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
            context_length: int("llama.context_length")?,
            tie_word_embeddings: tie,
            bos_token_id: int("tokenizer.ggml.bos_token_id").ok().map(|v| v as u32),
            eos_token_id: int("tokenizer.ggml.eos_token_id").ok().map(|v| v as u32),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_hf(hf: &HfConfig) -> Result<Self> {
        if let Some(mt) = &hf.model_type {
            if mt != "llama" && mt != "mistral" {
                return Err(Error::UnsupportedArchitecture(mt.clone()));
            }
        }
        if let Some(scaling) = &hf.rope_scaling {
            if !scaling.is_null() {
                return Err(Error::BadConfig(format!(
                    "RoPE scaling {scaling} is not supported"
                )));
            }
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        let cfg = Config {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            context_length: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            bos_token_id: hf.bos_token_id,
            eos_token_id: hf.eos_token_id.as_ref().and_then(|e| e.first()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_hf(&self) -> HfConfig {
        HfConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: Some("llama".into()),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: Some(self.num_kv_heads),
            head_dim: Some(self.head_dim),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            vocab_size: self.vocab_size,
            max_position_embeddings: self.context_length,
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id.map(EosTokenId::One),
            rope_scaling: None,
            hidden_act: Some("silu".into()),
            torch_dtype: Some("float32".into()),
        }
    }
}

/// `config.json` of a Hugging Face llama model, the fields we read and write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    pub vocab_size: usize,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<EosTokenId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

/// HF writes `eos_token_id` as one id or a list of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosTokenId {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokenId {
    fn first(&self) -> Option<u32> {
        match self {
            EosTokenId::One(id) => Some(*id),
            EosTokenId::Many(ids) => ids.first().copied(),
        }
    }
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

pub(crate) fn gguf_str<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a str> {
    match ct.metadata.get(key) {
        Some(gguf_file::Value::String(s)) => Ok(s),
        Some(_) => Err(Error::BadConfig(format!("`{key}` is not a string"))),
        None => Err(Error::MissingMetadata(key.to_string())),
    }
}

pub(crate) fn gguf_int(v: &gguf_file::Value) -> Option<usize> {
    use gguf_file::Value::*;
    match v {
        U8(v) => Some(*v as usize),
        I8(v) => usize::try_from(*v).ok(),
        U16(v) => Some(*v as usize),
        I16(v) => usize::try_from(*v).ok(),
        U32(v) => Some(*v as usize),
        I32(v) => usize::try_from(*v).ok(),
        U64(v) => usize::try_from(*v).ok(),
        I64(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}
