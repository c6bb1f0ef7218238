//! The measurements behind `fixpoint bench`: greedy AR against Jacobi at several block sizes on
//! the same prompts, and the cost of one forward pass as a function of how many tokens it takes.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::decode::{BlockSpec, CancelToken, DecodeOptions, Guesses, Mode};
use crate::engine::{Engine, GenerateRequest, Prompt};
use crate::error::{Error, Result};
use crate::model::Logits;

/// Reads prompts: JSONL with a `question`, `prompt` or `text` field, or plain text, one a line.
pub fn read_prompts(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    Ok(read_examples(path, limit)?
        .into_iter()
        .map(|e| e.prompt)
        .collect())
}

/// A prompt and, when the file gives one (GSM8K's `answer` field, after `####`), the number
/// its answer should end with.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub reference: Option<String>,
}

/// Reads prompts like [`read_prompts`], with reference answers where the JSONL has them.
pub fn read_examples(path: &Path, limit: Option<usize>) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let example = if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::BadConfig(format!("{} line {}: {e}", path.display(), i + 1)))?;
            let prompt = ["question", "prompt", "text"]
                .iter()
                .find_map(|k| v[*k].as_str())
                .ok_or_else(|| {
                    Error::BadConfig(format!(
                        "{} line {}: no `question`, `prompt` or `text` field",
                        path.display(),
                        i + 1
                    ))
                })?
                .to_string();
            let reference = v["answer"]
                .as_str()
                .and_then(|a| a.rsplit_once("####"))
                .and_then(|(_, n)| normalize_number(n));
            Example { prompt, reference }
        } else {
            Example {
                prompt: line.to_string(),
                reference: None,
            }
        };
        examples.push(example);
        if limit.is_some_and(|l| examples.len() >= l) {
            break;
        }
    }
    if examples.is_empty() {
        return Err(Error::BadConfig(format!(
            "{} holds no prompts",
            path.display()
        )));
    }
    Ok(examples)
}

/// `1,234.50` -> `1234.5`; `None` if there is no number.
fn normalize_number(s: &str) -> Option<String> {
    let cleaned: String = s
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '$')
        .collect();
    let v: f64 = cleaned.trim_end_matches('.').parse().ok()?;
    Some(format!("{v}"))
}

/// The last number in a model's answer (GSM8K's usual scoring).
pub fn final_number(text: &str) -> Option<String> {
    let mut last = None;
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        let continues = (c == '.' || c == ',') && !current.is_empty();
        let sign = c == '-' && current.is_empty();
        if c.is_ascii_digit() || continues || sign {
            current.push(c);
        } else {
            if current.chars().any(|c| c.is_ascii_digit()) {
                last = normalize_number(&current);
            }
            current.clear();
            if c == '-' {
                current.push(c);
            }
        }
    }
    last
}

/// Answers whose last number matches the reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArResult {
    pub tokens_per_second: f64,
    pub generated_tokens: usize,
    pub forward_passes: usize,
    pub decode_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JacobiResult {
    pub block: BlockSpec,
    /// The size used (for auto: the one used most).
    pub block_used: usize,
    pub tokens_per_second: f64,
    pub tokens_per_iteration: f64,
    pub speedup: f64,
    pub identical_to_ar: bool,
    pub generated_tokens: usize,
    pub forward_passes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardCost {
    pub m: usize,
    /// Median over repetitions.
    pub ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// `ms / ms(m = 1)`.
    pub ratio: f64,
    /// The median over rounds of this size's time over m = 1's in the same round: steadier than
    /// `ratio` when the machine's speed changes during the run (see [`VectorProbe`]).
    #[serde(default)]
    pub round_ratio: f64,
}

/// Vector instructions per cycle that the kernel threads got while the benchmark ran
/// ([`crate::vector_probe`]; comparable between runs of one build): before each prompt and each
/// round of forward costs, the lower of the threads' rates. Lower figures mean a neighbour
/// shared the cores and every forward ran slower; a wide range means that changed during the
/// run, which can skew ratios between sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VectorProbe {
    /// Median over the samples.
    pub ops_per_cycle: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl VectorProbe {
    fn summarize(samples: Vec<f64>) -> Option<Self> {
        let n = samples.len();
        let s = Spread::of(samples)?;
        Some(VectorProbe {
            ops_per_cycle: s.median,
            min: s.min,
            max: s.max,
            samples: n,
        })
    }
}

/// Median, min and max of some measurements.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `None` for no measurements.
    fn of(mut values: Vec<f64>) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        Some(Spread {
            median: *values.get(values.len() / 2)?,
            min: values[0],
            max: values[values.len() - 1],
        })
    }
}

/// One probe on every kernel thread at once (the forward uses them all); the slowest thread's
/// rate, or `None` off the CPU or without a probe for this one.
fn probe_kernel_threads(engine: &Engine) -> Option<f64> {
    if engine.info().device != "cpu" {
        return None;
    }
    crate::kernels::team::on_every_thread(crate::vector_probe::ops_per_cycle)
        .into_iter()
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::min)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub prompts: usize,
    pub max_tokens: usize,
    pub ar: ArResult,
    /// Where the Jacobi decoders took their guesses from (reports written before the choice
    /// existed used the model's own predictions and random tokens).
    #[serde(default = "jacobi_guesses")]
    pub guesses: Guesses,
    pub jacobi: Vec<JacobiResult>,
    pub forward_cost: Vec<ForwardCost>,
    /// Of the greedy (AR) answers, on prompts with a reference answer.
    pub accuracy: Option<Accuracy>,
    pub cache_tokens: usize,
    /// Threads of the CPU kernels (`FIXPOINT_THREADS`, else one per core).
    pub threads: usize,
    /// `None` on CPUs the probe has no loop for (and in reports written before it existed).
    #[serde(default)]
    pub vector_probe: Option<VectorProbe>,
    /// The instruction set of the CPU matmul kernels ([`crate::kernels::Isa`]); empty in
    /// reports written before it was recorded.
    #[serde(default)]
    pub cpu_kernels: String,
    /// How much of the CPU kernels' weights the kernel backs with 2 MiB pages; `None` for
    /// candle's path, on systems without `/proc/self/smaps`, and in reports written before it
    /// was recorded.
    #[serde(default)]
    pub weight_pages: Option<crate::kernels::HugePages>,
}

fn jacobi_guesses() -> Guesses {
    Guesses::Jacobi
}

/// What one decoder did over all prompts.
#[derive(Debug, Clone, Default)]
struct Totals {
    tokens: usize,
    passes: usize,
    ms: f64,
    used: std::collections::HashMap<usize, usize>,
    outputs: Vec<Vec<u32>>,
}

impl Totals {
    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / (self.ms / 1e3).max(1e-9)
    }
}

pub struct BenchConfig {
    pub prompts: Vec<String>,
    /// Reference final answers, by prompt (may be empty).
    pub references: Vec<Option<String>>,
    pub max_tokens: usize,
    pub blocks: Vec<BlockSpec>,
    /// Where the Jacobi decoders take their guesses from.
    pub guesses: Guesses,
    pub cost_sizes: Vec<usize>,
    pub cache_tokens: usize,
    pub repetitions: usize,
}

/// Runs everything; `log` gets a line per finished measurement.
pub fn run(engine: &Engine, cfg: &BenchConfig, log: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let requests: Vec<Prompt> = cfg
        .prompts
        .iter()
        .map(|p| Prompt::user(p.clone()))
        .collect();
    // Every decoder runs each prompt in turn (prompt-major), so drift in the machine's speed
    // during the run lands on all decoders alike instead of on whichever ran first.
    let modes: Vec<Mode> = std::iter::once(Mode::Autoregressive)
        .chain(cfg.blocks.iter().map(|b| b.mode()))
        .collect();
    let mut totals = vec![Totals::default(); modes.len()];
    // Warm-up: one short generation so first-touch costs land on no decoder.
    let warm = GenerateRequest {
        prompt: requests[0].clone(),
        options: DecodeOptions {
            max_tokens: 8,
            ..Default::default()
        },
    };
    engine.generate(&warm, &CancelToken::new(), |_| {})?;
    let mut probes = Vec::new();
    for (p, prompt) in requests.iter().enumerate() {
        probes.extend(probe_kernel_threads(engine));
        // Every other prompt runs the decoders in reverse order, so that whatever running
        // first or last costs (the probe just before, caches, the machine's state) lands on
        // all of them alike.
        let mut order: Vec<usize> = (0..modes.len()).collect();
        if p % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (mode, total) = (&modes[i], &mut totals[i]);
            let req = GenerateRequest {
                prompt: prompt.clone(),
                options: DecodeOptions {
                    mode: *mode,
                    max_tokens: cfg.max_tokens,
                    guesses: cfg.guesses,
                    ..Default::default()
                },
            };
            let g = engine.generate(&req, &CancelToken::new(), |_| {})?;
            // The first token comes from prefill, which is the same for every decoder.
            total.tokens += g.generated_tokens.saturating_sub(1);
            total.passes += g.forward_passes;
            total.ms += g.decode_ms;
            *total.used.entry(g.block).or_default() += g.forward_passes;
            total.outputs.push(g.token_ids);
        }
        log(&format!("prompt {}/{} done", p + 1, requests.len()));
    }
    let ar = &totals[0];
    let ar_tps = ar.tokens_per_second();
    log(&format!(
        "ar: {ar_tps:.1} tokens/s over {} tokens",
        ar.tokens
    ));
    let mut jacobi = Vec::new();
    for (&block, t) in cfg.blocks.iter().zip(&totals[1..]) {
        let tps = t.tokens_per_second();
        let r = JacobiResult {
            block,
            block_used: t
                .used
                .iter()
                .max_by_key(|&(_, n)| *n)
                .map(|(&b, _)| b)
                .unwrap_or(1),
            tokens_per_second: tps,
            tokens_per_iteration: t.tokens as f64 / t.passes.max(1) as f64,
            speedup: tps / ar_tps,
            identical_to_ar: t.outputs == ar.outputs,
            generated_tokens: t.tokens,
            forward_passes: t.passes,
        };
        log(&format!(
            "jacobi block {block}: {tps:.1} tokens/s, {:.2} tokens/pass, speedup {:.2}, identical {}",
            r.tokens_per_iteration, r.speedup, r.identical_to_ar
        ));
        jacobi.push(r);
    }
    let mut scored = (0, 0);
    for (ids, reference) in ar.outputs.iter().zip(&cfg.references) {
        if let Some(want) = reference {
            let text = engine.tokenizer().decode(ids)?;
            scored.1 += 1;
            if final_number(&text).as_ref() == Some(want) {
                scored.0 += 1;
            }
        }
    }
    let accuracy = (scored.1 > 0).then(|| Accuracy {
        correct: scored.0,
        total: scored.1,
        rate: scored.0 as f64 / scored.1 as f64,
    });
    let forward_cost = forward_costs(engine, cfg, &mut probes)?;
    for c in &forward_cost {
        log(&format!(
            "forward m={:>2}: {:.2} ms (x{:.2})",
            c.m, c.ms, c.ratio
        ));
    }
    Ok(BenchReport {
        model: engine.info().path.display().to_string(),
        prompts: cfg.prompts.len(),
        max_tokens: cfg.max_tokens,
        ar: ArResult {
            tokens_per_second: ar_tps,
            generated_tokens: ar.tokens,
            forward_passes: ar.passes,
            decode_ms: ar.ms,
        },
        guesses: cfg.guesses,
        jacobi,
        forward_cost,
        accuracy,
        cache_tokens: cfg.cache_tokens,
        threads: crate::kernels::team::threads(),
        vector_probe: VectorProbe::summarize(probes),
        cpu_kernels: crate::kernels::Isa::current().name().to_string(),
        weight_pages: engine.model().weight_pages(),
    })
}

/// Median time of one forward of m tokens (logits for all of them) on a cache holding
/// `cache_tokens` positions. A `probe_kernel_threads` sample before each round goes to
/// `probes`.
pub fn forward_costs(
    engine: &Engine,
    cfg: &BenchConfig,
    probes: &mut Vec<f64>,
) -> Result<Vec<ForwardCost>> {
    let model = engine.model();
    let context = model.config().context_length;
    let vocab = model.config().vocab_size as u32;
    let base = cfg
        .cache_tokens
        .min(context.saturating_sub(cfg.cost_sizes.iter().max().copied().unwrap_or(1) + 1));
    let ids: Vec<u32> = (0..base + 64)
        .map(|i| (i as u32 * 7919 + 13) % vocab)
        .collect();
    let mut cache = model.new_cache();
    if base > 0 {
        for chunk in ids[..base].chunks(256) {
            model.forward(chunk, &mut cache, Logits::Last)?;
        }
    }
    let sizes: Vec<usize> = cfg
        .cost_sizes
        .iter()
        .copied()
        .filter(|&m| base + m <= context)
        .collect();
    let blocks: Vec<Vec<u32>> = sizes
        .iter()
        .map(|&m| (0..m).map(|i| ids[(base + i) % ids.len()]).collect())
        .collect();
    // Round-robin over the sizes, so that drift in the machine's speed lands on every size
    // alike instead of skewing the ratios between sizes measured minutes apart.
    let mut times: Vec<Vec<f64>> = sizes
        .iter()
        .map(|_| Vec::with_capacity(cfg.repetitions))
        .collect();
    // Logits land in one buffer throughout, as in the decoders.
    let mut logits = Vec::new();
    for rep in 0..cfg.repetitions + 2 {
        if rep >= 2 {
            probes.extend(probe_kernel_threads(engine));
        }
        for (block, times) in blocks.iter().zip(&mut times) {
            cache.truncate(base);
            let t = Instant::now();
            model.forward_into(block, &mut cache, Logits::All, &mut logits)?;
            if rep >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let ones = sizes.iter().position(|&m| m == 1).map(|i| times[i].clone());
    let mut out: Vec<ForwardCost> = Vec::new();
    for (&m, times) in sizes.iter().zip(times) {
        // Each round's forwards ran back to back, so their ratio shares one state of the machine.
        let round_ratio = ones
            .as_ref()
            .and_then(|ones| Spread::of(times.iter().zip(ones).map(|(t, one)| t / one).collect()))
            .map_or(f64::NAN, |s| s.median);
        let Some(spread) = Spread::of(times) else {
            continue;
        };
        out.push(ForwardCost {
            m,
            ms: spread.median,
            min_ms: spread.min,
            max_ms: spread.max,
            ratio: 0.0,
            round_ratio,
        });
    }
    let one = out
        .iter()
        .find(|c| c.m == 1)
        .map(|c| c.ms)
        .unwrap_or(f64::NAN);
    for c in &mut out {
        c.ratio = c.ms / one;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_numbers_are_found_like_gsm8k_scoring() {
        assert_eq!(final_number("so 3 + 4 = 7.").as_deref(), Some("7"));
        assert_eq!(
            final_number("It costs $1,250.00 in total").as_deref(),
            Some("1250")
        );
        assert_eq!(final_number("-5 degrees").as_deref(), Some("-5"));
        assert_eq!(final_number("no number"), None);
        assert_eq!(normalize_number(" 72").as_deref(), Some("72"));
    }
}
