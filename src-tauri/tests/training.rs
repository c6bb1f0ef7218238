//! The training tab's job logic without a window, on a tiny model: start, cancel from inside a
//! step, resume to a model the picker lists and that generates, a failure the UI is told
//! about, and the refusals.

use std::path::PathBuf;
use std::sync::OnceLock;

use fixpoint::testing::write_tiny_gguf;
use fixpoint::train::job::{JobEvent, JobSettings, Stage, Status};
use fixpoint::train::TrainEvent;
use fixpoint_desktop::db::Db;
use fixpoint_desktop::{models, training, AppError, AppState};

/// One data directory for the whole file: `FIXPOINT_HOME` is process-wide.
fn home() -> &'static PathBuf {
    static HOME: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &HOME
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_path_buf();
            std::env::set_var("FIXPOINT_HOME", &path);
            (dir, path)
        })
        .1
}

/// App state with a freshly written tiny GGUF model loaded.
fn state_with_model(file: &str) -> (AppState, PathBuf) {
    let model = home().join(file);
    write_tiny_gguf(&model).unwrap();
    let state = AppState::new(Db::in_memory().unwrap());
    models::load(&state, &model).unwrap();
    (state, model)
}

fn prompts() -> Vec<String> {
    (0..6).map(|i| format!("name {i} colours")).collect()
}

fn settings() -> JobSettings {
    JobSettings {
        block: 4,
        max_new: 16,
        eval_tokens: 8,
        steps: Some(4),
        lr: 1e-3,
        max_len: 64,
        checkpoint_every: 2,
        seed: 1,
    }
}

#[test]
fn a_job_cancelled_mid_training_resumes_to_a_model_in_the_picker() {
    let (state, _) = state_with_model("picker.gguf");
    let mut saw_active = false;
    let mut second_start = None;
    let job = training::start(&state, "picker-model", &prompts(), settings(), &mut |e| {
        if let JobEvent::Training {
            event: TrainEvent::Step(s),
        } = e
        {
            let listed = training::list(&state);
            saw_active |= listed.iter().any(|j| j.active);
            second_start = Some(training::start(
                &state,
                "x",
                &prompts(),
                settings(),
                &mut |_| {},
            ));
            if s.step == 0 {
                assert!(state.cancel_training());
            }
        }
    })
    .unwrap();
    assert!(saw_active, "the running job is listed as active");
    let err = second_start.unwrap().unwrap_err().to_string();
    assert!(err.contains("already running"), "{err}");
    assert_eq!(
        (job.status, job.stage),
        (Status::Cancelled, Stage::Training)
    );
    assert!(
        !state.cancel_training(),
        "the slot is free once the job stops"
    );

    let listed = training::list(&state);
    let view = listed.iter().find(|j| j.job.id == job.id).unwrap();
    assert!(!view.active);
    assert_eq!(view.job.history.len(), 1);

    let mut steps = Vec::new();
    let done = training::resume(&state, &job.id, &mut |e| {
        if let JobEvent::Training {
            event: TrainEvent::Step(s),
        } = e
        {
            steps.push(s.step);
        }
    })
    .unwrap();
    assert_eq!(steps, vec![1, 2, 3]);
    assert_eq!(done.status, Status::Done);
    let path = done.trained_model.clone().unwrap();
    assert!(path.starts_with(home().join("trained")));
    let entry = models::list()
        .into_iter()
        .find(|m| m.path == path)
        .expect("the trained model is in the picker");
    assert_eq!(
        (entry.name.as_str(), entry.origin.as_str()),
        ("picker-model", "trained")
    );

    // Renamed from the result card; the picker follows.
    let renamed = training::rename_model(&state, &done.id, "picker model v2").unwrap();
    let path = renamed.trained_model.unwrap();
    assert!(models::list()
        .iter()
        .any(|m| m.path == path && m.name == "picker model v2"));
    let info = models::load(&state, &path).unwrap();
    assert_eq!(info.path, path);
    let err = training::resume(&state, &done.id, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("already trained"), "{err}");
}

#[test]
fn a_failure_is_returned_to_the_ui_and_recorded_in_the_job() {
    let (state, model) = state_with_model("failing.gguf");
    let job = training::start(&state, "failing-model", &prompts(), settings(), &mut |e| {
        if matches!(e, JobEvent::Collecting(p) if p.prompts_done == 1) {
            state.cancel_training();
        }
    })
    .unwrap();
    assert_eq!(job.stage, Stage::Trajectories);
    // The model file is damaged between runs.
    std::fs::write(&model, b"not a gguf").unwrap();
    let err = training::resume(&state, &job.id, &mut |_| {}).unwrap_err();
    assert!(matches!(err, AppError::Training(_)), "{err:?}");
    assert_eq!(serde_json::to_value(&err).unwrap()["kind"], "training");
    let listed = training::list(&state);
    let failed = &listed.iter().find(|j| j.job.id == job.id).unwrap().job;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some(err.to_string().trim_start_matches("training failed: "))
    );
    // Deleting the job removes its folder only.
    training::delete(&state, &job.id).unwrap();
    assert!(!training::list(&state).iter().any(|j| j.job.id == job.id));
}

#[test]
fn refusals_come_before_anything_starts() {
    let state = AppState::new(Db::in_memory().unwrap());
    let err = training::start(&state, "x", &prompts(), settings(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, AppError::NoModel));
    assert!(matches!(
        training::plan(&state, &prompts(), None),
        Err(AppError::NoModel)
    ));

    let (state, _) = state_with_model("refusals.gguf");
    let plan = training::plan(&state, &[], None).unwrap();
    assert!(plan.plan.problems.iter().any(|p| p.contains("no prompts")));
    assert_eq!(plan.recommended, plan.plan.settings);
    assert_eq!(plan.default_name, "refusals-cllm");
    let err = training::start(&state, "refused", &["one".into()], settings(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("not enough"), "{err}");
    assert!(!training::list(&state)
        .iter()
        .any(|j| j.job.name == "refused"));

    let err = training::file_prompts(std::path::Path::new("/nonexistent/prompts.txt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/prompts.txt"), "{err}");
}
