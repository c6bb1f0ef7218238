//! Guesses from the text so far ("prompt lookup"): if the last few tokens occurred earlier in
//! the prompt or the answer, the tokens that followed them then are a guess for what follows
//! now. Answers repeat their question's numbers and names, and small models repeat themselves,
//! so these guesses are often right where a plain model's own Jacobi guesses almost never are:
//! on 20 GSM8K prompts with SmolLM2-135M, a guess after a 2-token match was right about 40% of
//! the time (BENCHMARKS.md). Jacobi verifies every guess, so the output stays the greedy one.

use std::collections::HashMap;

/// Longest suffix of the context that is matched. Longer matches are rarer, and the 4-token
/// ones already guess right most of the time.
pub const MAX_MATCH: usize = 4;

/// The context's tokens, indexed by every n-gram (n = 1 ..= [`MAX_MATCH`]) that has a
/// successor: the position where its latest such occurrence ends.
#[derive(Debug, Clone, Default)]
pub struct ContextLookup {
    tokens: Vec<u32>,
    /// `last_end[n - 1][key of the n tokens]`: index of the n-gram's last token.
    last_end: [HashMap<u128, usize>; MAX_MATCH],
}

/// A continuation copied from the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Length of the context's suffix that matched (1 ..= [`MAX_MATCH`]).
    pub matched: usize,
    pub tokens: Vec<u32>,
}

fn key(ngram: &[u32]) -> u128 {
    ngram.iter().fold(0u128, |k, &t| (k << 32) | t as u128)
}

impl ContextLookup {
    pub fn new(tokens: &[u32]) -> Self {
        let mut lookup = Self::default();
        lookup.extend(tokens);
        lookup
    }

    pub fn extend(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.push(t);
        }
    }

    pub fn push(&mut self, token: u32) {
        // The n-grams ending just before `token` now have a successor: index them.
        let end = self.tokens.len();
        self.tokens.push(token);
        if end == 0 {
            return;
        }
        let last = end - 1;
        for n in 1..=MAX_MATCH.min(end) {
            self.last_end[n - 1].insert(key(&self.tokens[end - n..end]), last);
        }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The longest suffix of the context that occurred before, and the `k` tokens that followed
    /// its latest earlier occurrence. When the copy runs into the context's end it continues
    /// with its own tokens, so a loop the text is in extends as the loop.
    pub fn propose(&self, k: usize) -> Option<Proposal> {
        let len = self.tokens.len();
        if k == 0 {
            return None;
        }
        (1..=MAX_MATCH.min(len)).rev().find_map(|n| {
            let &end = self.last_end[n - 1].get(&key(&self.tokens[len - n..]))?;
            let mut tokens = Vec::with_capacity(k);
            for i in 0..k {
                let at = end + 1 + i;
                tokens.push(if at < len {
                    self.tokens[at]
                } else {
                    tokens[at - len]
                });
            }
            Some(Proposal { matched: n, tokens })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same proposal from a scan of the whole context: the longest suffix (up to
    /// MAX_MATCH) that occurs earlier, its latest earlier occurrence.
    fn scan(ctx: &[u32], k: usize) -> Option<Proposal> {
        let len = ctx.len();
        for n in (1..=MAX_MATCH.min(len)).rev() {
            let suffix = &ctx[len - n..];
            if let Some(start) = (0..len - n).rev().find(|&s| &ctx[s..s + n] == suffix) {
                let mut virt = ctx.to_vec();
                for i in 0..k {
                    virt.push(virt[start + n + i]);
                }
                return Some(Proposal {
                    matched: n,
                    tokens: virt[len..].to_vec(),
                });
            }
        }
        None
    }

    #[test]
    fn proposes_what_followed_the_longest_match() {
        //           0  1  2  3  4  5  6  7  8
        let ctx = [5, 6, 7, 8, 1, 6, 7, 9, 6, 7];
        let p = ContextLookup::new(&ctx).propose(3).unwrap();
        // "6 7" occurred at 1..3 and 5..7; the latest is followed by 9, 6, 7.
        assert_eq!(
            p,
            Proposal {
                matched: 2,
                tokens: vec![9, 6, 7]
            }
        );
    }

    #[test]
    fn a_loop_continues_past_the_context_end() {
        let p = ContextLookup::new(&[1, 2, 3, 1, 2, 3, 1])
            .propose(5)
            .unwrap();
        assert_eq!(p.matched, 4);
        assert_eq!(p.tokens, vec![2, 3, 1, 2, 3]);
    }

    #[test]
    fn no_match_no_proposal() {
        assert_eq!(ContextLookup::new(&[1, 2, 3, 4]).propose(3), None);
        assert_eq!(ContextLookup::new(&[]).propose(3), None);
        assert_eq!(ContextLookup::new(&[1, 1]).propose(0), None);
    }

    #[test]
    fn the_index_agrees_with_a_scan_on_random_text() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            // Few distinct tokens, so that matches of every length occur.
            let len = rng.random_range(0..60);
            let ctx: Vec<u32> = (0..len).map(|_| rng.random_range(0..4)).collect();
            let mut lookup = ContextLookup::new(&ctx[..len / 2]);
            lookup.extend(&ctx[len / 2..]);
            let k = rng.random_range(1..10);
            assert_eq!(lookup.propose(k), scan(&ctx, k), "context {ctx:?}, k {k}");
        }
    }
}
