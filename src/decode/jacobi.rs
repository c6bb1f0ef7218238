//! Jacobi decoding (greedy): guess a block of n tokens, predict all n in one forward pass,
//! accept the prefix whose guesses the pass confirmed, slide, repeat. The output is the greedy
//! autoregressive output, token for token. See shared/ALGORITHM.md section 1.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;

use serde::{Deserialize, Serialize};

use super::block_size::BlockTuner;
use super::events::{DecodeEvent, Iteration, StopReason};
use super::lookup::ContextLookup;
use super::output::{CancelToken, Output};
use super::Progress;
use crate::error::Result;
use crate::model::{argmax_rows, KvCache, Logits, Transformer};

/// The block size of each pass: fixed, or chosen as decoding goes, per kind of guess
/// ([`BlockTuner`]).
#[derive(Debug)]
pub enum BlockSizer<'a> {
    Fixed(usize),
    Auto(&'a mut BlockTuner),
}

impl BlockSizer<'_> {
    /// The largest block it can choose.
    fn max(&self) -> usize {
        match self {
            BlockSizer::Fixed(n) => *n,
            BlockSizer::Auto(a) => a.max(),
        }
    }

    fn choose(&mut self, matched: usize) -> usize {
        match self {
            BlockSizer::Fixed(n) => *n,
            BlockSizer::Auto(a) => a.choose(matched),
        }
    }

    fn observe(&mut self, matched: usize, n: usize, tokens: usize, ms: f64) {
        if let BlockSizer::Auto(a) = self {
            a.observe(matched, n, tokens, ms);
        }
    }

    /// The size to report: the fixed one, or the one auto used most.
    pub fn reported(&self) -> usize {
        match self {
            BlockSizer::Fixed(n) => *n,
            BlockSizer::Auto(a) => a.most_used(),
        }
    }
}

/// Where a block's guesses come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guesses {
    /// What followed the latest earlier occurrence of the context's last tokens
    /// ([`ContextLookup`]) when there is one and such guesses have been right more often than
    /// the model's own; otherwise as `Jacobi`.
    #[default]
    Context,
    /// The previous pass's predictions, then tokens drawn at random from the context: the
    /// reference algorithm.
    Jacobi,
}

/// How often each source's guesses turned out right, scored on every pass where both had some:
/// the leading guesses that matched what the pass proved correct (for the source not used, a
/// lower bound, since the pass proves only as far as the used guesses were right).
#[derive(Debug, Clone, Copy)]
struct GuessScores {
    context: f64,
    own: f64,
}

impl GuessScores {
    /// Weight of a new pass in the averages: a few passes decide, as a text changes course.
    const ALPHA: f64 = 0.2;

    /// Biased towards the copies, as a plain model's showing suggests: they are taken first,
    /// and a consistency-trained model's own guesses take over once they score better.
    fn new() -> Self {
        Self {
            context: 1.0,
            own: 0.0,
        }
    }

    fn prefer_context(&self) -> bool {
        self.context >= self.own
    }

    fn observe(&mut self, context: &[u32], own: &[u32], truth: &[u32]) {
        let right = |g: &[u32]| g.iter().zip(truth).take_while(|(a, b)| a == b).count() as f64;
        self.context += Self::ALPHA * (right(context) - self.context);
        self.own += Self::ALPHA * (right(own) - self.own);
    }
}

/// How the block evolves in one pass. Pure, so trajectory collection and tests share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `[block[0], p(0), ..., p(n-2)]`
    pub next_state: Vec<u32>,
    /// Leading positions of the block confirmed correct (>= 1).
    pub accepted: usize,
}

/// Given the block that went in and the greedy prediction after each of its positions, the
/// next Jacobi state and how many leading inputs were right.
pub fn step(block: &[u32], preds: &[u32]) -> Step {
    let n = block.len();
    debug_assert_eq!(preds.len(), n);
    let mut next_state = Vec::with_capacity(n);
    next_state.push(block[0]);
    next_state.extend_from_slice(&preds[..n - 1]);
    // Input i is right if every input before it was right and it equals the prediction made
    // from them.
    let mut accepted = 1;
    while accepted < n && block[accepted] == preds[accepted - 1] {
        accepted += 1;
    }
    Step {
        next_state,
        accepted,
    }
}

/// Fills `block` up to `n` with tokens drawn uniformly (with replacement) from `context`.
pub fn fill_guesses(block: &mut Vec<u32>, n: usize, context: &[u32], rng: &mut StdRng) {
    while block.len() < n {
        let t = if context.is_empty() {
            block[0]
        } else {
            context[rng.random_range(0..context.len())]
        };
        block.push(t);
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn decode(
    model: &Transformer,
    cache: &mut KvCache,
    prompt: &[u32],
    first: u32,
    sizer: &mut BlockSizer<'_>,
    guesses: Guesses,
    rng: &mut StdRng,
    out: &mut Output,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(DecodeEvent),
) -> Result<Progress> {
    let mut progress = Progress::default();
    out.push(&[first], on_event)?;
    let mut context = ContextLookup::new(prompt);
    context.push(first);
    let mut scores = GuessScores::new();
    // block[0] is the last token of the answer; the rest are the previous pass's predictions.
    let mut block = vec![first];
    let mut logits = Vec::new();
    while out.stop.is_none() {
        if cancel.is_cancelled() {
            out.stop = Some(StopReason::Cancelled);
            break;
        }
        let copied = match guesses {
            Guesses::Context => context.propose(sizer.max().saturating_sub(1)),
            Guesses::Jacobi => None,
        };
        let own = block.split_off(1);
        // Without own guesses (after a pass of one, or one accepted whole) there is nothing to
        // prefer to a copy; taking it also lets the scores hear from the copies again after the
        // own guesses pulled ahead and their block size fell to one.
        let copy = copied
            .as_ref()
            .filter(|_| scores.prefer_context() || own.is_empty());
        let matched = copy.map_or(0, |p| p.matched);
        // block[0] is already in the answer; the pass can add up to n more tokens, so a block
        // larger than what is still wanted (or what the context holds) is wasted work.
        let room = cache.max_len() - cache.len();
        let chosen = sizer.choose(matched);
        let n = chosen.min(out.remaining()).min(room);
        if n == 0 {
            out.stop = Some(StopReason::ContextFull);
            break;
        }
        let guessed = copy.map_or(&own[..], |p| &p.tokens[..]);
        block.extend(guessed.iter().take(n - 1));
        fill_guesses(&mut block, n, context.tokens(), rng);
        let start = cache.len();
        let t = Instant::now();
        model.forward_into(&block, cache, Logits::All, &mut logits)?;
        let preds = argmax_rows(&logits, model.config().vocab_size);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let s = step(&block, &preds);
        // Keep the KV entries of the accepted inputs only.
        cache.truncate(start + s.accepted);
        progress.passes += 1;
        progress.decode_ms += ms;
        let block_start = out.ids.len() - 1;
        let new = &preds[..s.accepted];
        if let Some(p) = copied.as_ref().filter(|_| !own.is_empty()) {
            scores.observe(&p.tokens, &own, new);
        }
        let taken = out.push(new, &mut |e| on_event(e))?;
        if n == chosen {
            sizer.observe(matched, n, s.accepted, ms);
        }
        context.extend(&new[..taken]);
        on_event(DecodeEvent::Iteration(Iteration {
            index: progress.passes - 1,
            block_start,
            unchanged: block
                .iter()
                .zip(&s.next_state)
                .map(|(a, b)| a == b)
                .collect(),
            before: std::mem::take(&mut block),
            after: s.next_state,
            accepted: s.accepted,
            new_tokens: taken,
            known_correct: (s.accepted + 1).min(n),
            // A block cut to one token (the answer's last) had no guesses to copy.
            context_match: if n > 1 { matched } else { 0 },
            ms,
        }));
        // The prediction after the last accepted input is right; the later predictions
        // (including the one past the block's end) are the next guesses.
        block = preds[s.accepted - 1..].to_vec();
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_that_guesses_right_more_often_is_preferred() {
        let truth = [7, 8, 9];
        let mut scores = GuessScores::new();
        assert!(scores.prefer_context());
        // A consistency-trained model: its own guesses are right, the copied ones are not.
        for _ in 0..10 {
            scores.observe(&[1, 2, 3], &[7, 8, 5], &truth);
        }
        assert!(!scores.prefer_context());
        // The text turns repetitive: the copies are right again.
        for _ in 0..10 {
            scores.observe(&[7, 8, 9], &[1, 8, 9], &truth);
        }
        assert!(scores.prefer_context());
    }
}
