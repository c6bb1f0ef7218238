//! `--block auto`: picks the Jacobi block size while decoding, from what passes actually cost
//! on this machine and how often each kind of guess turns out right on this text.
//!
//! A block of n tokens adds 1 + (the number of leading guesses that were right) tokens, at most
//! n. So one pass tells, for every size at once, how many tokens it would have added: a pass
//! whose guess j was wrong would have added the same with any larger block, and `min(n, ...)`
//! with a smaller one. Only a block accepted whole leaves open how far a larger one would have
//! gone. The tuner therefore keeps, per kind of guess, how often guess j was right given that
//! the guesses before it were, and from that the expected tokens of every size; and, shared by
//! all kinds of guess (a forward costs the same whatever its guesses), a moving average of the
//! time of a pass of each size. It runs the size with the most expected tokens per
//! millisecond.
//!
//! A size whose time was never measured is tried when the next smaller size's time, assumed
//! for it, would make it the best: sizes are discovered upwards, one pass each. (Unseen guess
//! positions count as right half the time, so the next size up always promises a little more;
//! its first pass settles whether it pays.) Every `EXPLORE_EVERY` passes a neighbour of the
//! best size runs once to refresh its time; probes that lose make the next one wait twice as
//! long. Block size 1 is exactly autoregressive decoding, so on a model or machine where
//! blocks do not pay, auto settles there and costs only the occasional probe.

use super::lookup::MAX_MATCH;

const SIZES: [usize; 10] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32];
/// Passes between probes right after the best size changed; doubles after each probe that
/// loses, up to `MAX_EXPLORE_EVERY`, so a settled decoder pays almost nothing for probing.
const EXPLORE_EVERY: usize = 16;
const MAX_EXPLORE_EVERY: usize = 512;
/// Weight of a new pass time in its size's moving average.
const ALPHA: f64 = 0.25;
/// Per pass with guesses, the weight of everything a kind of guess showed before decays by this
/// factor, so that the estimates follow a text that turns repetitive or stops being so (about
/// the last 30 such passes count).
const KEEP: f64 = 0.97;
/// What an unseen guess position is assumed to score: right half the time, with the weight of
/// a fifth of an observation. Optimistic enough that larger sizes get tried, weak enough that a
/// few misses end it and that guesses that are never right count as about that: with the weight
/// of a whole observation, the decayed counts kept a floor of 1.5% under them, enough for a
/// block of 2 to tie with 1 on a plain model's own guesses.
const PRIOR_RIGHT: f64 = 0.5;
const PRIOR_WEIGHT: f64 = 0.2;
/// A pass slower than this many times its size's settled average counts as this many: one
/// hiccup of a shared machine (a pass at 3x its usual time) must not make the best size look
/// worse than a neighbour, which, once behind, is only probed again at growing intervals. In a
/// simulation of a plain model on this machine's cost curve (guesses right 0 to 4% of the
/// time, 2% of passes at 3x), a cap of 1.25 let block 2 run 20 to 50% of passes and cost 1%;
/// 1.1 keeps block 1 and follows a real slowdown within about ten passes.
const MAX_SLOWDOWN: f64 = 1.1;
/// A size takes over from the current one only if it promises this much more: a plain model's
/// own guesses make block 2 a near-tie with block 1 (2% more tokens for 2 to 6% more time), and
/// flapping between them costs more than either.
const SWITCH_MARGIN: f64 = 1.03;

/// The moving average of one size's pass time.
#[derive(Debug, Clone, Copy)]
struct Cost {
    ms: f64,
    samples: usize,
}

impl Cost {
    fn observe(this: &mut Option<Cost>, ms: f64) {
        *this = Some(match *this {
            None => Cost { ms, samples: 1 },
            Some(c) => {
                // Capped once settled, see MAX_SLOWDOWN.
                let ms = if c.samples >= 3 {
                    ms.min(MAX_SLOWDOWN * c.ms)
                } else {
                    ms
                };
                Cost {
                    ms: c.ms + ALPHA * (ms - c.ms),
                    samples: c.samples + 1,
                }
            }
        });
    }
}

/// How one kind of guess has done: `right[j] / checked[j]` estimates how often guess j + 1 of
/// a block (block position j + 1) is right when every guess before it was.
#[derive(Debug, Clone)]
struct Acceptance {
    checked: Vec<f64>,
    right: Vec<f64>,
}

impl Acceptance {
    fn new(max: usize) -> Self {
        Self {
            checked: vec![0.0; max],
            right: vec![0.0; max],
        }
    }

    /// A block of `n` that accepted `accepted` inputs (1 ..= n): guesses 1 .. accepted - 1
    /// were right, and guess `accepted` (if the block had one) was wrong.
    fn observe(&mut self, n: usize, accepted: usize) {
        // A block of one has no guesses: it tells nothing, and must not fade what is known
        // (else a size that lost would look promising again after a while at size 1).
        if n < 2 {
            return;
        }
        for (c, r) in self.checked.iter_mut().zip(&mut self.right) {
            *c *= KEEP;
            *r *= KEEP;
        }
        let checked = accepted.min(n - 1).min(self.checked.len());
        for j in 0..checked {
            self.checked[j] += 1.0;
            if j + 1 < accepted {
                self.right[j] += 1.0;
            }
        }
    }

    /// Expected tokens a pass of each size `1 ..= max` adds: `tokens[n - 1]`.
    fn expected_tokens(&self) -> Vec<f64> {
        let mut tokens = Vec::with_capacity(self.checked.len() + 1);
        let (mut sum, mut reach) = (1.0, 1.0);
        tokens.push(sum);
        for (c, r) in self.checked.iter().zip(&self.right) {
            reach *= (r + PRIOR_WEIGHT * PRIOR_RIGHT) / (c + PRIOR_WEIGHT);
            sum += reach;
            tokens.push(sum);
        }
        tokens
    }
}

/// Chooses block sizes up to a maximum, per kind of guess: index 0 the model's own guesses,
/// index m guesses copied after an m-token match of the context. The kinds differ a lot: on
/// SmolLM2-135M the model's own guesses are right about 8% of the time, copies after a 4-token
/// match most of the time.
#[derive(Debug, Clone)]
pub struct BlockTuner {
    sizes: Vec<usize>,
    max: usize,
    costs: Vec<Option<Cost>>,
    by_guess: Vec<Acceptance>,
    /// Passes per size in the current generation.
    uses: Vec<usize>,
    /// The size chosen last for each kind of guess (an index into `sizes`): a probe's
    /// neighbour, and the incumbent a challenger must beat.
    best: Vec<usize>,
    passes: usize,
    explore_every: usize,
    /// Pass number of the next probe.
    next_probe: usize,
    probes: usize,
}

impl BlockTuner {
    /// Chooses among sizes up to `max`.
    pub fn new(max: usize) -> Self {
        let sizes: Vec<usize> = SIZES.iter().copied().filter(|&s| s <= max.max(1)).collect();
        let largest = *sizes.last().unwrap_or(&1);
        Self {
            costs: vec![None; sizes.len()],
            uses: vec![0; sizes.len()],
            sizes,
            max,
            by_guess: vec![Acceptance::new(largest - 1); MAX_MATCH + 1],
            best: vec![0; MAX_MATCH + 1],
            passes: 0,
            explore_every: EXPLORE_EVERY,
            next_probe: EXPLORE_EVERY,
            probes: 0,
        }
    }

    /// The maximum it was created with (its largest size is the largest of `SIZES` up to it).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Starts a new generation: usage counts restart, what was learned stays.
    pub fn begin(&mut self) {
        self.uses.iter_mut().for_each(|u| *u = 0);
    }

    fn kind(matched: usize) -> usize {
        matched.min(MAX_MATCH)
    }

    /// Expected tokens per millisecond of each size for this kind of guess; a size never timed
    /// gets the time of the next smaller timed one, and sizes above the first untimed one are
    /// left out (0).
    fn rates(&self, kind: usize) -> Vec<f64> {
        let tokens = self.by_guess[kind].expected_tokens();
        let mut known = None;
        let mut rates = vec![0.0; self.sizes.len()];
        for (i, (&n, cost)) in self.sizes.iter().zip(&self.costs).enumerate() {
            let ms = match (cost, known) {
                (Some(c), _) => c.ms,
                (None, Some(ms)) => ms,
                // Nothing smaller timed yet: start from one token.
                (None, None) if i == 0 => 1.0,
                (None, None) => break,
            };
            rates[i] = tokens[n - 1] / ms.max(1e-6);
            if cost.is_none() {
                break;
            }
            known = Some(ms);
        }
        rates
    }

    /// The block size for the next pass whose guesses are of this kind (see [`BlockTuner`]).
    pub fn choose(&mut self, matched: usize) -> usize {
        let kind = Self::kind(matched);
        self.passes += 1;
        let rates = self.rates(kind);
        let incumbent = self.best[kind];
        let mut best = incumbent;
        for (i, &r) in rates.iter().enumerate() {
            if r > rates[best] {
                best = i;
            }
        }
        // Near-ties stay with the incumbent: their estimates are noisier than the difference.
        if rates[best] < rates[incumbent] * SWITCH_MARGIN {
            best = incumbent;
        }
        if best != incumbent {
            self.explore_every = EXPLORE_EVERY;
            self.next_probe = self.passes + EXPLORE_EVERY;
        }
        self.best[kind] = best;
        let settled = self.costs[best].is_some_and(|c| c.samples >= 3);
        if !settled || self.passes < self.next_probe {
            return self.sizes[best];
        }
        // Refresh a neighbour's time, alternating up and down; a side that does not exist falls
        // to the other one.
        self.probes += 1;
        let up = best + 1 < self.sizes.len();
        let down = best > 0;
        let idx = match (self.probes % 2 == 1 || !down, up) {
            (true, true) => best + 1,
            _ if down => best - 1,
            _ => best,
        };
        // Assume the probe loses; a size change resets the interval.
        self.explore_every = (self.explore_every * 2).min(MAX_EXPLORE_EVERY);
        self.next_probe = self.passes + self.explore_every;
        self.sizes[idx]
    }

    /// Records a pass of block size `n` (one of the sizes it chooses from) whose guesses were
    /// of kind `matched`, that took `ms` and accepted `accepted` inputs.
    pub fn observe(&mut self, matched: usize, n: usize, accepted: usize, ms: f64) {
        let Some(i) = self.sizes.iter().position(|&s| s == n) else {
            return;
        };
        self.uses[i] += 1;
        Cost::observe(&mut self.costs[i], ms);
        self.by_guess[Self::kind(matched)].observe(n, accepted);
    }

    /// The size used most often in this generation.
    pub fn most_used(&self) -> usize {
        let i = (0..self.sizes.len())
            .max_by_key(|&i| self.uses[i])
            .unwrap_or(0);
        self.sizes[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs passes of one kind of guess whose cost grows with n and whose accepted inputs are
    /// `min(n, run(pass))`; returns the size used most and the tokens per ms.
    fn settle(cost: impl Fn(usize) -> f64, run: impl Fn(usize) -> usize) -> (usize, f64) {
        let mut auto = BlockTuner::new(32);
        let (mut tokens, mut ms) = (0usize, 0f64);
        for pass in 0..2000 {
            let n = auto.choose(0);
            let accepted = n.min(run(pass));
            auto.observe(0, n, accepted, cost(n));
            tokens += accepted;
            ms += cost(n);
        }
        (auto.most_used(), tokens as f64 / ms)
    }

    #[test]
    fn stays_at_one_when_blocks_do_not_pay() {
        // Cost doubles with the block, acceptance never grows: autoregressive is best.
        let (n, rate) = settle(|n| 10.0 * n as f64, |_| 1);
        assert_eq!(n, 1);
        assert!(rate >= 0.97 * 0.1, "rate {rate}");
    }

    #[test]
    fn a_slow_pass_does_not_move_it_off_the_best_size() {
        // This machine's figures: block 2 costs 1.27 passes of 1 and its guess is right one
        // time in 16, so 1 is best; every 40th pass of block 1 hits a hiccup at 3x its time.
        let mut auto = BlockTuner::new(8);
        let (mut tokens, mut ms, mut ones) = (0.0, 0.0, 0usize);
        for pass in 0..2000 {
            let n = auto.choose(0);
            let accepted = if pass % 16 == 0 { n.min(2) } else { 1 };
            let cost = match n {
                1 if pass % 40 == 39 => 22.0,
                1 => 7.4,
                2 => 9.4,
                n => 7.4 * n as f64,
            };
            auto.observe(0, n, accepted, cost);
            tokens += accepted as f64;
            ms += cost;
            ones += (n == 1) as usize;
        }
        assert!(ones >= 1900, "block 1 ran {ones} of 2000 passes");
        // AR's own rate, hiccups included, is 1 / 7.76 ms.
        let ar = 1.0 / (7.4 + (22.0 - 7.4) / 40.0);
        assert!(tokens / ms >= 0.97 * ar, "{} vs {ar}", tokens / ms);
    }

    #[test]
    fn grows_when_blocks_pay() {
        // Nearly flat cost, the first three guesses always right: a block of 4 is best.
        let (n, rate) = settle(|n| 10.0 + 0.2 * n as f64, |_| 4);
        assert_eq!(n, 4);
        assert!(rate > 0.97 * 4.0 / 10.8, "rate {rate}");
    }

    #[test]
    fn each_kind_of_guess_gets_its_own_size() {
        // This machine's cost curve; the model's own guesses are never right, copies after a
        // 4-token match right three times in a row, then wrong.
        let cost = |n: usize| 7.0 * [1.0, 1.08, 1.25, 1.45, 1.85, 2.3][n.min(6) - 1];
        let mut auto = BlockTuner::new(32);
        let mut used = [[0usize; 33]; 2];
        for pass in 0..2000 {
            let (kind, matched) = if pass % 2 == 0 { (0, 0) } else { (1, 4) };
            let n = auto.choose(matched);
            let accepted = if matched == 0 { 1 } else { n.min(4) };
            auto.observe(matched, n, accepted, cost(n));
            used[kind][n] += 1;
        }
        assert!(used[0][1] >= 900, "own guesses: {:?}", used[0]);
        assert!(used[1][4] >= 900, "copied guesses: {:?}", used[1]);
    }

    #[test]
    fn expected_tokens_follow_the_observed_runs() {
        let mut a = Acceptance::new(7);
        // Blocks of 8: a quarter accepted 1 input (guess 1 wrong), the rest 3 (guess 3 wrong).
        for i in 0..400 {
            a.observe(8, if i % 4 == 0 { 1 } else { 3 });
        }
        let t = a.expected_tokens();
        assert!((t[0] - 1.0).abs() < 1e-9);
        assert!((t[1] - 1.75).abs() < 0.03, "{t:?}");
        assert!((t[2] - 2.5).abs() < 0.05, "{t:?}");
        // Guess 3 was always wrong: larger blocks add (almost) nothing more.
        assert!((t[7] - t[2]).abs() < 0.05, "{t:?}");
    }

    #[test]
    fn guesses_that_are_rarely_right_keep_block_one_on_a_noisy_machine() {
        // A plain model's own guesses (right 2% of the time), this machine's cost curve, pass
        // times jittering by +-5% and 2% of passes hit by a hiccup at 3x: block 2 adds 2% more
        // tokens for 4% more time, so block 1 is best.
        let mut seed = 12345u64;
        let mut random = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let curve = [1.0, 1.04, 1.2, 1.38, 1.6, 1.8, 2.3, 3.0, 4.2, 5.5];
        let cost = |n: usize| 7.0 * curve[SIZES.iter().position(|&s| s == n).unwrap()];
        let mut auto = BlockTuner::new(32);
        let (mut tokens, mut ms, mut ar_ms, mut ones) = (0.0, 0.0, 0.0, 0);
        for _ in 0..1300 {
            let n = auto.choose(0);
            let mut accepted = 1;
            while accepted < n && random() < if accepted == 1 { 0.02 } else { 0.3 } {
                accepted += 1;
            }
            let jitter = 0.95 + 0.1 * random() + if random() < 0.02 { 2.0 } else { 0.0 };
            auto.observe(0, n, accepted, cost(n) * jitter);
            tokens += accepted as f64;
            ms += cost(n) * jitter;
            ar_ms += cost(1) * jitter;
            ones += (n == 1) as usize;
        }
        assert!(ones >= 1100, "block 1 ran {ones} of 1300 passes");
        assert!(
            tokens / ms >= 0.99 * 1300.0 / ar_ms,
            "{} vs AR {}",
            tokens / ms,
            1300.0 / ar_ms
        );
    }
}
