//! What a decoder tells the world while it runs, and what it returns at the end.

use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;

/// One step of decoding, streamed to the CLI or the app as it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DecodeEvent {
    /// Part of a long prompt went through the model: `done` of the `total` tokens it computes
    /// (those the cache did not hold). Sent after each chunk of a prompt longer than one.
    PrefillProgress { done: usize, total: usize },
    /// The prompt went through the model, all but its first `reused_tokens` (whose cache
    /// entries an earlier generation had left: a chat's history).
    Prefill {
        prompt_tokens: usize,
        #[serde(default)]
        reused_tokens: usize,
        ms: f64,
    },
    /// One Jacobi iteration (one forward pass over the block).
    Iteration(Iteration),
    /// Tokens now known to be part of the answer, and the text they add.
    Tokens { ids: Vec<u32>, text: String },
}

/// One Jacobi iteration: the block before and after the pass, and what it fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    /// 0-based index of the pass after prefill.
    pub index: usize,
    /// Index, among generated tokens, of the block's first position.
    pub block_start: usize,
    /// The block that went into the pass (position 0 is always correct).
    pub before: Vec<u32>,
    /// The next state: `[before[0], p(0), ..., p(n-2)]`, with p(i) the greedy prediction at i.
    pub after: Vec<u32>,
    /// Positions of `before` whose tokens turned out correct and whose KV entries were kept.
    pub accepted: usize,
    /// Tokens added to the answer by this pass (`accepted`, unless a stop condition cut it).
    pub new_tokens: usize,
    /// Positions of `after` that are known correct now (`accepted + 1`, capped at the block).
    pub known_correct: usize,
    /// Length of the context match whose continuation supplied the guesses (`before[1..]`); 0
    /// when they were the previous pass's predictions and random context tokens.
    #[serde(default)]
    pub context_match: usize,
    /// Positions whose token did not change in this pass.
    pub unchanged: Vec<bool>,
    /// Wall time of the forward pass.
    pub ms: f64,
}

/// Why decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced its end-of-sequence token.
    Eos,
    MaxTokens,
    StopString,
    /// The context window is full.
    ContextFull,
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub stop_reason: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose cache entries were kept from the previous generation (see
    /// `decode::generate_in`), not computed again.
    #[serde(default)]
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Forward passes after prefill.
    pub forward_passes: usize,
    /// Tokens produced per forward pass after prefill (the first token comes from prefill).
    pub tokens_per_iteration: f64,
    /// Generated tokens per second of decoding (prefill excluded).
    pub tokens_per_second: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// "ar" or "jacobi".
    pub mode: String,
    /// Jacobi block size used (1 for autoregressive).
    pub block: usize,
}

impl Generation {
    /// The record of one answer generated in two runs: this one, then `next`, which continued
    /// it (`Prompt::Continue`). The tokens are this run's and then `next`'s, the text theirs
    /// decoded together (a character split between the runs comes out whole); counts and times
    /// add up and the rates are worked out from the sums; the prompt is this run's, the stop
    /// reason, decoder and block size `next`'s.
    pub fn continued_by(self, next: Generation, tokenizer: &Tokenizer) -> crate::Result<Self> {
        let token_ids = [self.token_ids, next.token_ids].concat();
        let generated_tokens = self.generated_tokens + next.generated_tokens;
        let forward_passes = self.forward_passes + next.forward_passes;
        let decode_ms = self.decode_ms + next.decode_ms;
        // Each run's first token came from its prefill, not from a pass.
        let from_passes =
            self.generated_tokens.saturating_sub(1) + next.generated_tokens.saturating_sub(1);
        let (tokens_per_iteration, tokens_per_second) =
            rates(from_passes, forward_passes, decode_ms);
        Ok(Self {
            text: tokenizer.decode(&token_ids)?,
            token_ids,
            stop_reason: next.stop_reason,
            prompt_tokens: self.prompt_tokens,
            reused_prompt_tokens: self.reused_prompt_tokens,
            generated_tokens,
            forward_passes,
            tokens_per_iteration,
            tokens_per_second,
            prefill_ms: self.prefill_ms + next.prefill_ms,
            decode_ms,
            mode: next.mode,
            block: next.block,
        })
    }
}

/// Tokens per forward pass and per second of decoding, from the tokens the passes made (an
/// answer's first token comes from its prefill); 0 where nothing ran.
pub(crate) fn rates(from_passes: usize, passes: usize, decode_ms: f64) -> (f64, f64) {
    let per_pass = if passes > 0 {
        from_passes as f64 / passes as f64
    } else {
        0.0
    };
    let per_second = if decode_ms > 0.0 {
        from_passes as f64 / (decode_ms / 1e3)
    } else {
        0.0
    };
    (per_pass, per_second)
}
