//! The model picker's data: the default model, downloaded and trained models, and loading one.

use std::path::{Path, PathBuf};

use fixpoint::model_store::{self, FetchOutcome};
use fixpoint::{Engine, LoadOptions, ModelInfo};
use serde::Serialize;

use crate::error::AppError;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    pub name: String,
    pub path: PathBuf,
    /// "default", "downloaded" or "trained".
    pub origin: String,
    pub installed: bool,
    pub bytes: u64,
}

pub fn list() -> Vec<ModelEntry> {
    let default = model_store::default_model_path();
    let mut out = vec![ModelEntry {
        name: format!("{} (default)", model_store::default_entry().name),
        installed: default.exists(),
        bytes: default.metadata().map(|m| m.len()).unwrap_or(0),
        path: default.clone(),
        origin: "default".into(),
    }];
    for m in model_store::list_installed() {
        if m.path == default {
            continue;
        }
        out.push(ModelEntry {
            name: m.name,
            path: m.path,
            origin: m.origin,
            installed: true,
            bytes: m.bytes,
        });
    }
    out
}

/// Loads a model (on the calling worker thread) and makes it the app's model.
pub fn load(state: &AppState, path: &Path) -> Result<ModelInfo, AppError> {
    if path.as_os_str().is_empty() {
        return Err(AppError::Invalid("no model path given".into()));
    }
    let engine = Engine::load(path, &LoadOptions::default())?;
    let info = engine.info().clone();
    state.set_engine(engine);
    Ok(info)
}

/// Progress of fetching the default model.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FetchEvent {
    Log {
        line: String,
    },
    Done {
        path: PathBuf,
        already_installed: bool,
    },
}

pub fn fetch_default(emit: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, AppError> {
    let outcome = model_store::fetch_default(None, &mut |line| {
        emit(FetchEvent::Log {
            line: line.to_string(),
        })
    })?;
    let (path, already) = match outcome {
        FetchOutcome::AlreadyInstalled(p) => (p, true),
        FetchOutcome::Installed(p) => (p, false),
    };
    emit(FetchEvent::Done {
        path: path.clone(),
        already_installed: already,
    });
    Ok(path)
}
