//! The training tab's data: where prompts come from, the plan shown before starting, and the job
//! itself, which runs in-process on the calling worker thread (see `fixpoint::train::job`).
//!
//! In-process rather than a child `fixpoint train`: the job is the engine's own library code, its
//! events arrive typed instead of parsed from stdout, cancel is the same token chat uses, and
//! there is no second binary to find, version and ship beside the app. A crash would take the
//! app down, but the job's folder and checkpoints survive it and Resume picks up from there.

use fixpoint::train::job::{self, Job, JobEvent, JobSettings, Plan, Status};
use serde::Serialize;

use crate::error::AppError;
use crate::state::AppState;

/// A job as the tab lists it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// Running now, in this app or another process (`fixpoint tune`). A job saved as running
    /// that is not active was cut off (the app closed or crashed mid-run) and can be resumed.
    pub active: bool,
}

/// The plan for the loaded model, with the settings it would use and a name for the result.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingPlan {
    #[serde(flatten)]
    pub plan: Plan,
    pub recommended: JobSettings,
    pub default_name: String,
    pub model: std::path::PathBuf,
}

pub fn plan(
    state: &AppState,
    prompts: &[String],
    settings: Option<JobSettings>,
) -> Result<TrainingPlan, AppError> {
    let engine = state.engine()?;
    let info = engine.info();
    let recommended = JobSettings::recommended(info.parameters, info.context_length);
    let settings = settings.unwrap_or_else(|| recommended.clone());
    Ok(TrainingPlan {
        plan: state.jobs.plan(&engine, prompts, &settings),
        recommended,
        default_name: job::default_name(&info.path),
        model: info.path.clone(),
    })
}

/// The user's own messages in the given conversations, oldest first.
pub fn conversation_prompts(state: &AppState, ids: &[i64]) -> Result<Vec<String>, AppError> {
    state.with_db(|db| {
        let mut out = Vec::new();
        for &id in ids {
            for m in db.messages(id)? {
                if m.role == "user" {
                    out.push(m.content);
                }
            }
        }
        Ok(out)
    })
}

/// Prompts from a JSONL (`question`, `prompt` or `text`) or plain-text file.
pub fn file_prompts(path: &std::path::Path) -> Result<Vec<String>, AppError> {
    if path.as_os_str().is_empty() {
        return Err(AppError::Invalid("no file given".into()));
    }
    Ok(fixpoint::bench::read_prompts(path, None)?)
}

pub fn list(state: &AppState) -> Vec<JobView> {
    let active = state.training_job_id();
    state
        .jobs
        .list()
        .into_iter()
        .map(|job| JobView {
            active: active.as_deref() == Some(job.id.as_str()) || state.jobs.is_locked(&job.id),
            job,
        })
        .collect()
}

/// Creates a job for the loaded model and runs it to its end (done, cancelled or failed).
pub fn start(
    state: &AppState,
    name: &str,
    prompts: &[String],
    settings: JobSettings,
    emit: &mut dyn FnMut(&JobEvent),
) -> Result<Job, AppError> {
    let engine = state.engine()?;
    // Claim the slot first, so two clicks cannot create two jobs.
    let guard = state.start_training(None)?;
    let job = state.jobs.create(&engine, name, prompts, settings)?;
    drop(engine);
    guard.set_id(&job.id);
    finish(state.jobs.run(&job.id, &guard.token, emit)?)
}

/// Continues a cancelled, failed or cut-off job from its last saved stage or checkpoint.
pub fn resume(
    state: &AppState,
    id: &str,
    emit: &mut dyn FnMut(&JobEvent),
) -> Result<Job, AppError> {
    let guard = state.start_training(Some(id))?;
    let job = state.jobs.load(id)?;
    if job.status == Status::Done {
        return Err(AppError::Invalid(format!(
            "{} is already trained",
            job.name
        )));
    }
    finish(state.jobs.run(id, &guard.token, emit)?)
}

/// A failed job is an error for the caller (with the job's message); the job keeps it too.
fn finish(job: Job) -> Result<Job, AppError> {
    match (&job.status, &job.error) {
        (Status::Failed, Some(e)) => Err(AppError::Training(e.clone())),
        _ => Ok(job),
    }
}

pub fn delete(state: &AppState, id: &str) -> Result<(), AppError> {
    if state.training_job_id().as_deref() == Some(id) {
        return Err(AppError::Invalid(
            "the job is running: cancel it before deleting it".into(),
        ));
    }
    Ok(state.jobs.delete(id)?)
}

pub fn rename_model(state: &AppState, id: &str, name: &str) -> Result<Job, AppError> {
    if state.training_job_id().as_deref() == Some(id) {
        return Err(AppError::Invalid(
            "the job is still running: rename its model when it is done".into(),
        ));
    }
    Ok(state.jobs.rename_model(id, name)?)
}
