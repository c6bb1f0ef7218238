//! What the app holds between commands: one loaded model, the running job's cancel token and
//! the chat database.

use std::sync::{Arc, Mutex};

use fixpoint::{CancelToken, Engine};

use crate::db::Db;
use crate::error::AppError;

pub struct AppState {
    engine: Mutex<Option<Arc<Engine>>>,
    job: Mutex<Option<CancelToken>>,
    pub db: Mutex<Db>,
    /// Greedy AR tokens/s last measured on the loaded model (for the speedup readout).
    pub ar_speed: Mutex<Option<f64>>,
}

impl AppState {
    pub fn new(db: Db) -> Self {
        Self {
            engine: Mutex::new(None),
            job: Mutex::new(None),
            db: Mutex::new(db),
            ar_speed: Mutex::new(None),
        }
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
