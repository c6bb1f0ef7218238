//! `--block auto`: picks the Jacobi block size while decoding, from what passes actually cost
//! and how many tokens they actually fixed on this machine and this text.
//!
//! Every candidate size keeps a moving average of its pass time and of the tokens a pass added.
//! The decoder runs the size with the most tokens per millisecond; every `EXPLORE_EVERY` passes
//! it tries the next larger (then the next smaller) size once, so it notices when the text gets
//! easier or harder; probes that lose make the next one wait twice as long. Block size 1 is exactly autoregressive decoding, so on a model or machine
//! where blocks do not pay, auto settles there and costs only the occasional probe.

const SIZES: [usize; 10] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32];
/// Passes between probes right after the best size changed; doubles after each probe that
/// loses, up to `MAX_EXPLORE_EVERY`, so a settled decoder pays almost nothing for probing.
const EXPLORE_EVERY: usize = 16;
const MAX_EXPLORE_EVERY: usize = 512;
/// Weight of a new observation in the moving averages.
const ALPHA: f64 = 0.25;
/// A pass slower than this many times its size's settled average counts as this many: one
/// hiccup of a shared machine (a pass at 3x its usual time) must not make the best size look
/// worse than a neighbour, which, once behind, is only probed again at growing intervals.
const MAX_SLOWDOWN: f64 = 1.25;

/// A pass time as it enters `s`'s average: capped at [`MAX_SLOWDOWN`] times it once settled.
fn clip_slowdown(ms: f64, s: &Stat) -> f64 {
    if s.samples >= 3 {
        ms.min(MAX_SLOWDOWN * s.ms)
    } else {
        ms
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    ms: f64,
    tokens: f64,
    samples: usize,
}

#[derive(Debug, Clone)]
pub struct AutoBlock {
    sizes: Vec<usize>,
    stats: Vec<Option<Stat>>,
    best: usize,
    passes: usize,
    uses: Vec<usize>,
    explore_every: usize,
    max: usize,
    /// Pass number of the next probe.
    next_probe: usize,
    probes: usize,
}

impl AutoBlock {
    /// Chooses among sizes up to `max`.
    pub fn new(max: usize) -> Self {
        let sizes: Vec<usize> = SIZES.iter().copied().filter(|&s| s <= max.max(1)).collect();
        Self {
            stats: vec![None; sizes.len()],
            uses: vec![0; sizes.len()],
            sizes,
            best: 0,
            passes: 0,
            explore_every: EXPLORE_EVERY,
            max,
            next_probe: EXPLORE_EVERY,
            probes: 0,
        }
    }

    /// The largest size it considers.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Starts a new generation: usage counts restart, what was learned stays.
    pub fn begin(&mut self) {
        self.uses.iter_mut().for_each(|u| *u = 0);
    }

    /// The block size for the next pass.
    pub fn choose(&mut self) -> usize {
        self.passes += 1;
        let settled = self.stats[self.best].is_some_and(|s| s.samples >= 3);
        if !settled || self.passes < self.next_probe {
            return self.sizes[self.best];
        }
        // Alternate probing up and down; a side that does not exist falls to the other one.
        self.probes += 1;
        let up = self.best + 1 < self.sizes.len();
        let down = self.best > 0;
        let idx = match (self.probes % 2 == 1 || !down, up) {
            (true, true) => self.best + 1,
            _ if down => self.best - 1,
            _ => self.best,
        };
        // Assume the probe loses; `observe` resets the interval if it wins.
        self.explore_every = (self.explore_every * 2).min(MAX_EXPLORE_EVERY);
        self.next_probe = self.passes + self.explore_every;
        self.sizes[idx]
    }

    /// Records a pass of block size `n` that took `ms` and added `tokens` to the answer.
    pub fn observe(&mut self, n: usize, tokens: usize, ms: f64) {
        let Some(i) = self.sizes.iter().position(|&s| s == n) else {
            return;
        };
        self.uses[i] += 1;
        let t = tokens as f64;
        self.stats[i] = Some(match self.stats[i] {
            None => Stat {
                ms,
                tokens: t,
                samples: 1,
            },
            Some(s) => Stat {
                ms: s.ms + ALPHA * (clip_slowdown(ms, &s) - s.ms),
                tokens: s.tokens + ALPHA * (t - s.tokens),
                samples: s.samples + 1,
            },
        });
        let rate = |s: &Stat| s.tokens / s.ms.max(1e-6);
        let best_rate = self.stats[self.best].as_ref().map(rate).unwrap_or(0.0);
        if let Some(s) = &self.stats[i] {
            if i != self.best && rate(s) > best_rate {
                self.best = i;
                self.explore_every = EXPLORE_EVERY;
                self.next_probe = self.passes + EXPLORE_EVERY;
            } else if i == self.best {
                // The incumbent got worse: let a neighbour that measured better take over.
                for j in [i.wrapping_sub(1), i + 1] {
                    if let Some(Some(n)) = self.stats.get(j) {
                        if rate(n) > rate(s) {
                            self.best = j;
                        }
                    }
                }
            }
        }
    }

    /// The size used most often so far.
    pub fn most_used(&self) -> usize {
        let i = (0..self.sizes.len())
            .max_by_key(|&i| self.uses[i])
            .unwrap_or(0);
        self.sizes[i]
    }
}

/// One [`AutoBlock`] per kind of guess, because each kind has its own best block size: guesses
/// copied after a 4-token match of the context are right far more often than the model's own
/// Jacobi guesses, which on a plain model almost never pay for a block larger than one.
#[derive(Debug, Clone)]
pub struct BlockTuner {
    /// Index 0: the model's own guesses; index m: guesses copied after an m-token match.
    by_guess: Vec<AutoBlock>,
}

impl BlockTuner {
    pub fn new(max: usize) -> Self {
        Self {
            by_guess: vec![AutoBlock::new(max); super::lookup::MAX_MATCH + 1],
        }
    }

    pub fn max(&self) -> usize {
        self.by_guess[0].max()
    }

    /// Starts a new generation: usage counts restart, what was learned stays.
    pub fn begin(&mut self) {
        self.by_guess.iter_mut().for_each(AutoBlock::begin);
    }

    /// The chooser for passes whose guesses were copied after a `matched`-token match of the
    /// context (0: the model's own guesses).
    pub fn for_guess(&mut self, matched: usize) -> &mut AutoBlock {
        let i = matched.min(self.by_guess.len() - 1);
        &mut self.by_guess[i]
    }

    /// The size used most often so far, over all kinds of guess.
    pub fn most_used(&self) -> usize {
        let first = &self.by_guess[0];
        let uses = |i: usize| self.by_guess.iter().map(|a| a.uses[i]).sum::<usize>();
        let i = (0..first.sizes.len()).max_by_key(|&i| uses(i)).unwrap_or(0);
        first.sizes[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates passes whose cost grows with n and whose gain saturates at `gain_cap`.
    fn settle(cost: impl Fn(usize) -> f64, gain: impl Fn(usize) -> usize) -> (usize, f64) {
        let mut auto = AutoBlock::new(32);
        let (mut tokens, mut ms) = (0usize, 0f64);
        for _ in 0..2000 {
            let n = auto.choose();
            auto.observe(n, gain(n), cost(n));
            tokens += gain(n);
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
        // This machine's figures: block 2 costs 1.27 passes of 1 and adds 1.06 tokens, so 1 is
        // best; every 40th pass of block 1 hits a hiccup at 3x its time.
        let mut auto = AutoBlock::new(8);
        let (mut tokens, mut ms, mut ones) = (0.0, 0.0, 0usize);
        for pass in 0..2000 {
            let n = auto.choose();
            let (t, cost) = match n {
                1 if pass % 40 == 39 => (1, 22.0),
                1 => (1, 7.4),
                2 => (if pass % 16 == 0 { 2 } else { 1 }, 9.4),
                n => (1, 7.4 * n as f64),
            };
            auto.observe(n, t, cost);
            tokens += t as f64;
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
        // Nearly flat cost, acceptance up to 4 tokens: a larger block wins.
        let (n, rate) = settle(|n| 10.0 + 0.2 * n as f64, |n| n.min(4));
        assert!(n >= 4, "settled at {n}");
        assert!(rate > 0.3, "rate {rate}");
    }
}
