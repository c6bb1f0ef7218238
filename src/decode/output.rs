//! Turns accepted token ids into the answer: stop tokens, stop strings, the token limit,
//! cancellation, and text deltas that never split a UTF-8 character or show part of a stop string.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::events::{DecodeEvent, StopReason};
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Cancels a running generation from another thread; the decoder checks it before every pass.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) struct Output<'a> {
    tokenizer: &'a Tokenizer,
    max_tokens: usize,
    stop_strings: &'a [String],
    pub ids: Vec<u32>,
    /// Text of `ids` already shown.
    shown: String,
    pub stop: Option<StopReason>,
}

impl<'a> Output<'a> {
    pub fn new(tokenizer: &'a Tokenizer, max_tokens: usize, stop_strings: &'a [String]) -> Self {
        Self {
            tokenizer,
            max_tokens,
            stop_strings,
            ids: Vec::new(),
            shown: String::new(),
            stop: None,
        }
    }

    pub fn remaining(&self) -> usize {
        self.max_tokens.saturating_sub(self.ids.len())
    }

    /// Appends tokens known to be correct, in order, until a stop condition; emits one `Tokens`
    /// event. Returns how many were taken.
    pub fn push(&mut self, new: &[u32], on_event: &mut dyn FnMut(DecodeEvent)) -> Result<usize> {
        let mut taken = Vec::new();
        for &id in new {
            if self.stop.is_some() {
                break;
            }
            if self.tokenizer.stop_ids().contains(&id) {
                self.stop = Some(StopReason::Eos);
                break;
            }
            self.ids.push(id);
            taken.push(id);
            if self.ids.len() >= self.max_tokens {
                self.stop = Some(StopReason::MaxTokens);
            }
        }
        let mut text = self.tokenizer.decode(&self.ids)?;
        if let Some(cut) = self.stop_string_at(&text) {
            text.truncate(cut);
            self.stop = Some(StopReason::StopString);
        }
        let visible = if self.stop.is_some() {
            text.len()
        } else {
            self.safe_len(&text)
        };
        let delta = if visible > self.shown.len() && text.is_char_boundary(self.shown.len()) {
            text[self.shown.len()..visible].to_string()
        } else {
            String::new()
        };
        self.shown.push_str(&delta);
        if !taken.is_empty() || !delta.is_empty() {
            on_event(DecodeEvent::Tokens {
                ids: taken.clone(),
                text: delta,
            });
        }
        Ok(taken.len())
    }

    pub fn text(&self) -> String {
        self.shown.clone()
    }

    /// Flushes text held back (an incomplete character or a possible stop-string prefix).
    pub fn finish(&mut self, on_event: &mut dyn FnMut(DecodeEvent)) -> Result<()> {
        let mut text = self.tokenizer.decode(&self.ids)?;
        if let Some(cut) = self.stop_string_at(&text) {
            text.truncate(cut);
        }
        if text.len() > self.shown.len() && text.starts_with(&self.shown) {
            let delta = text[self.shown.len()..].to_string();
            self.shown = text;
            on_event(DecodeEvent::Tokens {
                ids: vec![],
                text: delta,
            });
        }
        Ok(())
    }

    fn stop_string_at(&self, text: &str) -> Option<usize> {
        self.stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    /// Length of `text` safe to show: no trailing replacement character (a multi-byte character
    /// split across tokens) and no suffix that could begin a stop string.
    fn safe_len(&self, text: &str) -> usize {
        let mut end = text.len();
        if text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        let held = self
            .stop_strings
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| text[..end].ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        end -= held;
        end
    }
}
