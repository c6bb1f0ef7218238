//! The training loop: sample a record and a state, one packed forward, backward, clip, AdamW;
//! checkpoint every so often; save a Hugging Face folder at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::adamw::{grad_norm, AdamW, AdamWConfig};
use super::checkpoint;
use super::dataset::{self, Dataset};
use super::llama::TrainLlama;
use super::loss::{losses, LossKind, Sample, Weights};
use super::trajectory::Record;
use crate::decode::CancelToken;
use crate::engine::{Engine, LoadOptions};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::WeightPolicy;
use crate::tokenizer::Tokenizer;

/// Everything that defines a run; saved in each checkpoint so `--resume` needs only the folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// The model to start from (a GGUF file or a model folder).
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// The block size the records must have, if the caller cares.
    pub block: Option<usize>,
    /// Optimizer updates; `None` derives them from `epochs`.
    pub steps: Option<usize>,
    pub epochs: f64,
    pub lr: f64,
    /// Records per update (gradients accumulated).
    pub batch: usize,
    pub ar_weight: f64,
    pub label_smoothing: f64,
    pub loss: LossKind,
    /// Fraction of the steps spent warming the learning rate up.
    pub warmup: f64,
    /// Gradients are scaled down to this global L2 norm.
    pub clip: f64,
    pub weight_decay: f64,
    /// prompt + block tokens; longer prompts lose their oldest tokens.
    pub max_len: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
}

impl TrainSettings {
    pub fn new(model: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            model,
            data,
            out,
            block: None,
            steps: None,
            epochs: 1.0,
            lr: 2e-5,
            batch: 1,
            ar_weight: 10.0,
            label_smoothing: 0.1,
            loss: LossKind::Global,
            warmup: 0.03,
            clip: 1.0,
            weight_decay: 0.0,
            max_len: 256,
            checkpoint_every: 50,
            seed: 0,
        }
    }

    fn total_steps(&self, records: usize) -> usize {
        self.steps
            .unwrap_or_else(|| ((records as f64 * self.epochs) / self.batch as f64).ceil() as usize)
            .max(1)
    }

    /// Warmup, then cosine decay to zero.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warm = ((total as f64 * self.warmup).ceil() as usize).max(1);
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        let progress = (step - warm) as f64 / (total - warm).max(1) as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}

/// One optimizer update, as the CLI prints it and the app plots it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: usize,
    pub total_steps: usize,
    pub loss: f32,
    pub ar_loss: f32,
    pub consistency_loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub step_seconds: f64,
    pub forward_seconds: f64,
    pub backward_seconds: f64,
    pub optimizer_seconds: f64,
    pub eta_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        records: usize,
        block: usize,
        total_steps: usize,
        first_step: usize,
        trainable_parameters: usize,
    },
    Step(StepStats),
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Finished {
        model: PathBuf,
    },
    Cancelled {
        step: usize,
        checkpoint: Option<PathBuf>,
    },
}

/// What a checkpoint remembers besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub settings: TrainSettings,
    /// Updates completed.
    pub step: usize,
    pub total_steps: usize,
    pub history: Vec<StepStats>,
}

/// A run's end.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// The saved model folder, or `None` when cancelled.
    pub model: Option<PathBuf>,
    pub steps: usize,
    pub history: Vec<StepStats>,
}

/// A model ready to train, its tokenizer and its trajectory data.
pub struct Prepared {
    pub model: TrainLlama,
    pub tokenizer: Tokenizer,
    pub data: Dataset,
}

/// Loads the base model with float weights (dequantized from GGUF blocks when needed) and the
/// trajectory data, checking they belong together.
pub fn prepare(model_path: &Path, data: &Path, block: Option<usize>) -> Result<Prepared> {
    let engine = Engine::load(
        model_path,
        &LoadOptions {
            weights: WeightPolicy::Exact,
            ..Default::default()
        },
    )?;
    let cfg = engine.model().config().clone();
    let tensors = engine.model().hf_tensors().map_err(|e| {
        Error::Training(format!(
            "{} has no float path for its weights: {e}",
            model_path.display()
        ))
    })?;
    let tokenizer = engine.tokenizer().clone();
    let data = dataset::read(data, &tokenizer, cfg.vocab_size, block)?;
    let model = TrainLlama::new(cfg, tensors, &Device::Cpu)?;
    Ok(Prepared {
        model,
        tokenizer,
        data,
    })
}

/// Record and state of update `step`, micro-batch `b`: a function of the seed alone, so a
/// resumed run draws exactly what the uninterrupted one would have.
fn draw<'a>(
    records: &'a [Record],
    settings: &TrainSettings,
    step: usize,
    b: usize,
    max_len: usize,
) -> Sample<'a> {
    let k = step * settings.batch + b;
    let epoch = k / records.len();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        settings.seed ^ ((epoch as u64 + 1) * 0x2545_F491),
    ));
    let r = &records[order[k % records.len()]];
    let mut rng = StdRng::seed_from_u64(settings.seed ^ ((k as u64 + 1) * 0x9E37_79B9));
    let states = &r.answer_trajectory_ids;
    let i = rng.random_range(0..states.len() - 1);
    let target = match settings.loss {
        LossKind::Global => states.last().expect("two states or more"),
        LossKind::Local => &states[i + 1],
    };
    let prompt = r.prompt();
    let keep = max_len.saturating_sub(r.block()).max(1).min(prompt.len());
    Sample {
        prompt: &prompt[prompt.len() - keep..],
        state: &states[i],
        target,
        fixed_point: r.fixed_point(),
    }
}

/// Runs (or, with `resume`, continues) training and saves the model folder at `settings.out`.
pub fn train(
    settings: &TrainSettings,
    resume: bool,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome> {
    let out = &settings.out;
    let existing = checkpoint::latest(out)?;
    if !resume && out.exists() {
        return Err(Error::Training(format!(
            "{} already exists: choose another --out, or add --resume to continue its training",
            out.display()
        )));
    }
    if resume && existing.is_none() {
        return Err(Error::Training(format!(
            "{} holds no checkpoint to resume",
            out.display()
        )));
    }
    if settings.batch == 0 || settings.max_len < 2 || settings.checkpoint_every == 0 {
        return Err(Error::Training(
            "batch, max length and checkpoint interval must be positive".into(),
        ));
    }
    let Prepared {
        model,
        tokenizer,
        data,
    } = prepare(&settings.model, &settings.data, settings.block)?;
    if settings.max_len <= data.block {
        return Err(Error::Training(format!(
            "max length {} leaves no room for a prompt before a block of {}",
            settings.max_len, data.block
        )));
    }
    let params = model.params().to_vec();
    let mut adam = AdamW::new(
        &params,
        AdamWConfig {
            weight_decay: settings.weight_decay as f32,
            ..Default::default()
        },
    );
    let total = settings.total_steps(data.records.len());
    let mut state = TrainState {
        settings: settings.clone(),
        step: 0,
        total_steps: total,
        history: Vec::new(),
    };
    if let Some(path) = &existing {
        let saved: TrainState = checkpoint::load(path, &params, &mut adam)?;
        if saved.settings != *settings {
            return Err(Error::Training(format!(
                "the checkpoint in {} was made with other settings; resume without changing them",
                out.display()
            )));
        }
        adam.step = saved.step as u64;
        state = saved;
    } else {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    on_event(&TrainEvent::Started {
        records: data.records.len(),
        block: data.block,
        total_steps: total,
        first_step: state.step,
        trainable_parameters: params.iter().map(|(_, v)| v.elem_count()).sum(),
    });

    let weights = Weights {
        ar: settings.ar_weight,
        label_smoothing: settings.label_smoothing,
    };
    let t0 = Instant::now();
    let first = state.step;
    while state.step < total {
        if cancel.is_cancelled() {
            let path = checkpoint::save(out, state.step, &params, &adam, &state)?;
            on_event(&TrainEvent::Cancelled {
                step: state.step,
                checkpoint: Some(path.clone()),
            });
            return Ok(TrainOutcome {
                model: None,
                steps: state.step,
                history: state.history,
            });
        }
        let step = state.step;
        let lr = settings.lr_at(step, total);
        let stats = update(
            &model,
            &mut adam,
            &data.records,
            settings,
            step,
            lr,
            &weights,
        )?;
        state.step += 1;
        let done = state.step - first;
        let elapsed = t0.elapsed().as_secs_f64();
        let stats = StepStats {
            total_steps: total,
            eta_seconds: elapsed / done as f64 * (total - state.step) as f64,
            ..stats
        };
        on_event(&TrainEvent::Step(stats.clone()));
        state.history.push(stats);
        if state.step.is_multiple_of(settings.checkpoint_every) && state.step < total {
            let path = checkpoint::save(out, state.step, &params, &adam, &state)?;
            on_event(&TrainEvent::Checkpoint {
                step: state.step,
                path,
            });
        }
    }
    save_model(&model, &tokenizer, out, &state)?;
    let _ = std::fs::remove_dir_all(checkpoint::dir(out));
    on_event(&TrainEvent::Finished { model: out.clone() });
    Ok(TrainOutcome {
        model: Some(out.clone()),
        steps: state.step,
        history: state.history,
    })
}

/// One optimizer update: `batch` packed forwards and backwards, clipping, AdamW.
fn update(
    model: &TrainLlama,
    adam: &mut AdamW,
    records: &[Record],
    settings: &TrainSettings,
    step: usize,
    lr: f64,
    weights: &Weights,
) -> Result<StepStats> {
    let params = model.params();
    let t_step = Instant::now();
    let (mut fwd, mut bwd) = (0.0, 0.0);
    let (mut loss, mut ar, mut cons, mut tokens) = (0f32, 0f32, 0f32, 0usize);
    let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
    for b in 0..settings.batch {
        let sample = draw(records, settings, step, b, settings.max_len);
        let t = Instant::now();
        let l = losses(model, &sample, weights)?;
        let scaled = (l.total / settings.batch as f64)?;
        fwd += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut store = scaled.backward()?;
        for (slot, (_, v)) in grads.iter_mut().zip(params) {
            if let Some(g) = store.remove(v.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        bwd += t.elapsed().as_secs_f64();
        loss += scaled.to_scalar::<f32>()?;
        ar += l.ar / settings.batch as f32;
        cons += l.consistency / settings.batch as f32;
        tokens += l.tokens;
    }
    let t = Instant::now();
    let grads: Vec<Tensor> = grads
        .into_iter()
        .zip(params)
        .map(|(g, (_, v))| match g {
            Some(g) => Ok(g),
            // A weight the loss does not reach (none in a llama) gets a zero update.
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    let norm = grad_norm(&grads)?;
    if !norm.is_finite() {
        return Err(Error::Training(format!(
            "step {step}: the gradient is not finite (loss {loss}); try a lower --lr"
        )));
    }
    let scale = if norm > settings.clip as f32 {
        settings.clip as f32 / norm
    } else {
        1.0
    };
    adam.update(params, &grads, lr as f32, scale)?;
    let opt = t.elapsed().as_secs_f64();
    let secs = t_step.elapsed().as_secs_f64();
    Ok(StepStats {
        step,
        total_steps: 0,
        loss,
        ar_loss: ar,
        consistency_loss: cons,
        lr,
        grad_norm: norm,
        tokens,
        tokens_per_second: tokens as f64 / secs,
        step_seconds: secs,
        forward_seconds: fwd,
        backward_seconds: bwd,
        optimizer_seconds: opt,
        eta_seconds: 0.0,
    })
}

/// Writes the trained model as a Hugging Face folder that `fixpoint generate --model` loads.
fn save_model(
    model: &TrainLlama,
    tokenizer: &Tokenizer,
    out: &Path,
    state: &TrainState,
) -> Result<()> {
    crate::model::save_hf_tensors(model.config(), &model.hf_tensors(), out)?;
    tokenizer.save(out)?;
    write_atomic(
        &out.join("training.json"),
        serde_json::to_string_pretty(state)
            .expect("state serializes")
            .as_bytes(),
    )
}

/// Timing of a few updates on the longest records, without saving anything (`train --profile`).
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub steps: Vec<StepStats>,
    pub median_step_seconds: f64,
    pub median_forward_seconds: f64,
    pub median_backward_seconds: f64,
    pub median_optimizer_seconds: f64,
    pub tokens_per_step: usize,
    /// Peak resident memory of the process, from /proc (Linux).
    pub peak_rss_bytes: Option<u64>,
}

pub fn profile(settings: &TrainSettings, steps: usize) -> Result<Profile> {
    let Prepared {
        model, mut data, ..
    } = prepare(&settings.model, &settings.data, settings.block)?;
    // The longest prompts first: the measurement is of full-length sequences.
    data.records
        .sort_by_key(|r| std::cmp::Reverse(r.prompt().len()));
    data.records.truncate(steps.max(1));
    let params = model.params().to_vec();
    let mut adam = AdamW::new(&params, AdamWConfig::default());
    let weights = Weights {
        ar: settings.ar_weight,
        label_smoothing: settings.label_smoothing,
    };
    let mut stats = Vec::new();
    for step in 0..steps.max(1) {
        let s = update(
            &model,
            &mut adam,
            &data.records,
            settings,
            step,
            settings.lr,
            &weights,
        )?;
        stats.push(s);
    }
    let median = |f: fn(&StepStats) -> f64| {
        let mut v: Vec<f64> = stats.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Ok(Profile {
        median_step_seconds: median(|s| s.step_seconds),
        median_forward_seconds: median(|s| s.forward_seconds),
        median_backward_seconds: median(|s| s.backward_seconds),
        median_optimizer_seconds: median(|s| s.optimizer_seconds),
        tokens_per_step: stats[0].tokens,
        peak_rss_bytes: peak_rss(),
        steps: stats,
    })
}

fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
