//! `fixpoint trajectories` and `fixpoint train`: parse, call `fixpoint::train`, show progress.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use fixpoint::train::{self, CollectConfig, FileSettings, LossKind, TrainEvent, TrainSettings};
use fixpoint::{CancelToken, Prompt};
use indicatif::{ProgressBar, ProgressStyle};

use super::{load, ModelArgs};

#[derive(Args)]
pub struct TrajectoriesArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompts: JSONL with a `question`, `prompt` or `text` field, or plain text, one a line.
    #[arg(long)]
    prompts: PathBuf,
    /// The JSONL file to write (continued if an earlier run with the same settings stopped).
    #[arg(long)]
    out: PathBuf,
    /// Jacobi block size n.
    #[arg(long, default_value_t = 16)]
    block: usize,
    /// New tokens per prompt (rounded up to whole blocks).
    #[arg(long, default_value_t = 256)]
    max_new: usize,
    /// Leave out the first K prompts (held out for evaluation).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Use at most this many prompts after the skipped ones.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON line of progress per prompt on stdout instead of a progress bar.
    #[arg(long)]
    json_progress: bool,
}

pub fn trajectories(args: TrajectoriesArgs) -> Result<()> {
    if args.block == 0 || args.max_new == 0 {
        bail!("--block and --max-new must be positive");
    }
    let all = fixpoint::bench::read_prompts(&args.prompts, args.limit.map(|l| l + args.skip))?;
    if all.len() <= args.skip {
        bail!(
            "{} holds {} prompts, all skipped by --skip {}",
            args.prompts.display(),
            all.len(),
            args.skip
        );
    }
    let engine = load(&args.model)?;
    let prompts = all[args.skip..]
        .iter()
        .map(|p| engine.prompt_ids(&Prompt::user(p.clone())))
        .collect::<fixpoint::Result<Vec<_>>>()?;
    let settings = FileSettings {
        model: engine.info().path.display().to_string(),
        prompts: args.prompts.display().to_string(),
        skip: args.skip,
        collect: CollectConfig {
            block: args.block,
            max_new: args.max_new,
            seed: args.seed,
        },
        tokenizer: engine.tokenizer().fingerprint(),
    };
    let mut writer = train::TrajectoryWriter::open(&args.out, settings)?;
    let cancel = cancel_on_ctrl_c();
    let bar = (!args.json_progress).then(|| {
        let bar = ProgressBar::new(prompts.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} prompts {pos}/{len} [{bar:30}] {elapsed} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let done_before = writer.progress.prompts_done;
    if done_before > 0 {
        eprintln!(
            "continuing {}: {done_before} of {} prompts already done",
            args.out.display(),
            prompts.len()
        );
    }
    if let Some(bar) = &bar {
        bar.set_position(done_before as u64);
        bar.reset_eta();
    }
    train::collect_all(
        engine.model(),
        &prompts,
        &mut writer,
        engine.tokenizer().stop_ids(),
        &cancel,
        &mut |p| match &bar {
            Some(bar) => {
                bar.set_position(p.prompts_done as u64);
                bar.set_message(format!(
                    "{} records, {:.2} tokens/pass",
                    p.records, p.tokens_per_pass
                ));
            }
            None => println!("{}", serde_json::to_string(p).expect("progress serializes")),
        },
    )?;
    if let Some(bar) = bar {
        bar.finish();
    }
    let p = &writer.progress;
    eprintln!(
        "{}: {} records from {} prompts ({} blocks dropped), {:.2} tokens per pass{}",
        args.out.display(),
        p.records,
        p.prompts_done,
        p.dropped,
        p.tokens as f64 / p.passes.max(1) as f64,
        if cancel.is_cancelled() {
            "; interrupted: run the same command again to continue"
        } else {
            ""
        }
    );
    Ok(())
}

#[derive(Args)]
pub struct TrainArgs {
    /// The model to fine-tune: a .gguf file or a model folder (default: the default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Trajectories from `fixpoint trajectories`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The model folder to create (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    out: PathBuf,
    /// Refuse records whose block size is not this.
    #[arg(long)]
    block: Option<usize>,
    /// Optimizer updates (default: one epoch of the data).
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    #[arg(long)]
    epochs: Option<f64>,
    /// Peak learning rate (default 2e-5, as the reference).
    #[arg(long)]
    lr: Option<f64>,
    /// Records per update (default 1).
    #[arg(long)]
    batch: Option<usize>,
    /// Weight of the AR loss against the consistency loss (default 10).
    #[arg(long)]
    ar_weight: Option<f64>,
    /// global (state -> fixed point) or local (state -> next state).
    #[arg(long)]
    loss: Option<LossKind>,
    /// Longest prompt + block in tokens (default 256); longer prompts lose their oldest tokens.
    #[arg(long)]
    max_len: Option<usize>,
    /// Save a checkpoint every N updates (default 50).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Fraction of the updates spent warming up the learning rate (default 0.03).
    #[arg(long)]
    warmup: Option<f64>,
    /// Clip the gradient to this global norm (default 1.0).
    #[arg(long)]
    clip: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the training in --out from its last checkpoint, with its saved settings.
    #[arg(long)]
    resume: bool,
    /// One JSON line per event (start, step, checkpoint, end) on stdout.
    #[arg(long)]
    json_progress: bool,
    /// Time N updates on the longest records and report speed and peak memory; saves nothing.
    #[arg(long, value_name = "N")]
    profile: Option<usize>,
}

impl TrainArgs {
    fn given_settings(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut check = |set: bool, name: &'static str| {
            if set {
                given.push(name)
            }
        };
        check(self.model.is_some(), "--model");
        check(self.data.is_some(), "--data");
        check(self.block.is_some(), "--block");
        check(self.steps.is_some(), "--steps");
        check(self.epochs.is_some(), "--epochs");
        check(self.lr.is_some(), "--lr");
        check(self.batch.is_some(), "--batch");
        check(self.ar_weight.is_some(), "--ar-weight");
        check(self.loss.is_some(), "--loss");
        check(self.max_len.is_some(), "--max-len");
        check(self.checkpoint_every.is_some(), "--checkpoint-every");
        check(self.warmup.is_some(), "--warmup");
        check(self.clip.is_some(), "--clip");
        check(self.seed.is_some(), "--seed");
        given
    }

    fn settings(&self) -> Result<TrainSettings> {
        let Some(data) = self.data.clone() else {
            bail!("--data is required (a trajectory file from `fixpoint trajectories`)");
        };
        let model = match &self.model {
            Some(m) => m.clone(),
            None => fixpoint::model_store::default_model_path(),
        };
        let mut s = TrainSettings::new(model, data, self.out.clone());
        s.steps = self.steps;
        s.block = self.block;
        s.epochs = self.epochs.unwrap_or(s.epochs);
        s.lr = self.lr.unwrap_or(s.lr);
        s.batch = self.batch.unwrap_or(s.batch);
        s.ar_weight = self.ar_weight.unwrap_or(s.ar_weight);
        s.loss = self.loss.unwrap_or(s.loss);
        s.max_len = self.max_len.unwrap_or(s.max_len);
        s.checkpoint_every = self.checkpoint_every.unwrap_or(s.checkpoint_every);
        s.warmup = self.warmup.unwrap_or(s.warmup);
        s.clip = self.clip.unwrap_or(s.clip);
        s.seed = self.seed.unwrap_or(s.seed);
        // Written so that NaN fails every check.
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(s.lr) || !positive(s.epochs) || !(0.0..1.0).contains(&s.warmup) {
            bail!("--lr and --epochs must be positive and --warmup in [0, 1)");
        }
        if s.clip <= 0.0 || s.ar_weight < 0.0 || s.steps == Some(0) {
            bail!("--clip and --steps must be positive and --ar-weight not negative");
        }
        Ok(s)
    }
}

/// candle's element-wise ops spin a second pool beside the matmul's; on two cores the two
/// fight (a step measured 4.39 s with one element-wise thread, 4.77 s with two). Called before
/// any candle op, while the process has one thread.
fn one_elementwise_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

pub fn train(args: TrainArgs) -> Result<()> {
    one_elementwise_thread();
    if let Some(n) = args.profile {
        let s = args.settings()?;
        let p = train::profile(&s, n)?;
        println!("{}", serde_json::to_string_pretty(&p)?);
        eprintln!(
            "median update over {} steps of {} tokens: {:.2} s (forward {:.2}, backward {:.2}, optimizer {:.2}); peak RSS {}",
            p.steps.len(),
            p.tokens_per_step,
            p.median_step_seconds,
            p.median_forward_seconds,
            p.median_backward_seconds,
            p.median_optimizer_seconds,
            p.peak_rss_bytes
                .map(|b| format!("{:.2} GB", b as f64 / 1e9))
                .unwrap_or_else(|| "unknown".into())
        );
        return Ok(());
    }
    let settings = if args.resume {
        let given = args.given_settings();
        if !given.is_empty() {
            bail!(
                "--resume continues with the settings saved in {}; drop {}",
                args.out.display(),
                given.join(", ")
            );
        }
        let Some(ckpt) = train::checkpoint::latest(&args.out)? else {
            bail!("{} holds no checkpoint to resume", args.out.display());
        };
        let state: train::trainer::TrainState = train::checkpoint::read_state(&ckpt)?;
        state.settings
    } else {
        args.settings()?
    };
    let cancel = cancel_on_ctrl_c();
    let mut bar: Option<ProgressBar> = None;
    let json = args.json_progress;
    let outcome = train::train(&settings, args.resume, &cancel, &mut |e| {
        if json {
            println!("{}", serde_json::to_string(e).expect("events serialize"));
            return;
        }
        match e {
            TrainEvent::Started {
                records,
                block,
                total_steps,
                first_step,
                trainable_parameters,
            } => {
                eprintln!(
                    "{records} records, block {block}, {total_steps} updates, {:.1}M trainable parameters{}",
                    *trainable_parameters as f64 / 1e6,
                    if *first_step > 0 {
                        format!(", resuming at update {first_step}")
                    } else {
                        String::new()
                    }
                );
                let b = ProgressBar::new(*total_steps as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "update {pos}/{len} [{bar:30}] {elapsed} ETA {eta} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_position(*first_step as u64);
                b.reset_eta();
                bar = Some(b);
            }
            TrainEvent::Step(s) => {
                if let Some(b) = &bar {
                    b.set_position(s.step as u64 + 1);
                    b.set_message(format!(
                        "loss {:.3} (ar {:.3}, consistency {:.3}) {:.0} tokens/s",
                        s.loss, s.ar_loss, s.consistency_loss, s.tokens_per_second
                    ));
                }
            }
            TrainEvent::Checkpoint { step, path } => {
                if let Some(b) = &bar {
                    b.println(format!("checkpoint at update {step}: {}", path.display()));
                }
            }
            TrainEvent::Finished { model } => {
                if let Some(b) = &bar {
                    b.finish();
                }
                eprintln!("saved {}", model.display());
            }
            TrainEvent::Cancelled { step, checkpoint } => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                eprintln!(
                    "stopped at update {step}; checkpoint {}; continue with --resume --out {}",
                    checkpoint
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    settings.out.display()
                );
            }
        }
    })?;
    if outcome.model.is_none() {
        std::process::exit(130);
    }
    Ok(())
}

/// The first Ctrl-C asks the running job to stop at a safe point; the second exits at once.
fn cancel_on_ctrl_c() -> CancelToken {
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("\nstopping at the next safe point (Ctrl-C again to quit now)");
        c.cancel();
    });
    cancel
}

#[derive(Args)]
pub struct TuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompts: JSONL with a `question`, `prompt` or `text` field, or plain text, one a line.
    #[arg(long, required_unless_present_any = ["resume", "list"])]
    prompts: Option<PathBuf>,
    /// Use at most this many prompts (a tenth of them, up to 20, is held out to measure).
    #[arg(long)]
    limit: Option<usize>,
    /// The trained model's name in the models folder (default: <base>-cllm).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    block: Option<usize>,
    /// New tokens per training prompt.
    #[arg(long)]
    max_new: Option<usize>,
    /// New tokens per held-out prompt when measuring.
    #[arg(long)]
    eval_tokens: Option<usize>,
    /// Optimizer updates (default: one pass over the collected records).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// Continue a stopped job (its id from --list).
    #[arg(long, conflicts_with_all = ["prompts", "list"])]
    resume: Option<String>,
    /// Show the training jobs in the data directory.
    #[arg(long)]
    list: bool,
    /// One JSON line per job event on stdout instead of progress lines.
    #[arg(long)]
    json_progress: bool,
}

/// `fixpoint tune`: the app's one-click job (measure, collect, train, measure) in a terminal.
pub fn tune(args: TuneArgs) -> Result<()> {
    use fixpoint::train::job::{JobEvent, JobSettings, JobStore, Status};
    let store = JobStore::at_default();
    if args.list {
        for j in store.list() {
            println!(
                "{}  {:<32} {:?} at {:?}{}",
                j.id,
                j.name,
                j.status,
                j.stage,
                j.error.map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
        return Ok(());
    }
    one_elementwise_thread();
    let id = match &args.resume {
        Some(id) => id.clone(),
        None => {
            let path = args.prompts.as_ref().expect("clap requires --prompts");
            let prompts = fixpoint::bench::read_prompts(path, args.limit)?;
            let engine = load(&args.model)?;
            let info = engine.info();
            let mut s = JobSettings::recommended(info.parameters, info.context_length);
            s.block = args.block.unwrap_or(s.block);
            s.max_new = args.max_new.unwrap_or(s.max_new);
            s.eval_tokens = args.eval_tokens.unwrap_or(s.eval_tokens);
            s.steps = args.steps.or(s.steps);
            s.lr = args.lr.unwrap_or(s.lr);
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| fixpoint::train::job::default_name(&info.path));
            let job = store.create(&engine, &name, &prompts, s)?;
            eprintln!(
                "job {}: {} prompts to train on, {} held out; continue it with `fixpoint tune --resume {}`",
                job.id,
                job.train_prompts.len(),
                job.held_out.len(),
                job.id
            );
            job.id
        }
    };
    let cancel = cancel_on_ctrl_c();
    let json = args.json_progress;
    let mut last_line = std::time::Instant::now();
    let job = store.run(&id, &cancel, &mut |e| {
        if json {
            println!("{}", serde_json::to_string(e).expect("events serialize"));
            return;
        }
        // One line at most every 2 seconds, besides stage changes.
        let due = last_line.elapsed().as_secs_f64() >= 2.0;
        match e {
            JobEvent::Saved { job } => eprintln!("[{:?}] {:?}", job.stage, job.status),
            JobEvent::Measuring {
                stage, done, total, ..
            } if due || done == total => {
                eprintln!("  measuring ({stage:?}): {done}/{total} held-out prompts");
                last_line = std::time::Instant::now();
            }
            JobEvent::Collecting(p) if due || p.prompts_done == p.prompts_total => {
                eprintln!(
                    "  trajectories: {}/{} prompts, {} records, ETA {:.0} s",
                    p.prompts_done, p.prompts_total, p.records, p.eta_s
                );
                last_line = std::time::Instant::now();
            }
            JobEvent::Training {
                event: TrainEvent::Step(s),
            } if due || s.step + 1 == s.total_steps => {
                eprintln!(
                    "  update {}/{}: loss {:.3} (ar {:.3}, consistency {:.3}), ETA {:.0} s",
                    s.step + 1,
                    s.total_steps,
                    s.loss,
                    s.ar_loss,
                    s.consistency_loss,
                    s.eta_seconds
                );
                last_line = std::time::Instant::now();
            }
            _ => {}
        }
    })?;
    for (label, e) in [("before", &job.baseline), ("after", &job.after)] {
        if let Some(e) = e {
            let auto = match (e.auto_tokens_per_second, e.auto_speedup) {
                (Some(tps), Some(x)) => format!(", block auto {tps:.1} tokens/s ({x:.2}x)"),
                _ => String::new(),
            };
            eprintln!(
                "{label}: {:.3} tokens per pass (block {}), Jacobi {:.1} tokens/s, AR {:.1} tokens/s, speedup {:.2}{auto}, identical to AR: {}",
                e.tokens_per_iteration,
                e.block,
                e.jacobi_tokens_per_second,
                e.ar_tokens_per_second,
                e.speedup,
                e.identical_to_ar
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string(&job)?);
    }
    match job.status {
        Status::Done => {
            eprintln!("model: {}", job.trained_model.unwrap_or_default().display());
            Ok(())
        }
        Status::Failed => bail!(
            "job {} failed: {}; fix it and run `fixpoint tune --resume {}`",
            job.id,
            job.error.unwrap_or_default(),
            job.id
        ),
        _ => {
            eprintln!("stopped; continue with `fixpoint tune --resume {}`", job.id);
            std::process::exit(130)
        }
    }
}
