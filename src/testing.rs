//! Tiny llama models and tokenizers built in memory, for tests and benchmarks that must not
//! depend on a downloaded model. Weights are random (seeded) unless a test trains them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::Result;
use crate::model::weights::{permute_rows, rope_row_permutation};
use crate::model::{gguf_name, Config, RawTensor, Transformer, WeightPolicy};
use crate::tokenizer::Tokenizer;

/// ChatML, as SmolLM2 uses (without its default system prompt).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Special tokens of the tiny tokenizer: ids 0, 1, 2.
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The tiny tokenizer's vocabulary in id order: the specials, the 256 byte-level symbols, and
/// a few merged tokens.
pub fn tiny_vocab() -> (Vec<String>, Vec<(String, String)>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let merges: Vec<(String, String)> = [("h", "e"), ("Ġ", "t"), ("Ġt", "he")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
    }
    (tokens, merges)
}

/// A byte-level BPE tokenizer over [`tiny_vocab`] with a ChatML template.
pub fn tiny_tokenizer() -> Tokenizer {
    let (tokens, merges) = tiny_vocab();
    let bpe = crate::tokenizer::bpe(&tokens, merges).expect("tiny BPE builds");
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    inner
        .add_special_tokens(SPECIALS.iter().map(|s| AddedToken::from(*s, true)))
        .expect("specials register");
    Tokenizer::from_parts(
        inner,
        Some(CHATML.to_string()),
        Some("<|im_start|>".into()),
        Some("<|im_end|>".into()),
    )
}

/// Shape of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub context: usize,
    pub tie_embeddings: bool,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            context: 512,
            tie_embeddings: true,
            seed: 0,
        }
    }
}

impl TinySpec {
    pub fn config(&self) -> Config {
        let vocab = tiny_vocab().0.len();
        Config {
            vocab_size: vocab,
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            context_length: self.context,
            tie_word_embeddings: self.tie_embeddings,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// Random f32 weights under Hugging Face names. Scales keep activations O(1) and make the
    /// logits spread out, so greedy choices are rarely near-ties.
    pub fn random_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let cfg = self.config();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut normal = |shape: &[usize], std: f32| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let dist = Normal::new(0.0f32, std).expect("valid std");
            let data: Vec<f32> = (0..n).map(|_| dist.sample(&mut rng)).collect();
            Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
        };
        let (h, ff, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.kv_dim());
        let lin = |out: usize, inp: usize| (vec![out, inp], 1.0 / (inp as f32).sqrt());
        let mut t = HashMap::new();
        t.insert(
            "model.embed_tokens.weight".into(),
            normal(&[cfg.vocab_size, h], 1.0)?,
        );
        if !cfg.tie_word_embeddings {
            let (s, std) = lin(cfg.vocab_size, h);
            t.insert("lm_head.weight".into(), normal(&s, std * 4.0)?);
        }
        t.insert("model.norm.weight".into(), (normal(&[h], 0.1)? + 1.0)?);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            for (name, (out, inp)) in [
                ("self_attn.q_proj", (cfg.num_heads * cfg.head_dim, h)),
                ("self_attn.k_proj", (kv, h)),
                ("self_attn.v_proj", (kv, h)),
                ("self_attn.o_proj", (h, cfg.num_heads * cfg.head_dim)),
                ("mlp.gate_proj", (ff, h)),
                ("mlp.up_proj", (ff, h)),
                ("mlp.down_proj", (h, ff)),
            ] {
                let (s, std) = lin(out, inp);
                t.insert(format!("{p}.{name}.weight"), normal(&s, std)?);
            }
            t.insert(
                format!("{p}.input_layernorm.weight"),
                (normal(&[h], 0.1)? + 1.0)?,
            );
            t.insert(
                format!("{p}.post_attention_layernorm.weight"),
                (normal(&[h], 0.1)? + 1.0)?,
            );
        }
        Ok(t)
    }

    /// The random model with exact f32 weights on candle.
    pub fn build(&self, device: &Device) -> Result<Transformer> {
        Self::from_tensors(self.config(), self.random_tensors()?, device)
    }

    /// The random model on the fast CPU kernels (weights requantized to Q8).
    pub fn build_fast(&self) -> Result<Transformer> {
        crate::model::load_float_tensors(
            self.config(),
            self.random_tensors()?,
            WeightPolicy::Fast,
            &Device::Cpu,
        )
    }

    pub fn from_tensors(
        cfg: Config,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Transformer> {
        crate::model::load_float_tensors(cfg, tensors, WeightPolicy::Exact, device)
    }
}

/// Writes the default tiny model (random, seeded) as a Q8_0 GGUF file: the model the CLI, job
/// and app tests load from disk.
pub fn write_tiny_gguf(path: &Path) -> Result<()> {
    let spec = TinySpec::default();
    write_gguf(
        path,
        &spec.config(),
        &spec.random_tensors()?,
        GgmlDType::Q8_0,
        |_| {},
    )
}

/// Writes a llama GGUF file like llama.cpp's converter would: q/k rows permuted for interleaved
/// RoPE, matrices stored as `dtype` (norms stay F32), tokenizer metadata from [`tiny_vocab`].
/// `edit` may change the metadata before writing (tests of bad files).
pub fn write_gguf(
    path: &Path,
    cfg: &Config,
    tensors: &HashMap<String, Tensor>,
    dtype: GgmlDType,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>),
) -> Result<()> {
    use gguf_file::Value as V;
    let (tokens, merges) = tiny_vocab();
    let types: Vec<V> = (0..tokens.len())
        .map(|i| V::I32(if i < SPECIALS.len() { 3 } else { 1 }))
        .collect();
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String("llama".into())),
        ("general.name".into(), V::String("tiny".into())),
        ("llama.block_count".into(), V::U32(cfg.num_layers as u32)),
        (
            "llama.context_length".into(),
            V::U32(cfg.context_length as u32),
        ),
        (
            "llama.embedding_length".into(),
            V::U32(cfg.hidden_size as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            V::U32(cfg.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count".into(),
            V::U32(cfg.num_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            V::U32(cfg.num_kv_heads as u32),
        ),
        ("llama.rope.freq_base".into(), V::F32(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(cfg.rms_norm_eps as f32),
        ),
        ("llama.vocab_size".into(), V::U32(cfg.vocab_size as u32)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.into_iter().map(V::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            V::Array(
                merges
                    .into_iter()
                    .map(|(a, b)| V::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
        ("tokenizer.chat_template".into(), V::String(CHATML.into())),
    ];
    edit(&mut meta);
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let mut t = tensors[name].clone();
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            let heads = if name.ends_with("q_proj.weight") {
                cfg.num_heads
            } else {
                cfg.num_kv_heads
            };
            let perm = rope_row_permutation(heads, cfg.head_dim, true);
            t = match permute_rows(RawTensor::Float(t), &perm)? {
                RawTensor::Float(t) => t,
                RawTensor::Quantized(_) => unreachable!("float in, float out"),
            };
        }
        let q = if t.rank() == 1 {
            QTensor::quantize(&t, GgmlDType::F32)?
        } else {
            QTensor::quantize(&t, dtype)?
        };
        qtensors.push((gguf_name(name), q));
    }
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).map_err(|e| crate::Error::io(path, e))?;
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    Ok(())
}
