//! A fine-tuning job, start to end, as the app's training tab runs it: measure the base model
//! on held-out prompts, collect Jacobi trajectories on the rest, consistency-train, measure the
//! trained model. Each job lives in its own folder, and `job.json` records every finished stage
//! and checkpoint, so a cancelled, failed or killed job continues where it stopped.
//!
//! ```text
//! prompts -> split -> baseline -> trajectories -> training -> after -> <models>/<name>/
//! <root>/<id>/job.json, trajectories.jsonl(.progress.json), run/checkpoints/...
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::trainer::{train, StepStats, TrainEvent, TrainSettings, TrainState};
use super::trajectory::{collect_all, CollectConfig, CollectProgress, FileSettings};
use super::TrajectoryWriter;
use crate::decode::{BlockSpec, CancelToken, DecodeOptions, Mode};
use crate::engine::{Engine, GenerateRequest, LoadOptions, Prompt};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// At least one prompt to train on and one held out to measure.
pub const MIN_PROMPTS: usize = 2;
/// Held-out prompts are a tenth of the prompts, at most this many (measuring is not free).
const MAX_HELD_OUT: usize = 20;
/// Answers kept for the before/after card.
const ANSWERS_KEPT: usize = 3;
/// Peak bytes per parameter while training (f32 weights, gradients, two AdamW moments and the
/// autograd graph): 4.38 GB measured for the 135M default model.
const TRAIN_BYTES_PER_PARAM: u64 = 32;
/// Disk per parameter: one checkpoint (weights and two moments, while the next is written the
/// previous one still exists) and the f32 model folder.
const DISK_BYTES_PER_PARAM: u64 = 4 * 3 * 2 + 4;

/// What a job may be told; the rest of the training settings keep their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSettings {
    /// Jacobi block size n of the trajectories, the training records and the measurements.
    pub block: usize,
    /// New tokens per training prompt when collecting trajectories.
    pub max_new: usize,
    /// New tokens per held-out prompt when measuring before and after.
    pub eval_tokens: usize,
    /// Optimizer updates; `None` makes one pass over the collected records.
    pub steps: Option<usize>,
    pub lr: f64,
    /// Longest prompt + block seen in training; longer prompts lose their oldest tokens.
    pub max_len: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
}

impl JobSettings {
    /// Defaults for a model of this size: the paper's block of 16 and, for small models, the
    /// learning rate that moved tokens per pass in our GSM8K run (1e-4; the paper's 2e-5 is for
    /// 7B models).
    pub fn recommended(parameters: usize, context: usize) -> Self {
        let small = parameters < 500_000_000;
        Self {
            block: 16,
            max_new: if small { 128 } else { 64 }.min(context / 4).max(16),
            eval_tokens: 128.min(context / 4).max(16),
            steps: None,
            lr: if small { 1e-4 } else { 2e-5 },
            max_len: 256.min(context),
            checkpoint_every: 25,
            seed: 0,
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(2..=64).contains(&self.block) {
            p.push(format!("block size {} is outside 2 to 64", self.block));
        }
        if self.max_new < self.block {
            p.push(format!(
                "{} new tokens per prompt is less than one block of {}",
                self.max_new, self.block
            ));
        }
        if self.eval_tokens == 0 {
            p.push("measuring needs at least one new token per prompt".into());
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            p.push(format!("learning rate {} is not in (0, 1]", self.lr));
        }
        if self.steps == Some(0) || self.checkpoint_every == 0 {
            p.push("updates and the checkpoint interval must be at least 1".into());
        }
        if self.max_len <= self.block {
            p.push(format!(
                "max length {} leaves no room for a prompt before a block of {}",
                self.max_len, self.block
            ));
        }
        p
    }
}

/// Where a job is; stages run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Baseline,
    Trajectories,
    Training,
    After,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, never started.
    Ready,
    /// Running now, or killed while running (the app tells which).
    Running,
    Cancelled,
    Failed,
    Done,
}

/// One held-out prompt's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub prompt: String,
    pub ar: String,
    pub jacobi: String,
}

/// Greedy AR against Jacobi on the held-out prompts, for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model: PathBuf,
    pub prompts: usize,
    pub block: usize,
    pub ar_tokens_per_second: f64,
    pub jacobi_tokens_per_second: f64,
    pub tokens_per_iteration: f64,
    /// Jacobi tokens/s over AR tokens/s of the same model.
    pub speedup: f64,
    /// Jacobi with `--block auto`, as chat decodes: tokens/s, and over AR tokens/s. The fixed
    /// block above measures what training changes; this measures what a user gets, which on a
    /// CPU is a smaller block. `None` in jobs measured before it was.
    #[serde(default)]
    pub auto_tokens_per_second: Option<f64>,
    #[serde(default)]
    pub auto_speedup: Option<f64>,
    /// Whether both Jacobi decoders' outputs were identical to AR's.
    pub identical_to_ar: bool,
    pub answers: Vec<Answer>,
}

/// What trajectory collection produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    pub prompts: usize,
    pub records: usize,
    pub tokens_per_pass: f64,
}

/// A job as `job.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The trained model's name in the model picker.
    pub name: String,
    pub created_unix: u64,
    /// The base model (GGUF file or model folder).
    pub model: PathBuf,
    pub settings: JobSettings,
    pub train_prompts: Vec<String>,
    pub held_out: Vec<String>,
    pub stage: Stage,
    pub status: Status,
    pub error: Option<String>,
    pub baseline: Option<Evaluation>,
    pub collected: Option<Collected>,
    /// Updates up to the last checkpoint (or all of them once trained): the loss curves.
    pub history: Vec<StepStats>,
    pub after: Option<Evaluation>,
    pub trained_model: Option<PathBuf>,
}

/// What a running job reports.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job as just saved: a stage began or ended, a checkpoint was taken, the job stopped.
    Saved {
        job: Box<Job>,
    },
    /// One more held-out prompt measured.
    Measuring {
        stage: Stage,
        done: usize,
        total: usize,
        eta_s: f64,
    },
    Collecting(CollectProgress),
    Training {
        event: TrainEvent,
    },
}

/// What a job would do with these prompts, and why it cannot, if it cannot.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub prompts: usize,
    pub train: usize,
    pub held_out: usize,
    pub settings: JobSettings,
    /// About `max_new / block` records per training prompt.
    pub estimated_updates: usize,
    /// The whole job on this machine's cores, from the model's size (see `estimate_seconds`).
    pub estimated_seconds: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Reasons the job would be refused; empty when it can start.
    pub problems: Vec<String>,
}

/// The jobs' folders and where finished models go.
#[derive(Debug, Clone)]
pub struct JobStore {
    root: PathBuf,
    models: PathBuf,
}

impl JobStore {
    pub fn new(root: PathBuf, models: PathBuf) -> Self {
        Self { root, models }
    }

    /// `<data dir>/training`, finished models into `<data dir>/trained`.
    pub fn at_default() -> Self {
        Self::new(
            crate::model_store::data_dir().join("training"),
            crate::model_store::trained_dir(),
        )
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Checks prompts and settings against the model and the machine; writes nothing but the
    /// (empty) jobs folder, whose free space it measures.
    pub fn plan(&self, engine: &Engine, prompts: &[String], settings: &JobSettings) -> Plan {
        let prompts = clean(prompts);
        let (train, held) = split_counts(prompts.len());
        let info = engine.info();
        let mut problems = settings.problems();
        if prompts.is_empty() {
            problems.push(
                "there are no prompts: paste some (one a line), pick conversations or give a file"
                    .into(),
            );
        } else if prompts.len() < MIN_PROMPTS {
            problems.push(format!(
                "{} prompt is not enough: training needs at least {MIN_PROMPTS}, one of them held out to measure the result",
                prompts.len()
            ));
        }
        let context = info.context_length;
        let longest_new = settings.max_new.max(settings.eval_tokens);
        let mut too_long = Vec::new();
        let mut prompt_tokens = 0;
        for (i, p) in prompts.iter().enumerate() {
            match engine.prompt_ids(&Prompt::user(p.clone())) {
                Ok(ids) if ids.len() + longest_new > context => {
                    too_long.push(format!("prompt {} ({} tokens)", i + 1, ids.len()))
                }
                Ok(ids) => prompt_tokens += ids.len(),
                Err(Error::PromptTooLong { tokens, .. }) => {
                    too_long.push(format!("prompt {} ({tokens} tokens)", i + 1))
                }
                Err(e) => problems.push(format!("prompt {}: {e}", i + 1)),
            }
        }
        if !too_long.is_empty() {
            let n = too_long.len();
            too_long.truncate(3);
            problems.push(format!(
                "{n} prompt(s) too long for the model's context of {context} tokens with {longest_new} new tokens: {}{}",
                too_long.join(", "),
                if n > 3 { ", ..." } else { "" }
            ));
        }
        let params = info.parameters as u64;
        let memory_bytes = params * TRAIN_BYTES_PER_PARAM;
        let disk_bytes = params * DISK_BYTES_PER_PARAM;
        if let Some(avail) = available_memory() {
            if memory_bytes > avail {
                problems.push(format!(
                    "training {} needs about {:.1} GB of memory and {:.1} GB are available",
                    info.path.display(),
                    memory_bytes as f64 / 1e9,
                    avail as f64 / 1e9
                ));
            }
        }
        match available_disk(&self.root) {
            Ok(avail) if disk_bytes > avail => problems.push(format!(
                "not enough disk space: training needs about {:.1} GB in {} and {:.1} GB are free",
                disk_bytes as f64 / 1e9,
                self.root.display(),
                avail as f64 / 1e9
            )),
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
        let estimated_updates = settings
            .steps
            .unwrap_or(train * settings.max_new.div_ceil(settings.block.max(1)));
        let mean_prompt = prompt_tokens as f64 / prompts.len().max(1) as f64;
        let estimated_seconds = estimate_seconds(
            params as f64,
            (train, held),
            mean_prompt,
            estimated_updates,
            settings,
        );
        Plan {
            prompts: prompts.len(),
            train,
            held_out: held,
            settings: settings.clone(),
            estimated_updates,
            estimated_seconds,
            memory_bytes,
            disk_bytes,
            problems,
        }
    }

    /// Checks everything ([`JobStore::plan`]) and writes the new job; nothing runs yet.
    pub fn create(
        &self,
        engine: &Engine,
        name: &str,
        prompts: &[String],
        settings: JobSettings,
    ) -> Result<Job> {
        let plan = self.plan(engine, prompts, &settings);
        if !plan.problems.is_empty() {
            return Err(Error::Training(plan.problems.join("; ")));
        }
        let name = model_name(name)?;
        let mut prompts = clean(prompts);
        // The held-out prompts are drawn at random, so a file sorted by topic is still measured
        // on a fair sample.
        prompts.shuffle(&mut StdRng::seed_from_u64(settings.seed));
        let held = prompts.split_off(prompts.len() - plan.held_out);
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        // Creating the folder claims the id, even against another process doing the same.
        let mut id = format!("job-{created_unix}");
        let mut k = 1;
        loop {
            match std::fs::create_dir(self.dir(&id)) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    k += 1;
                    id = format!("job-{created_unix}-{k}");
                }
                Err(e) => return Err(Error::io(self.dir(&id), e)),
            }
        }
        let job = Job {
            id,
            name,
            created_unix,
            model: engine.info().path.clone(),
            settings,
            train_prompts: prompts,
            held_out: held,
            stage: Stage::Baseline,
            status: Status::Ready,
            error: None,
            baseline: None,
            collected: None,
            history: Vec::new(),
            after: None,
            trained_model: None,
        };
        self.save(&job)?;
        Ok(job)
    }

    pub fn load(&self, id: &str) -> Result<Job> {
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(Error::Training(format!("`{id}` is not a job id")));
        }
        let path = self.dir(id).join("job.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut job: Job = serde_json::from_str(&text).map_err(|e| Error::BadData {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        // The folder is the job: a copied folder must not write into the original's.
        job.id = id.to_string();
        Ok(job)
    }

    /// Holds job `id` for this process until the returned file is dropped; another process
    /// (the app and `fixpoint tune`) gets a clear error instead of a second writer.
    pub fn lock(&self, id: &str) -> Result<std::fs::File> {
        use fs2::FileExt;
        let path = self.dir(id).join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.try_lock_exclusive()
            .map_err(|_| Error::Training(format!("job {id} is running in another process")))?;
        Ok(file)
    }

    /// Whether another process holds job `id` now.
    pub fn is_locked(&self, id: &str) -> bool {
        self.dir(id).join("lock").exists() && self.lock(id).is_err()
    }

    pub fn save(&self, job: &Job) -> Result<()> {
        let dir = self.dir(&job.id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_atomic(
            &dir.join("job.json"),
            serde_json::to_string_pretty(job)
                .expect("jobs serialize")
                .as_bytes(),
        )
    }

    /// Every readable job, newest first.
    pub fn list(&self) -> Vec<Job> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut jobs: Vec<Job> = entries
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                match self.load(&id) {
                    Ok(job) => Some(job),
                    Err(err) => {
                        tracing::warn!("skipping training job {id}: {err}");
                        None
                    }
                }
            })
            .collect();
        jobs.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(b.id.cmp(&a.id)));
        jobs
    }

    /// Removes a job's folder (trajectories, checkpoints); its finished model stays.
    pub fn delete(&self, id: &str) -> Result<()> {
        let job = self.load(id)?;
        let _held = self.lock(id)?;
        let dir = self.dir(&job.id);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
    }

    /// Renames a finished job's model (its folder in the models directory).
    pub fn rename_model(&self, id: &str, name: &str) -> Result<Job> {
        let mut job = self.load(id)?;
        let _held = self.lock(id)?;
        let Some(old) = job.trained_model.clone() else {
            return Err(Error::Training(format!(
                "job {id} has not produced a model yet"
            )));
        };
        let name = model_name(name)?;
        let new = self.models.join(&name);
        if new != old {
            if new.exists() {
                return Err(Error::Training(format!(
                    "a model named `{name}` already exists"
                )));
            }
            std::fs::rename(&old, &new).map_err(|e| Error::io(&old, e))?;
        }
        for eval in job.after.iter_mut() {
            eval.model = new.clone();
        }
        job.name = name;
        job.trained_model = Some(new);
        self.save(&job)?;
        Ok(job)
    }

    /// Runs job `id` from where it stopped until it is done, cancelled or fails. Stage errors
    /// are recorded in the returned job (status `Failed`, `error`); `Err` means the job itself
    /// could not be read or saved.
    pub fn run(
        &self,
        id: &str,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<Job> {
        let job = self.load(id)?;
        if job.status == Status::Done {
            return Ok(job);
        }
        let _held = self.lock(id)?;
        // Read again under the lock: another process may have moved it on meanwhile.
        let mut job = self.load(id)?;
        job.status = Status::Running;
        job.error = None;
        self.save_and_report(&job, on_event)?;
        let outcome = self.advance(&mut job, cancel, on_event);
        job.status = match &outcome {
            Ok(()) if job.stage == Stage::Done => Status::Done,
            Ok(()) => Status::Cancelled,
            Err(e) => {
                job.error = Some(e.to_string());
                Status::Failed
            }
        };
        self.save_and_report(&job, on_event)?;
        Ok(job)
    }

    fn save_and_report(&self, job: &Job, on_event: &mut dyn FnMut(&JobEvent)) -> Result<()> {
        self.save(job)?;
        on_event(&JobEvent::Saved {
            job: Box::new(job.clone()),
        });
        Ok(())
    }

    /// Runs stages until done (`Ok` with stage `Done`) or cancelled (`Ok` before it).
    fn advance(
        &self,
        job: &mut Job,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<()> {
        let dir = self.dir(&job.id);
        let trajectories = dir.join("trajectories.jsonl");
        let run_dir = dir.join("run");
        let mut base: Option<Engine> = None;
        loop {
            match job.stage {
                Stage::Baseline => {
                    let engine = load(&mut base, &job.model)?;
                    let Some(e) = evaluate(engine, job, Stage::Baseline, cancel, on_event)? else {
                        return Ok(());
                    };
                    job.baseline = Some(e);
                    job.stage = Stage::Trajectories;
                }
                Stage::Trajectories => {
                    let engine = load(&mut base, &job.model)?;
                    let Some(c) = collect(engine, job, &trajectories, cancel, on_event)? else {
                        return Ok(());
                    };
                    if c.records == 0 {
                        return Err(Error::Training(format!(
                            "the {} training prompts gave no usable trajectory (every block was repetitive); use other prompts",
                            c.prompts
                        )));
                    }
                    job.collected = Some(c);
                    job.stage = Stage::Training;
                }
                Stage::Training => {
                    base = None; // free the inference copy before the float one is loaded
                                 // A run killed after the model was written (or moved) is not trained again.
                    let moved = job
                        .trained_model
                        .as_deref()
                        .is_some_and(|t| is_model(t) && !run_dir.exists());
                    if !moved {
                        if !is_model(&run_dir)
                            && !self.fine_tune(job, &trajectories, &run_dir, cancel, on_event)?
                        {
                            return Ok(());
                        }
                        // The destination is saved before the move, so a kill in between
                        // finds it again.
                        let target = match &job.trained_model {
                            Some(t) if !t.exists() => t.clone(),
                            _ => unique_dir(&self.models, &job.name),
                        };
                        job.name = target
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        job.trained_model = Some(target.clone());
                        self.save(job)?;
                        std::fs::create_dir_all(&self.models)
                            .map_err(|e| Error::io(&self.models, e))?;
                        std::fs::rename(&run_dir, &target).map_err(|e| Error::io(&target, e))?;
                    }
                    job.stage = Stage::After;
                }
                Stage::After => {
                    let path = job.trained_model.clone().ok_or_else(|| {
                        Error::Training("the job lost track of its trained model".into())
                    })?;
                    let engine = Engine::load(&path, &LoadOptions::default())?;
                    let Some(e) = evaluate(&engine, job, Stage::After, cancel, on_event)? else {
                        return Ok(());
                    };
                    job.after = Some(e);
                    job.stage = Stage::Done;
                }
                Stage::Done => return Ok(()),
            }
            self.save_and_report(job, on_event)?;
        }
    }

    /// Trains (or resumes training) into `run_dir`; `false` when cancelled.
    fn fine_tune(
        &self,
        job: &mut Job,
        data: &Path,
        run_dir: &Path,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(&JobEvent),
    ) -> Result<bool> {
        let s = &job.settings;
        let mut settings = TrainSettings::new(job.model.clone(), data.into(), run_dir.into());
        settings.block = Some(s.block);
        settings.steps = s.steps;
        settings.lr = s.lr;
        settings.max_len = s.max_len;
        settings.checkpoint_every = s.checkpoint_every;
        settings.seed = s.seed;
        let latest = checkpoint::latest(run_dir)?;
        match &latest {
            // The checkpoint's curve is the truth: job.json may have missed the last one.
            Some(path) => job.history = checkpoint::read_state::<TrainState>(path)?.history,
            None if run_dir.exists() => {
                // Killed before its first checkpoint: nothing in it is worth keeping.
                std::fs::remove_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
            }
            None => job.history.clear(),
        }
        let outcome = train(&settings, latest.is_some(), cancel, &mut |event| {
            match event {
                TrainEvent::Started { first_step, .. } => job.history.truncate(*first_step),
                TrainEvent::Step(s) => job.history.push(s.clone()),
                // The job remembers the curve up to each checkpoint, as the checkpoint does. A
                // failed save costs only the display until then: resume reads the checkpoint.
                TrainEvent::Checkpoint { .. } | TrainEvent::Cancelled { .. } => {
                    if let Err(e) = self.save(job) {
                        tracing::warn!("could not save job {}: {e}", job.id);
                    }
                }
                TrainEvent::Finished { .. } => {}
            }
            on_event(&JobEvent::Training {
                event: event.clone(),
            });
        })?;
        Ok(outcome.model.is_some())
    }
}

/// A complete model folder from training (`training.json` is written last).
fn is_model(dir: &Path) -> bool {
    dir.join("training.json").exists()
}

fn load<'a>(slot: &'a mut Option<Engine>, path: &Path) -> Result<&'a Engine> {
    if slot.is_none() {
        *slot = Some(Engine::load(path, &LoadOptions::default())?);
    }
    Ok(slot.as_ref().expect("just loaded"))
}

/// Greedy AR and Jacobi answers to the held-out prompts; `None` when cancelled.
fn evaluate(
    engine: &Engine,
    job: &Job,
    stage: Stage,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<Option<Evaluation>> {
    let s = &job.settings;
    let (mut ar_tokens, mut ar_ms, mut jac_tokens, mut jac_ms, mut passes) = (0, 0.0, 0, 0.0, 0);
    let (mut auto_tokens, mut auto_ms) = (0, 0.0);
    let mut identical = true;
    let mut answers = Vec::new();
    let t0 = Instant::now();
    let total = job.held_out.len();
    on_event(&JobEvent::Measuring {
        stage,
        done: 0,
        total,
        eta_s: 0.0,
    });
    for (i, prompt) in job.held_out.iter().enumerate() {
        let run = |mode| {
            engine.generate(
                &GenerateRequest {
                    prompt: Prompt::user(prompt.clone()),
                    options: DecodeOptions {
                        mode,
                        max_tokens: s.eval_tokens,
                        ..Default::default()
                    },
                },
                cancel,
                |_| {},
            )
        };
        let ar = run(Mode::Autoregressive)?;
        let jacobi = run(Mode::Jacobi(s.block))?;
        let auto = run(BlockSpec::Auto.mode())?;
        if cancel.is_cancelled() {
            return Ok(None);
        }
        ar_tokens += ar.generated_tokens;
        ar_ms += ar.decode_ms;
        jac_tokens += jacobi.generated_tokens;
        jac_ms += jacobi.decode_ms;
        // The first token comes from prefill; tokens per pass counts the rest.
        passes += jacobi.forward_passes;
        auto_tokens += auto.generated_tokens;
        auto_ms += auto.decode_ms;
        identical &= ar.token_ids == jacobi.token_ids && ar.token_ids == auto.token_ids;
        if answers.len() < ANSWERS_KEPT {
            answers.push(Answer {
                prompt: prompt.clone(),
                ar: ar.text,
                jacobi: jacobi.text,
            });
        }
        let elapsed = t0.elapsed().as_secs_f64();
        on_event(&JobEvent::Measuring {
            stage,
            done: i + 1,
            total,
            eta_s: elapsed / (i + 1) as f64 * (total - i - 1) as f64,
        });
    }
    let per_second = |tokens: usize, ms: f64| tokens as f64 / (ms / 1e3).max(1e-9);
    let ar_tps = per_second(ar_tokens, ar_ms);
    let jac_tps = per_second(jac_tokens, jac_ms);
    let auto_tps = per_second(auto_tokens, auto_ms);
    Ok(Some(Evaluation {
        model: engine.info().path.clone(),
        prompts: total,
        block: s.block,
        ar_tokens_per_second: ar_tps,
        jacobi_tokens_per_second: jac_tps,
        tokens_per_iteration: jac_tokens.saturating_sub(total) as f64 / passes.max(1) as f64,
        speedup: jac_tps / ar_tps.max(1e-9),
        auto_tokens_per_second: Some(auto_tps),
        auto_speedup: Some(auto_tps / ar_tps.max(1e-9)),
        identical_to_ar: identical,
        answers,
    }))
}

/// Collects (or continues collecting) the training prompts' trajectories; `None` when cancelled.
fn collect(
    engine: &Engine,
    job: &Job,
    out: &Path,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<Option<Collected>> {
    let prompts = job
        .train_prompts
        .iter()
        .map(|p| engine.prompt_ids(&Prompt::user(p.clone())))
        .collect::<Result<Vec<_>>>()?;
    let settings = FileSettings {
        model: job.model.display().to_string(),
        prompts: format!("training job {}", job.id),
        skip: 0,
        collect: CollectConfig {
            block: job.settings.block,
            max_new: job.settings.max_new,
            seed: job.settings.seed,
        },
        tokenizer: engine.tokenizer().fingerprint(),
    };
    let mut writer = TrajectoryWriter::open(out, settings)?;
    collect_all(
        engine.model(),
        &prompts,
        &mut writer,
        engine.tokenizer().stop_ids(),
        cancel,
        &mut |p| on_event(&JobEvent::Collecting(p.clone())),
    )?;
    let p = &writer.progress;
    if p.prompts_done < prompts.len() {
        return Ok(None);
    }
    Ok(Some(Collected {
        prompts: p.prompts_done,
        records: p.records,
        tokens_per_pass: p.tokens as f64 / p.passes.max(1) as f64,
    }))
}

/// Trimmed, non-empty, without repeats (a repeated prompt would be both trained on and held out).
fn clean(prompts: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    prompts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty() && seen.insert(p.to_string()))
        .map(str::to_string)
        .collect()
}

/// (training, held out) counts for `n` prompts.
fn split_counts(n: usize) -> (usize, usize) {
    if n < MIN_PROMPTS {
        return (n, 0);
    }
    let held = (n / 10).clamp(1, MAX_HELD_OUT);
    (n - held, held)
}

/// A model name that is also a safe folder name.
pub fn model_name(name: &str) -> Result<String> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(name_char);
    if !ok {
        return Err(Error::Training(format!(
            "`{name}` cannot be a model name: use letters, digits, spaces, - _ . + (up to 100, not starting with a dot)"
        )));
    }
    Ok(name.to_string())
}

/// `dir/name`, or `dir/name-2`, ... if taken.
fn unique_dir(dir: &Path, name: &str) -> PathBuf {
    let mut path = dir.join(name);
    let mut k = 1;
    while path.exists() {
        k += 1;
        path = dir.join(format!("{name}-{k}"));
    }
    path
}

/// A default name for a model trained from `base`.
pub fn default_name(base: &Path) -> String {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let stem: String = stem
        .chars()
        .map(|c| if name_char(c) && c != '.' { c } else { '-' })
        .collect();
    format!("{stem}-cllm")
}

fn name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '+')
}

/// Core-seconds per parameter per token of one decoding step, and per parameter per packed
/// token of one training update, measured with the 135M default model on this project's 2-core
/// machine (55 tokens/s; 3 s per update of about 180 tokens).
const DECODE_CORE_S: f64 = 2.7e-10;
const TRAIN_CORE_S: f64 = 2.5e-10;
/// A Jacobi pass over a block costs about this many one-token passes on a CPU (BENCHMARKS.md).
const BLOCK_PASS_COST: f64 = 2.2;

/// Rough duration of a job: measuring (AR + Jacobi on the held-out prompts, twice),
/// collecting (Jacobi on the training prompts) and training.
fn estimate_seconds(
    params: f64,
    (train, held): (usize, usize),
    mean_prompt: f64,
    updates: usize,
    s: &JobSettings,
) -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let token = DECODE_CORE_S * params / cores;
    let measure = 2.0 * held as f64 * s.eval_tokens as f64 * token * (1.0 + BLOCK_PASS_COST);
    let collect = train as f64 * s.max_new as f64 * token * BLOCK_PASS_COST;
    let packed = (mean_prompt + 2.0 * s.block as f64 + 1.0).min(s.max_len as f64 + s.block as f64);
    let training = updates as f64 * TRAIN_CORE_S * params * packed / cores;
    measure + collect + training
}

/// Memory the system could give us now (Linux `MemAvailable`); `None` where unknown.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free space for a job folder under `root` (created if needed).
fn available_disk(root: &Path) -> Result<u64> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    fs2::available_space(root).map_err(|e| Error::io(root, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_is_a_tenth_with_at_least_one_each_side() {
        assert_eq!(split_counts(0), (0, 0));
        assert_eq!(split_counts(1), (1, 0));
        assert_eq!(split_counts(2), (1, 1));
        assert_eq!(split_counts(25), (23, 2));
        assert_eq!(split_counts(1000), (980, 20));
    }

    #[test]
    fn names_are_safe_folder_names() {
        assert!(model_name("SmolLM2 fast v2").is_ok());
        for bad in ["", "  ", "../x", "a/b", ".hidden", "a\\b"] {
            assert!(model_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            default_name(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "SmolLM2-135M-Instruct-Q4_1-cllm"
        );
    }

    #[test]
    fn evaluations_saved_before_auto_was_measured_still_load() {
        let old = r#"{"model":"m.gguf","prompts":2,"block":16,"ar_tokens_per_second":100.0,
            "jacobi_tokens_per_second":40.0,"tokens_per_iteration":1.1,"speedup":0.4,
            "identical_to_ar":true,"answers":[]}"#;
        let e: Evaluation = serde_json::from_str(old).unwrap();
        assert_eq!(
            (e.block, e.auto_tokens_per_second, e.auto_speedup),
            (16, None, None)
        );
    }

    #[test]
    fn prompts_are_trimmed_and_deduplicated() {
        let p: Vec<String> = ["a", " a ", "", "b", "  "]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(clean(&p), vec!["a".to_string(), "b".to_string()]);
    }
}
