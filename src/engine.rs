//! The engine: a loaded model, its tokenizer and the last generation's KV cache, called with a
//! request, streaming events back.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::decode::block_size::BlockTuner;
use crate::decode::{self, CancelToken, DecodeEvent, DecodeOptions, Generation};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::model::{self, GgufFile, KvCache, Transformer, WeightPolicy};
use crate::tokenizer::{Message, Tokenizer};

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub device: DeviceChoice,
    pub weights: WeightPolicy,
}

/// What was loaded, for `models list`, the app's model picker and logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// "gguf" or "hf".
    pub format: String,
    pub weights: String,
    /// "cpu-kernels (avx2)" (our CPU forward, with its matmul's instruction set) or "candle".
    pub backend: String,
    pub parameters: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub device: String,
}

/// The text to continue: raw, or a conversation rendered with the model's chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Raw(String),
    Chat(Vec<Message>),
}

impl Prompt {
    /// One user message, with the chat template: how a prompt from a file or the app is asked.
    pub fn user(content: impl Into<String>) -> Self {
        Prompt::Chat(vec![Message::user(content)])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub options: DecodeOptions,
}

pub struct Engine {
    model: Transformer,
    tokenizer: Tokenizer,
    info: ModelInfo,
    /// What `--block auto` learned about this model on this machine, kept across generations.
    tuner: std::sync::Mutex<BlockTuner>,
    /// The last generation's KV cache (its prompt and answer), whose entries the next prompt
    /// reuses as far as it starts the same: a chat's next turn computes only the new messages.
    /// Taken while a generation runs; a concurrent one starts from an empty cache.
    cache: std::sync::Mutex<Option<KvCache>>,
}

impl Engine {
    /// Loads a `.gguf` file or a Hugging Face model folder.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let device = opts.device.resolve()?;
        if path.is_dir() {
            let model = model::load_hf(path, opts.weights, &device)?;
            let tokenizer = Tokenizer::from_dir(path)?;
            Ok(Self::new(model, tokenizer, path, "hf", &device))
        } else {
            let mut file = GgufFile::open(path)?;
            let tokenizer = Tokenizer::from_gguf(&file.content)?;
            let model = model::load_gguf(&mut file, opts.weights, &device)?;
            Ok(Self::new(model, tokenizer, path, "gguf", &device))
        }
    }

    /// Wraps a model built in memory (tests, training).
    pub fn from_parts(model: Transformer, tokenizer: Tokenizer, path: &Path) -> Self {
        let device = model.device();
        Self::new(model, tokenizer, path, "memory", &device)
    }

    fn new(
        model: Transformer,
        tokenizer: Tokenizer,
        path: &Path,
        format: &str,
        device: &Device,
    ) -> Self {
        let cfg = model.config().clone();
        let per_layer = 2 * cfg.hidden_size * cfg.num_heads * cfg.head_dim
            + 2 * cfg.hidden_size * cfg.kv_dim()
            + 3 * cfg.hidden_size * cfg.intermediate_size
            + 2 * cfg.hidden_size;
        let head = if cfg.tie_word_embeddings {
            0
        } else {
            cfg.vocab_size * cfg.hidden_size
        };
        let info = ModelInfo {
            path: path.to_path_buf(),
            format: format.into(),
            weights: model.weight_format(),
            backend: model.backend(),
            parameters: cfg.num_layers * per_layer
                + cfg.vocab_size * cfg.hidden_size
                + head
                + cfg.hidden_size,
            layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            context_length: cfg.context_length,
            vocab_size: cfg.vocab_size,
            device: crate::device::describe(device).into(),
        };
        Self {
            model,
            tokenizer,
            info,
            tuner: std::sync::Mutex::new(BlockTuner::new(crate::decode::AUTO_MAX_BLOCK)),
            cache: std::sync::Mutex::new(None),
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The token ids a request's prompt becomes.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let text = match prompt {
            Prompt::Raw(text) => {
                if text.is_empty() {
                    return Err(Error::EmptyPrompt);
                }
                text.clone()
            }
            Prompt::Chat(messages) => {
                if messages.is_empty() || messages.iter().all(|m| m.content.trim().is_empty()) {
                    return Err(Error::EmptyPrompt);
                }
                self.tokenizer.apply_chat_template(messages)?
            }
        };
        let ids = self.tokenizer.encode(&text)?;
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let context = self.model.config().context_length;
        if ids.len() >= context {
            return Err(Error::PromptTooLong {
                tokens: ids.len(),
                context,
            });
        }
        Ok(ids)
    }

    /// Decodes a continuation of the request's prompt, calling `on_event` as it goes.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        cancel: &CancelToken,
        on_event: impl FnMut(DecodeEvent),
    ) -> Result<Generation> {
        request
            .options
            .validate(self.model.config().context_length)?;
        let ids = self.prompt_ids(&request.prompt)?;
        // Work on a copy so a long generation does not hold the lock.
        let mut tuner = match self.tuner.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let held = match self.cache.lock() {
            Ok(mut c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let mut cache = held.unwrap_or_else(|| self.model.new_cache());
        let result = decode::generate_in(
            &self.model,
            &self.tokenizer,
            &mut cache,
            &ids,
            &request.options,
            cancel,
            Some(&mut tuner),
            on_event,
        );
        if let Ok(mut t) = self.tuner.lock() {
            *t = tuner;
        }
        if let Ok(mut c) = self.cache.lock() {
            *c = Some(cache);
        }
        result
    }

    /// Writes the model as a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json) that [`Engine::load`] reads back.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        model::save_hf(&self.model, dir)?;
        self.tokenizer.save(dir)
    }
}
