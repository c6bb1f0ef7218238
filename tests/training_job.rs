//! The app's one-click training job (`fixpoint::train::job`) on a tiny model, without a window:
//! a full run, cancel and resume in every long stage, a failure that keeps what was saved, the
//! refusals before anything starts, and renaming the result.

use std::path::{Path, PathBuf};

use fixpoint::testing::write_tiny_gguf;
use fixpoint::train::job::{Job, JobEvent, JobSettings, JobStore, Stage, Status};
use fixpoint::train::TrainEvent;
use fixpoint::{
    CancelToken, DecodeOptions, Engine, GenerateRequest, LoadOptions, Message, Mode, Prompt,
};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    store: JobStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model = root.join("tiny.gguf");
        write_tiny_gguf(&model).unwrap();
        let store = JobStore::new(root.join("training"), root.join("trained"));
        Self {
            _dir: dir,
            root,
            model,
            store,
        }
    }

    fn engine(&self) -> Engine {
        Engine::load(&self.model, &LoadOptions::default()).unwrap()
    }

    fn create(&self, name: &str) -> Job {
        self.store
            .create(&self.engine(), name, &prompts(8), settings())
            .unwrap()
    }

    /// Runs the job, cancelling it when `stop` says so.
    fn run(&self, id: &str, stop: impl Fn(&JobEvent) -> bool) -> (Job, Vec<JobEvent>) {
        let cancel = CancelToken::new();
        let mut events = Vec::new();
        let job = self
            .store
            .run(id, &cancel, &mut |e| {
                if stop(e) {
                    cancel.cancel();
                }
                events.push(e.clone());
            })
            .unwrap();
        (job, events)
    }
}

fn prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("what is {i} plus {}?", i * 3))
        .collect()
}

fn settings() -> JobSettings {
    JobSettings {
        block: 4,
        max_new: 16,
        eval_tokens: 12,
        steps: Some(6),
        lr: 1e-3,
        max_len: 64,
        checkpoint_every: 2,
        seed: 0,
    }
}

fn steps_of(events: &[JobEvent]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Training {
                event: TrainEvent::Step(s),
            } => Some(s.step),
            _ => None,
        })
        .collect()
}

fn assert_generates(model: &Path) {
    let engine = Engine::load(model, &LoadOptions::default()).unwrap();
    let out = engine
        .generate(
            &GenerateRequest {
                prompt: Prompt::Chat(vec![Message::user("what is 2 plus 2?")]),
                options: DecodeOptions {
                    mode: Mode::Jacobi(4),
                    max_tokens: 8,
                    ..Default::default()
                },
            },
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    assert!(out.generated_tokens > 0);
}

#[test]
fn a_job_cancelled_in_each_stage_resumes_to_a_measured_model() {
    let f = Fixture::new();
    let job = f.create("tiny fast");
    assert_eq!((job.train_prompts.len(), job.held_out.len()), (7, 1));
    assert_eq!(job.status, Status::Ready);

    // Cancelled after the first prompt's trajectories: the baseline is kept.
    let (job, _) = f.run(
        &job.id,
        |e| matches!(e, JobEvent::Collecting(p) if p.prompts_done >= 1),
    );
    assert_eq!(
        (job.status, job.stage),
        (Status::Cancelled, Stage::Trajectories)
    );
    let baseline = job
        .baseline
        .clone()
        .expect("baseline measured before collecting");
    assert!(baseline.identical_to_ar, "Jacobi must reproduce greedy AR");
    assert!(baseline.tokens_per_iteration >= 1.0);
    // Block auto, as chat decodes, is measured too (and its output is part of identical_to_ar).
    let (auto, ar) = (
        baseline.auto_tokens_per_second,
        baseline.ar_tokens_per_second,
    );
    assert!(auto.is_some_and(|t| t > 0.0), "{auto:?}");
    assert!(baseline
        .auto_speedup
        .is_some_and(|x| (x - auto.unwrap() / ar).abs() < 1e-9));

    // Continues collecting at prompt 2 (the first is not redone), then is cancelled at the
    // first checkpoint of training.
    let (job, events) = f.run(&job.id, |e| {
        matches!(
            e,
            JobEvent::Training {
                event: TrainEvent::Checkpoint { step: 2, .. }
            }
        )
    });
    let first_collect = events.iter().find_map(|e| match e {
        JobEvent::Collecting(p) => Some(p.prompts_done),
        _ => None,
    });
    assert_eq!(first_collect, Some(1));
    assert!(
        !events.iter().any(|e| matches!(
            e,
            JobEvent::Measuring {
                stage: Stage::Baseline,
                ..
            }
        )),
        "the baseline is not measured twice"
    );
    assert_eq!(
        (job.status, job.stage),
        (Status::Cancelled, Stage::Training)
    );
    let collected = job.collected.clone().unwrap();
    assert_eq!(collected.prompts, 7);
    assert!(collected.records > 0);
    // Cancel is honoured before the next update: the checkpoint holds 2 of 6.
    assert_eq!(steps_of(&events), vec![0, 1]);
    assert_eq!(job.history.len(), 2);
    let kept = job.baseline.clone().unwrap();
    assert_eq!(
        (kept.answers, kept.tokens_per_iteration),
        (baseline.answers, baseline.tokens_per_iteration)
    );

    // Resumes at update 2 and finishes: the model is in the models folder and measured.
    let (job, events) = f.run(&job.id, |_| false);
    assert_eq!(job.error, None);
    assert_eq!((job.status, job.stage), (Status::Done, Stage::Done));
    assert_eq!(steps_of(&events), vec![2, 3, 4, 5]);
    let steps: Vec<usize> = job.history.iter().map(|s| s.step).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4, 5]);
    let model = job.trained_model.clone().unwrap();
    assert_eq!(model, f.root.join("trained").join("tiny fast"));
    let after = job.after.clone().unwrap();
    assert_eq!(after.model, model);
    assert!(after.identical_to_ar);
    assert_eq!(after.answers.len(), 1);
    assert!(!f.store.dir(&job.id).join("run").exists());
    assert_generates(&model);

    // A finished job stays finished; its listing survives a reload from disk.
    let (again, events) = f.run(&job.id, |_| false);
    assert_eq!(
        (again.status, again.trained_model),
        (Status::Done, Some(model))
    );
    assert!(events.is_empty());
    let listed = f.store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].history.len(), 6);
}

#[test]
fn a_failure_mid_run_is_reported_and_keeps_checkpoints_and_earlier_models() {
    let f = Fixture::new();
    // An earlier model the failure must not touch.
    let earlier = f.create("earlier");
    let (earlier, _) = f.run(&earlier.id, |_| false);
    let earlier_model = earlier.trained_model.clone().unwrap();
    let earlier_bytes = std::fs::read(earlier_model.join("model.safetensors")).unwrap();

    let job = f.create("later");
    let (job, _) = f.run(&job.id, |e| {
        matches!(
            e,
            JobEvent::Training {
                event: TrainEvent::Checkpoint { step: 2, .. }
            }
        )
    });
    assert_eq!(job.stage, Stage::Training);
    let run_dir = f.store.dir(&job.id).join("run");
    let checkpoint = fixpoint::train::checkpoint::latest(&run_dir)
        .unwrap()
        .unwrap();

    // The base model disappears between runs: training cannot reload it.
    let moved = f.root.join("moved.gguf");
    std::fs::rename(&f.model, &moved).unwrap();
    let (failed, _) = f.run(&job.id, |_| false);
    assert_eq!(
        (failed.status, failed.stage),
        (Status::Failed, Stage::Training)
    );
    let error = failed.error.clone().unwrap();
    assert!(error.contains("tiny.gguf"), "{error}");
    assert_eq!(f.store.load(&job.id).unwrap(), failed);
    assert_eq!(
        fixpoint::train::checkpoint::latest(&run_dir).unwrap(),
        Some(checkpoint)
    );
    assert!(f.store.dir(&job.id).join("trajectories.jsonl").exists());
    assert_eq!(failed.history.len(), 2);
    assert_eq!(
        std::fs::read(earlier_model.join("model.safetensors")).unwrap(),
        earlier_bytes
    );

    // With the model back, the same job finishes from its checkpoint.
    std::fs::rename(&moved, &f.model).unwrap();
    let (done, events) = f.run(&job.id, |_| false);
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(steps_of(&events), vec![2, 3, 4, 5]);
    assert_eq!(f.store.list().len(), 2);
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    let f = Fixture::new();
    let engine = f.engine();
    let refuse = |prompts: &[String], s: JobSettings, needle: &str| {
        let err = f
            .store
            .create(&engine, "x", prompts, s)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    };
    refuse(&[], settings(), "no prompts");
    refuse(&["  ".into(), "".into()], settings(), "no prompts");
    refuse(&prompts(1), settings(), "not enough");
    // The same prompt twice is one prompt.
    refuse(&["a".into(), " a".into()], settings(), "not enough");
    // TinySpec's context is 512 tokens.
    let long = vec!["word ".repeat(600), "short".into(), "also short".into()];
    refuse(&long, settings(), "too long for the model's context of 512");
    refuse(
        &prompts(4),
        JobSettings {
            block: 1,
            ..settings()
        },
        "block size 1",
    );
    refuse(
        &prompts(4),
        JobSettings {
            lr: 0.0,
            ..settings()
        },
        "learning rate",
    );
    let err = f
        .store
        .create(&engine, "../escape", &prompts(4), settings())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be a model name"), "{err}");
    assert!(
        f.store.list().is_empty(),
        "a refused job leaves nothing behind"
    );

    let plan = f.store.plan(&engine, &prompts(30), &settings());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!((plan.train, plan.held_out), (27, 3));
    assert_eq!(plan.estimated_updates, 6);
    assert!(plan.estimated_seconds > 0.0 && plan.estimated_seconds.is_finite());
    assert!(plan.memory_bytes > 0 && plan.disk_bytes > 0);
}

#[test]
fn the_trained_model_can_be_renamed_but_not_onto_another() {
    let f = Fixture::new();
    let a = f.create("a");
    let (a, _) = f.run(&a.id, |_| false);
    let b = f.create("a");
    let (b, _) = f.run(&b.id, |_| false);
    // Same name asked twice: the second gets a suffix rather than replacing the first.
    assert_eq!(b.name, "a-2");
    let err = f.store.rename_model(&b.id, "a").unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    let renamed = f.store.rename_model(&b.id, "my fast model").unwrap();
    let path = f.root.join("trained").join("my fast model");
    assert_eq!(renamed.trained_model.as_deref(), Some(path.as_path()));
    assert_eq!(renamed.after.as_ref().unwrap().model, path);
    assert!(!f.root.join("trained").join("a-2").exists());
    assert_generates(&path);
    assert!(a.trained_model.unwrap().exists());
}

#[test]
fn a_job_killed_after_its_model_was_written_is_not_trained_again() {
    let f = Fixture::new();
    let job = f.create("kept");
    let (done, _) = f.run(&job.id, |_| false);
    let model = done.trained_model.clone().unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let run_dir = f.store.dir(&job.id).join("run");
    let trained_again = |events: &[JobEvent]| {
        events
            .iter()
            .any(|e| matches!(e, JobEvent::Training { .. }))
    };

    // Killed after training wrote the model, before it was moved into the models folder.
    std::fs::rename(&model, &run_dir).unwrap();
    let mut killed = done.clone();
    (
        killed.stage,
        killed.status,
        killed.trained_model,
        killed.after,
    ) = (Stage::Training, Status::Running, None, None);
    f.store.save(&killed).unwrap();
    let (again, events) = f.run(&job.id, |_| false);
    assert!(!trained_again(&events));
    assert_eq!(again.status, Status::Done);
    assert_eq!(again.trained_model.as_deref(), Some(model.as_path()));
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        bytes
    );
    assert_eq!(again.history.len(), 6);

    // Killed after the move, before the next stage was saved.
    killed.trained_model = Some(model.clone());
    f.store.save(&killed).unwrap();
    let (again, events) = f.run(&job.id, |_| false);
    assert!(!trained_again(&events));
    assert_eq!(again.status, Status::Done);
    assert_eq!(again.trained_model.as_deref(), Some(model.as_path()));
    assert!(!f.root.join("trained").join("kept-2").exists());
}

#[test]
fn a_job_held_by_another_process_is_not_run_deleted_or_renamed() {
    let f = Fixture::new();
    let job = f.create("held");
    let held = f.store.lock(&job.id).unwrap();
    assert!(f.store.is_locked(&job.id));
    let err = f
        .store
        .run(&job.id, &CancelToken::new(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("running in another process"), "{err}");
    assert!(f.store.delete(&job.id).is_err());
    drop(held);
    assert!(!f.store.is_locked(&job.id));
    let (done, _) = f.run(&job.id, |_| false);
    assert_eq!(done.status, Status::Done);
    f.store.delete(&job.id).unwrap();
    assert!(f.store.list().is_empty());
}
