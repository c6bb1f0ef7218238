//! Jacobi decoding (greedy): guess a block of n tokens, predict all n in one forward pass,
//! accept the prefix whose guesses the pass confirmed, slide, repeat. The output is the greedy
//! autoregressive output, token for token. See shared/ALGORITHM.md section 1.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;

use super::block_size::AutoBlock;
use super::events::{DecodeEvent, Iteration, StopReason};
use super::output::{CancelToken, Output};
use super::Progress;
use crate::error::Result;
use crate::model::{argmax_rows, KvCache, Logits, Transformer};

/// The block size of each pass: fixed, or chosen as decoding goes ([`AutoBlock`]).
#[derive(Debug)]
pub enum BlockSizer<'a> {
    Fixed(usize),
    Auto(&'a mut AutoBlock),
}

impl BlockSizer<'_> {
    fn choose(&mut self) -> usize {
        match self {
            BlockSizer::Fixed(n) => *n,
            BlockSizer::Auto(a) => a.choose(),
        }
    }

    fn observe(&mut self, n: usize, tokens: usize, ms: f64) {
        if let BlockSizer::Auto(a) = self {
            a.observe(n, tokens, ms);
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
    rng: &mut StdRng,
    out: &mut Output,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(DecodeEvent),
) -> Result<Progress> {
    let mut progress = Progress::default();
    out.push(&[first], on_event)?;
    let mut context: Vec<u32> = prompt.to_vec();
    context.push(first);
    let mut block = vec![first];
    while out.stop.is_none() {
        if cancel.is_cancelled() {
            out.stop = Some(StopReason::Cancelled);
            break;
        }
        // block[0] is already in the answer; the pass can add up to n more tokens, so a block
        // larger than what is still wanted (or what the context holds) is wasted work.
        let room = cache.max_len() - cache.len();
        let chosen = sizer.choose();
        let n = chosen.min(out.remaining()).min(room);
        if n == 0 {
            out.stop = Some(StopReason::ContextFull);
            break;
        }
        block.truncate(n);
        fill_guesses(&mut block, n, &context, rng);
        let start = cache.len();
        let t = Instant::now();
        let logits = model.forward(&block, cache, Logits::All)?;
        let preds = argmax_rows(&logits, model.config().vocab_size);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let s = step(&block, &preds);
        // Keep the KV entries of the accepted inputs only.
        cache.truncate(start + s.accepted);
        progress.passes += 1;
        progress.decode_ms += ms;
        let block_start = out.ids.len() - 1;
        let new = &preds[..s.accepted];
        let taken = out.push(new, &mut |e| on_event(e))?;
        if n == chosen {
            sizer.observe(n, s.accepted, ms);
        }
        context.extend_from_slice(&new[..taken]);
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
            ms,
        }));
        // The prediction after the last accepted input is right; the later predictions
        // (including the one past the block's end) are the next guesses.
        block = preds[s.accepted - 1..].to_vec();
    }
    Ok(progress)
}
