//! Token choice from logits: greedy, or sampled with temperature, top-k and top-p from a
//! seeded generator (the same seed gives the same answer).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::greedy()
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::InvalidSampling(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::InvalidSampling(format!(
                    "top-p must be in (0, 1], got {p}"
                )));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::InvalidSampling("top-k must be at least 1".into()));
        }
        Ok(())
    }
}

pub struct Sampler {
    cfg: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(cfg: Sampling) -> Self {
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
        }
    }

    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let t = self.cfg.temperature as f32;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.cfg.top_k {
            cand.truncate(k.max(1));
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if let Some(top_p) = self.cfg.top_p {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc as f64 >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
        }
        let r: f32 = self.rng.random();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest value; the first one on ties (what `Tensor::argmax` does too). NaNs
/// are skipped; 0 if every value is NaN.
///
/// Two passes written so the compiler vectorizes them: the maximum over 32 lanes, then the
/// first 32-value chunk that holds it. Over SmolLM2's 49152 logits: 4 us against 27 us for a
/// loop that tracks the best index (a Jacobi block of 8 takes eight per pass).
pub fn argmax(xs: &[f32]) -> u32 {
    const LANES: usize = 32;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            if x > *l {
                *l = x;
            }
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for (c, chunk) in xs.chunks(LANES).enumerate() {
        // No early exit inside the chunk, so that the comparison runs as one vector.
        if chunk.iter().fold(false, |hit, &x| hit | (x == max)) {
            let at = chunk.iter().position(|&x| x == max).unwrap_or(0);
            return (c * LANES + at) as u32;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first index of the largest non-NaN value, one value at a time.
    fn reference(xs: &[f32]) -> u32 {
        let mut best: Option<usize> = None;
        for (i, &x) in xs.iter().enumerate() {
            if !x.is_nan() && best.is_none_or(|b| x > xs[b]) {
                best = Some(i);
            }
        }
        best.unwrap_or(0) as u32
    }

    #[test]
    fn argmax_takes_the_first_of_the_largest_at_any_length() {
        let mut rng = StdRng::seed_from_u64(7);
        for len in (0..200).chain([49152, 49152 + 5]) {
            for case in 0..4 {
                // Few distinct values, so that ties are common.
                let mut xs: Vec<f32> = (0..len)
                    .map(|_| (rng.random_range(0..6) as f32) - 3.0)
                    .collect();
                if len > 0 {
                    let at = rng.random_range(0..len);
                    match case {
                        1 => xs[at] = f32::NAN,
                        2 => xs[at] = f32::INFINITY,
                        3 => xs.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                        _ => {}
                    }
                }
                assert_eq!(argmax(&xs), reference(&xs), "length {len}, case {case}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0, 2.0]), 2);
        assert_eq!(argmax(&[f32::NAN; 40]), 0);
    }
}
