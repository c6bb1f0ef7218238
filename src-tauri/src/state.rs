//! What the app holds between commands: one loaded model, the running answer's and the running
//! training job's cancel tokens, the chat database and the training jobs' folders.

use std::sync::{Arc, Mutex};

use fixpoint::train::JobStore;
use fixpoint::{CancelToken, Engine};

use crate::db::Db;
use crate::error::AppError;

pub struct AppState {
    engine: Mutex<Option<Arc<Engine>>>,
    job: Mutex<Option<CancelToken>>,
    /// The training job running now (its id once created) and its token. Separate from `job`:
    /// one can chat while a model trains.
    training: Mutex<Option<(Option<String>, CancelToken)>>,
    pub db: Mutex<Db>,
    pub jobs: JobStore,
    /// Greedy AR tokens/s last measured on the loaded model (for the speedup readout).
    pub ar_speed: Mutex<Option<f64>>,
    /// What the window should say when it opens (the conversations' file could not be used).
    pub notice: Option<String>,
}

impl AppState {
    /// Training jobs live in Fixpoint's data directory.
    pub fn new(db: Db) -> Self {
        Self::with_jobs(db, JobStore::at_default())
    }

    pub fn with_jobs(db: Db, jobs: JobStore) -> Self {
        Self {
            engine: Mutex::new(None),
            job: Mutex::new(None),
            training: Mutex::new(None),
            db: Mutex::new(db),
            jobs,
            ar_speed: Mutex::new(None),
            notice: None,
        }
    }

    pub fn with_notice(self, notice: Option<String>) -> Self {
        Self { notice, ..self }
    }

    pub fn engine(&self) -> Result<Arc<Engine>, AppError> {
        lock(&self.engine).clone().ok_or(AppError::NoModel)
    }

    pub fn set_engine(&self, engine: Engine) {
        *lock(&self.engine) = Some(Arc::new(engine));
        *lock(&self.ar_speed) = None;
    }

    /// Claims the single job slot; the guard frees it when the job ends.
    pub fn start_job(&self) -> Result<JobGuard<'_>, AppError> {
        let mut job = lock(&self.job);
        if job.is_some() {
            return Err(AppError::Busy);
        }
        let token = CancelToken::new();
        *job = Some(token.clone());
        Ok(JobGuard { state: self, token })
    }

    /// Asks the running job to stop; it does so before its next forward pass.
    pub fn cancel_job(&self) -> bool {
        match &*lock(&self.job) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    /// Claims the single training slot (for job `id` when resuming one).
    pub fn start_training(&self, id: Option<&str>) -> Result<TrainingGuard<'_>, AppError> {
        let mut slot = lock(&self.training);
        if slot.is_some() {
            return Err(AppError::Invalid(
                "a training job is already running: wait for it or cancel it".into(),
            ));
        }
        let token = CancelToken::new();
        *slot = Some((id.map(str::to_string), token.clone()));
        Ok(TrainingGuard { state: self, token })
    }

    pub fn training_job_id(&self) -> Option<String> {
        lock(&self.training).as_ref().and_then(|(id, _)| id.clone())
    }

    /// Asks the training job to stop; it saves a checkpoint before its next update.
    pub fn cancel_training(&self) -> bool {
        match &*lock(&self.training) {
            Some((_, t)) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    pub fn with_db<R>(&self, f: impl FnOnce(&Db) -> Result<R, AppError>) -> Result<R, AppError> {
        f(&lock(&self.db))
    }
}

pub struct JobGuard<'a> {
    state: &'a AppState,
    pub token: CancelToken,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.state.job) = None;
    }
}

/// A poisoned lock only means another command panicked; the data is still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct TrainingGuard<'a> {
    state: &'a AppState,
    pub token: CancelToken,
}

impl TrainingGuard<'_> {
    pub fn set_id(&self, id: &str) {
        if let Some((slot, _)) = lock(&self.state.training).as_mut() {
            *slot = Some(id.to_string());
        }
    }
}

impl Drop for TrainingGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.state.training) = None;
    }
}
