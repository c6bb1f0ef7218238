//! Decoders: each turns a prompt into a stream of [`DecodeEvent`]s and a [`Generation`].
//!
//! `autoregressive` predicts one token per forward pass (greedy or sampled); `jacobi` predicts a
//! block of n per pass and keeps what the pass confirms. Both share prefill, stop conditions and
//! text streaming (`output`).

mod autoregressive;
pub mod block_size;
mod events;
pub mod jacobi;
pub mod lookup;
mod output;
pub mod sampling;

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use events::{DecodeEvent, Generation, Iteration, StopReason};
pub use jacobi::Guesses;
pub use output::CancelToken;
pub use sampling::{Sampler, Sampling};

use crate::error::{Error, Result};
use crate::model::{KvCache, Logits, Transformer};
use crate::tokenizer::Tokenizer;
use output::Output;

/// Prompts longer than this are prefilled in chunks, bounding the attention scores' memory.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "block")]
pub enum Mode {
    /// One token per forward pass.
    Autoregressive,
    /// Jacobi iteration over a block of this many tokens.
    Jacobi(usize),
    /// Jacobi iteration with the block size chosen while decoding, up to this many tokens
    /// ([`block_size::BlockTuner`]): never much slower than autoregressive decoding.
    JacobiAuto(usize),
}

/// A Jacobi block size as users give it: `auto` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSpec {
    Auto,
    Fixed(usize),
}

/// Largest block `auto` considers.
pub const AUTO_MAX_BLOCK: usize = 32;

impl BlockSpec {
    pub fn mode(self) -> Mode {
        match self {
            BlockSpec::Auto => Mode::JacobiAuto(AUTO_MAX_BLOCK),
            BlockSpec::Fixed(n) => Mode::Jacobi(n),
        }
    }
}

impl std::str::FromStr for BlockSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BlockSpec::Auto);
        }
        s.parse()
            .map(BlockSpec::Fixed)
            .map_err(|_| format!("block size must be `auto` or a number, got `{s}`"))
    }
}

impl std::fmt::Display for BlockSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockSpec::Auto => f.write_str("auto"),
            BlockSpec::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Serialized as `"auto"` or the number.
impl Serialize for BlockSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            BlockSpec::Auto => s.serialize_str("auto"),
            BlockSpec::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for BlockSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(|n| BlockSpec::Fixed(n as usize))
                .ok_or_else(|| serde::de::Error::custom("block size must be a positive integer")),
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!("bad block size {other}"))),
        }
    }
}

/// How to decode, independent of the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeOptions {
    pub mode: Mode,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Decoding stops when the text contains one of these (it is cut before it).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Seeds the random initial guesses of Jacobi blocks.
    #[serde(default)]
    pub seed: u64,
    /// Where Jacobi blocks take their guesses from.
    #[serde(default)]
    pub guesses: Guesses,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Autoregressive,
            max_tokens: 256,
            sampling: Sampling::greedy(),
            stop: Vec::new(),
            seed: 0,
            guesses: Guesses::default(),
        }
    }
}

impl DecodeOptions {
    /// Refuses settings that make no sense for a model with this context.
    pub fn validate(&self, context: usize) -> Result<()> {
        self.sampling.validate()?;
        if self.max_tokens == 0 {
            return Err(Error::NoTokensAsked);
        }
        if let Mode::Jacobi(n) | Mode::JacobiAuto(n) = self.mode {
            if n == 0 || n > context {
                return Err(Error::InvalidBlockSize {
                    block: n,
                    max: context,
                });
            }
            if !self.sampling.is_greedy() {
                return Err(Error::SamplingWithJacobi(self.sampling.temperature));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    pub passes: usize,
    pub decode_ms: f64,
}

/// Runs the prompt ids through `model` and decodes a continuation.
pub fn generate(
    model: &Transformer,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &DecodeOptions,
    cancel: &CancelToken,
    on_event: impl FnMut(DecodeEvent),
) -> Result<Generation> {
    generate_tuned(model, tokenizer, prompt, opts, cancel, None, on_event)
}

/// [`generate`], with `--block auto` continuing from what `tuner` learned in earlier
/// generations on this model and machine (so it need not probe again from scratch).
pub fn generate_tuned(
    model: &Transformer,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &DecodeOptions,
    cancel: &CancelToken,
    tuner: Option<&mut block_size::BlockTuner>,
    on_event: impl FnMut(DecodeEvent),
) -> Result<Generation> {
    let mut cache = model.new_cache();
    generate_in(
        model, tokenizer, &mut cache, prompt, opts, cancel, tuner, on_event,
    )
}

/// [`generate_tuned`] on a cache that may hold an earlier generation's prompt and answer (a
/// chat's history): the entries of the longest start it shares with `prompt` are kept instead
/// of computed again, where the model is [`Transformer::batch_invariant`] (so the answer is
/// bit-identical to one from an empty cache); the rest is dropped. The cache must be this
/// model's ([`Transformer::new_cache`]); it is left holding the prompt and the answer's tokens,
/// for the next call.
#[allow(clippy::too_many_arguments)]
pub fn generate_in(
    model: &Transformer,
    tokenizer: &Tokenizer,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &DecodeOptions,
    cancel: &CancelToken,
    tuner: Option<&mut block_size::BlockTuner>,
    mut on_event: impl FnMut(DecodeEvent),
) -> Result<Generation> {
    let context = model.config().context_length;
    opts.validate(context)?;
    if prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    if prompt.len() >= context {
        return Err(Error::PromptTooLong {
            tokens: prompt.len(),
            context,
        });
    }
    // At least the prompt's last token goes through the model: its logits give the first
    // token.
    let reused = match cache.tokens() {
        Some(held) if model.batch_invariant() => shared_start(held, prompt).min(prompt.len() - 1),
        _ => 0,
    };
    cache.truncate(reused);
    let t = Instant::now();
    let todo = prompt.len() - reused;
    let logits = prefill_until(model, cache, &prompt[reused..], cancel, |done| {
        if todo > PREFILL_CHUNK {
            on_event(DecodeEvent::PrefillProgress { done, total: todo });
        }
    })?;
    let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut out = Output::new(tokenizer, opts.max_tokens, &opts.stop);
    let (progress, block) = match logits {
        Some(logits) => {
            on_event(DecodeEvent::Prefill {
                prompt_tokens: prompt.len(),
                reused_tokens: reused,
                ms: prefill_ms,
            });
            let mut sampler = Sampler::new(opts.sampling);
            let first = sampler.pick(&logits);
            match opts.mode {
                Mode::Autoregressive => (
                    autoregressive::decode(
                        model,
                        cache,
                        first,
                        &mut sampler,
                        &mut out,
                        cancel,
                        &mut on_event,
                    )?,
                    1,
                ),
                Mode::Jacobi(_) | Mode::JacobiAuto(_) => {
                    let mut rng = StdRng::seed_from_u64(opts.seed);
                    let mut fresh;
                    let mut sizer = match opts.mode {
                        Mode::JacobiAuto(max) => {
                            let tuner = match tuner {
                                Some(t) if t.max() == max => t,
                                _ => {
                                    fresh = block_size::BlockTuner::new(max);
                                    &mut fresh
                                }
                            };
                            tuner.begin();
                            jacobi::BlockSizer::Auto(tuner)
                        }
                        Mode::Jacobi(n) => jacobi::BlockSizer::Fixed(n),
                        Mode::Autoregressive => unreachable!("handled by the arm above"),
                    };
                    let progress = jacobi::decode(
                        model,
                        cache,
                        prompt,
                        first,
                        &mut sizer,
                        opts.guesses,
                        &mut rng,
                        &mut out,
                        cancel,
                        &mut on_event,
                    )?;
                    (progress, sizer.reported())
                }
            }
        }
        // Stopped while the prompt went through: no answer.
        None => {
            out.stop = Some(StopReason::Cancelled);
            let block = match opts.mode {
                Mode::Jacobi(n) => n,
                _ => 1,
            };
            (Progress::default(), block)
        }
    };
    out.finish(&mut on_event)?;
    let generated = out.ids.len();
    let (tokens_per_iteration, tokens_per_second) = events::rates(
        generated.saturating_sub(1),
        progress.passes,
        progress.decode_ms,
    );
    Ok(Generation {
        text: out.text(),
        token_ids: out.ids.clone(),
        stop_reason: out.stop.unwrap_or(StopReason::MaxTokens),
        prompt_tokens: prompt.len(),
        reused_prompt_tokens: reused,
        generated_tokens: generated,
        forward_passes: progress.passes,
        tokens_per_iteration,
        tokens_per_second,
        prefill_ms,
        decode_ms: progress.decode_ms,
        mode: match opts.mode {
            Mode::Autoregressive => "ar".into(),
            Mode::Jacobi(_) => "jacobi".into(),
            Mode::JacobiAuto(_) => "jacobi-auto".into(),
        },
        block,
    })
}

/// How many leading tokens `a` and `b` share.
pub(crate) fn shared_start(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Feeds `prompt` into the cache after what it holds; returns the logits after its last token.
pub fn prefill(model: &Transformer, cache: &mut KvCache, prompt: &[u32]) -> Result<Vec<f32>> {
    prefill_until(model, cache, prompt, &CancelToken::new(), |_| {})?.ok_or(Error::EmptyPrompt)
}

/// [`prefill`] a chunk at a time, calling `progress` with the tokens done after each chunk;
/// `None` if `cancel` is set when a chunk is due (the cache keeps the chunks done) or the prompt
/// is empty. A long prompt takes seconds (attention grows with it), so a stop takes
/// effect between chunks instead of after all of them.
pub fn prefill_until(
    model: &Transformer,
    cache: &mut KvCache,
    prompt: &[u32],
    cancel: &CancelToken,
    mut progress: impl FnMut(usize),
) -> Result<Option<Vec<f32>>> {
    let (mut logits, mut done) = (None, 0);
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        logits = Some(model.forward(chunk, cache, Logits::Last)?);
        done += chunk.len();
        progress(done);
    }
    Ok(logits)
}
