//! The engine: a loaded model, its tokenizer and recent generations' KV caches, called with a
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
    /// The answer to a conversation so far, as its token ids: decoding goes on where it stopped
    /// (at max tokens, or a Stop), exactly as one longer greedy answer would have.
    Continue {
        chat: Vec<Message>,
        answer: Vec<u32>,
    },
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
    /// Recent generations' KV caches (prompt and answer), the latest first. A new prompt takes
    /// the one it shares the longest start with and reuses its entries that far: a chat's next
    /// turn, or the next turn of a conversation the user went back to, computes only the new
    /// messages. A cache is out of the list while its generation runs (a concurrent one takes
    /// another, or an empty one).
    caches: std::sync::Mutex<Vec<KvCache>>,
}

/// Caches kept at most: a few conversations to switch between.
const KEPT_CACHES: usize = 4;

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
            caches: std::sync::Mutex::new(Vec::new()),
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

    /// The part of a conversation the model can see with room left for an answer of
    /// `max_tokens` (at most half the context): a leading system message and the latest others.
    /// The oldest go a quarter of the context at a time: the cut is the first of fixed points
    /// (the user messages where the messages before them first reach a multiple of a quarter
    /// of the context in tokens) that leaves a prompt that fits. Messages are only ever added,
    /// so the points stay where they are, and the kept start stays put while the conversation
    /// grows by a quarter of the context: those turns keep reusing the cache. (Dropping just
    /// enough each turn would move the start every turn, and every turn would prefill almost
    /// the whole context again: 21 s at 7700 tokens here.) Returns the kept messages and how
    /// many were dropped; a latest message too long for the budget on its own is an error.
    pub fn fit_chat(
        &self,
        messages: &[Message],
        max_tokens: usize,
    ) -> Result<(Vec<Message>, usize)> {
        let context = self.model.config().context_length;
        let budget = context - max_tokens.min(context / 2);
        let first = usize::from(messages.first().is_some_and(|m| m.role == "system"));
        let step = (context / 4).max(1);
        let mut cuts = vec![first];
        let (mut seen, mut mark) = (0, step);
        for (i, m) in messages.iter().enumerate().skip(first) {
            if seen >= mark && m.role == "user" {
                cuts.push(i);
                mark = (seen / step + 1) * step;
            }
            // Content only, without the template's markers: a fixed count is all the points
            // need.
            seen += self.tokenizer.encode(&m.content)?.len();
        }
        // The latest message alone, if nothing longer fits.
        cuts.push(messages.len().saturating_sub(1).max(first));
        let mut tokens = 0;
        for start in cuts {
            let kept: Vec<Message> = messages[..first]
                .iter()
                .chain(&messages[start..])
                .cloned()
                .collect();
            tokens = match self.prompt_ids(&Prompt::Chat(kept.clone())) {
                Ok(ids) => ids.len(),
                Err(Error::PromptTooLong { tokens, .. }) => tokens,
                Err(e) => return Err(e),
            };
            if tokens <= budget {
                return Ok((kept, start - first));
            }
        }
        Err(Error::MessageTooLong {
            tokens,
            room: context - budget,
            context,
        })
    }

    /// The token ids a request's prompt becomes.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let chat = |messages: &[Message]| {
            if messages.is_empty() || messages.iter().all(|m| m.content.trim().is_empty()) {
                return Err(Error::EmptyPrompt);
            }
            self.tokenizer
                .encode(&self.tokenizer.apply_chat_template(messages)?)
        };
        let ids = match prompt {
            Prompt::Raw(text) => {
                if text.is_empty() {
                    return Err(Error::EmptyPrompt);
                }
                self.tokenizer.encode(text)?
            }
            Prompt::Chat(messages) => chat(messages)?,
            Prompt::Continue {
                chat: messages,
                answer,
            } => {
                let vocab = self.model.config().vocab_size;
                if let Some(bad) = answer.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::InvalidToken { id: *bad, vocab });
                }
                let mut ids = chat(messages)?;
                ids.extend_from_slice(answer);
                ids
            }
        };
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
        let mut cache = self.take_cache(&ids);
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
        self.keep_cache(cache);
        result
    }

    /// A cache to decode `prompt` in: the kept one it shares the longest start with (the latest
    /// of equals) if the prompt continues all of it (the conversation's next turn), else a copy
    /// of the shared start (another conversation, a regenerated or edited answer), which leaves
    /// the kept cache to its own conversation.
    fn take_cache(&self, prompt: &[u32]) -> KvCache {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let shared = |c: &KvCache| decode::shared_start(c.tokens().unwrap_or(&[]), prompt);
        // Oldest first, so that `max_by_key` (the last of equals) picks the latest.
        let best = caches
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| (shared(c), i))
            .max_by_key(|&(n, _)| n);
        match best {
            Some((n, i)) if n == caches[i].len() => caches.remove(i),
            Some((n, i)) => caches[i].copy_prefix(n),
            None => self.model.new_cache(),
        }
    }

    /// Puts `cache` first in the list, dropping the oldest beyond [`KEPT_CACHES`] or beyond the
    /// model's context in positions held together (23 KB a position for SmolLM2, so about 190
    /// MB, plus the caches' room to grow), but never the latest. Only the latest keeps the
    /// forward's working buffers. Only where entries can be reused
    /// ([`Transformer::batch_invariant`]).
    fn keep_cache(&self, cache: KvCache) {
        if !self.model.batch_invariant() {
            return;
        }
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = caches.first_mut() {
            previous.release_buffers();
        }
        caches.insert(0, cache);
        let budget = self.model.config().context_length;
        let mut held = 0;
        let keep = caches
            .iter()
            .take(KEPT_CACHES)
            .take_while(|c| {
                held += c.len();
                held <= budget
            })
            .count()
            .max(1);
        caches.truncate(keep);
    }

    /// Writes the model as a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json) that [`Engine::load`] reads back.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        model::save_hf(&self.model, dir)?;
        self.tokenizer.save(dir)
    }
}
