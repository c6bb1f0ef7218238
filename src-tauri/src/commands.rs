//! The commands the UI may call: each parses, hands the work to `chat`, `models` or the
//! database, and returns. Anything that decodes or loads runs on a blocking worker thread;
//! streams go back through a `Channel`.

use std::path::PathBuf;

use fixpoint::ModelInfo;
use tauri::ipc::Channel;
use tauri::{AppHandle, Manager, Runtime, State};

use crate::chat::{self, ChatEvent, RaceEvent, Turn};
use crate::db::{self, ChatSettings, Conversation, StoredMessage};
use crate::error::AppError;
use crate::models::{self, FetchEvent, ModelEntry};
use crate::state::AppState;
use crate::training::{self, JobView, TrainingPlan};
use fixpoint::train::job::{Job, JobEvent, JobSettings};

/// Runs `f` with the app state on a blocking thread, off the main (UI) thread.
async fn blocking<T: Send + 'static, R: Runtime>(
    app: AppHandle<R>,
    f: impl FnOnce(&AppState) -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tauri::async_runtime::spawn_blocking(move || f(&app.state::<AppState>()))
        .await
        .map_err(|e| AppError::Invalid(format!("worker failed: {e}")))?
}

#[tauri::command]
pub fn list_models() -> Vec<ModelEntry> {
    models::list()
}

#[tauri::command]
pub fn current_model(state: State<'_, AppState>) -> Option<ModelInfo> {
    state.engine().ok().map(|e| e.info().clone())
}

/// The model to load at start: `FIXPOINT_MODEL`, else the default model if it is installed.
/// What the window says when it opens, if anything (see [`crate::db::Db::open_or_recover`]).
#[tauri::command]
pub fn startup_notice(state: State<'_, AppState>) -> Option<String> {
    state.notice.clone()
}

#[tauri::command]
pub fn startup_model() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FIXPOINT_MODEL") {
        return Some(PathBuf::from(p));
    }
    let default = fixpoint::model_store::default_model_path();
    default.exists().then_some(default)
}

#[tauri::command]
pub async fn load_model<R: Runtime>(
    app: AppHandle<R>,
    path: PathBuf,
) -> Result<ModelInfo, AppError> {
    blocking(app, move |state| models::load(state, &path)).await
}

#[tauri::command]
pub async fn fetch_default_model<R: Runtime>(
    app: AppHandle<R>,
    channel: Channel<FetchEvent>,
) -> Result<PathBuf, AppError> {
    blocking(app, move |_| {
        models::fetch_default(&mut |e| {
            let _ = channel.send(e);
        })
    })
    .await
}

#[tauri::command]
pub fn list_conversations(
    state: State<'_, AppState>,
    query: Option<String>,
) -> Result<Vec<Conversation>, AppError> {
    state.with_db(|db| db.list_conversations(query.as_deref().unwrap_or("")))
}

/// A new conversation with `settings` (the ones the chat view shows, which the user may have
/// changed before the first message), or the defaults.
#[tauri::command]
pub fn create_conversation(
    state: State<'_, AppState>,
    settings: Option<ChatSettings>,
) -> Result<Conversation, AppError> {
    let settings = settings.unwrap_or_default();
    chat::decode_options(&settings)?;
    state.with_db(|db| db.create_conversation(crate::NEW_CHAT_TITLE, &settings))
}

#[tauri::command]
pub fn rename_conversation(
    state: State<'_, AppState>,
    id: i64,
    title: String,
) -> Result<Conversation, AppError> {
    state.with_db(|db| db.rename_conversation(id, &title))
}

#[tauri::command]
pub fn delete_conversation(state: State<'_, AppState>, id: i64) -> Result<(), AppError> {
    state.with_db(|db| db.delete_conversation(id))
}

#[tauri::command]
pub fn get_messages(state: State<'_, AppState>, id: i64) -> Result<Vec<StoredMessage>, AppError> {
    state.with_db(|db| db.messages(id))
}

#[tauri::command]
pub fn update_settings(
    state: State<'_, AppState>,
    id: i64,
    settings: ChatSettings,
) -> Result<Conversation, AppError> {
    chat::decode_options(&settings)?;
    state.with_db(|db| db.update_settings(id, &settings))
}

/// Writes the conversation to `<data dir>/exports/` as Markdown or JSON; returns the path.
#[tauri::command]
pub fn export_conversation(
    state: State<'_, AppState>,
    id: i64,
    format: String,
) -> Result<PathBuf, AppError> {
    let (c, messages) = state.with_db(|db| Ok((db.conversation(id)?, db.messages(id)?)))?;
    let (text, ext) = match format.as_str() {
        "markdown" => (db::to_markdown(&c, &messages), "md"),
        "json" => (
            serde_json::to_string_pretty(&serde_json::json!({
                "conversation": c,
                "messages": messages,
            }))?,
            "json",
        ),
        other => {
            return Err(AppError::Invalid(format!(
                "unknown export format `{other}`"
            )))
        }
    };
    let dir = fixpoint::model_store::data_dir().join("exports");
    std::fs::create_dir_all(&dir).map_err(|e| AppError::Storage(e.to_string()))?;
    let stem: String = c
        .title
        .chars()
        .map(|ch| if ch.is_alphanumeric() { ch } else { '-' })
        .collect();
    let path = dir.join(format!("{}-{}.{ext}", stem.trim_matches('-'), c.id));
    fixpoint::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// An answer on a worker thread, its events sent down `channel`.
async fn answer<R: Runtime>(
    app: AppHandle<R>,
    conversation_id: i64,
    turn: Turn,
    channel: Channel<ChatEvent>,
) -> Result<StoredMessage, AppError> {
    blocking(app, move |state| {
        chat::answer(state, conversation_id, turn, &mut |e| {
            let _ = channel.send(e);
        })
    })
    .await
}

#[tauri::command]
pub async fn send_message<R: Runtime>(
    app: AppHandle<R>,
    conversation_id: i64,
    content: String,
    channel: Channel<ChatEvent>,
) -> Result<StoredMessage, AppError> {
    answer(app, conversation_id, Turn::Ask(content), channel).await
}

#[tauri::command]
pub async fn regenerate<R: Runtime>(
    app: AppHandle<R>,
    conversation_id: i64,
    channel: Channel<ChatEvent>,
) -> Result<StoredMessage, AppError> {
    answer(app, conversation_id, Turn::Regenerate, channel).await
}

/// Continues the conversation's last answer from where it stopped.
#[tauri::command]
pub async fn continue_answer<R: Runtime>(
    app: AppHandle<R>,
    conversation_id: i64,
    channel: Channel<ChatEvent>,
) -> Result<StoredMessage, AppError> {
    answer(app, conversation_id, Turn::Continue, channel).await
}

/// Answers user message `message_id` again with the text `content`, replacing the messages
/// after it.
#[tauri::command]
pub async fn edit_message<R: Runtime>(
    app: AppHandle<R>,
    conversation_id: i64,
    message_id: i64,
    content: String,
    channel: Channel<ChatEvent>,
) -> Result<StoredMessage, AppError> {
    let turn = Turn::Edit {
        message_id,
        content,
    };
    answer(app, conversation_id, turn, channel).await
}

/// Stops the running answer or race before its next forward pass.
#[tauri::command]
pub fn stop_generation(state: State<'_, AppState>) -> bool {
    state.cancel_job()
}

#[tauri::command]
pub async fn race<R: Runtime>(
    app: AppHandle<R>,
    prompt: String,
    settings: ChatSettings,
    channel: Channel<RaceEvent>,
) -> Result<(), AppError> {
    blocking(app, move |state| {
        chat::race(state, prompt, settings, &mut |e| {
            let _ = channel.send(e);
        })
    })
    .await
}

/// What training the loaded model on `prompts` would do, and why it cannot, if it cannot.
/// `settings` defaults to the ones recommended for the model.
#[tauri::command]
pub async fn training_plan<R: Runtime>(
    app: AppHandle<R>,
    prompts: Vec<String>,
    settings: Option<JobSettings>,
) -> Result<TrainingPlan, AppError> {
    blocking(app, move |state| training::plan(state, &prompts, settings)).await
}

#[tauri::command]
pub fn conversation_prompts(
    state: State<'_, AppState>,
    ids: Vec<i64>,
) -> Result<Vec<String>, AppError> {
    training::conversation_prompts(&state, &ids)
}

// File reads, job listing and deleting run off the main thread: a job folder holds gigabytes.
#[tauri::command]
pub async fn file_prompts<R: Runtime>(
    app: AppHandle<R>,
    path: PathBuf,
) -> Result<Vec<String>, AppError> {
    blocking(app, move |_| training::file_prompts(&path)).await
}

#[tauri::command]
pub async fn list_training_jobs<R: Runtime>(app: AppHandle<R>) -> Result<Vec<JobView>, AppError> {
    blocking(app, |state| Ok(training::list(state))).await
}

/// Creates a training job for the loaded model and runs it; resolves when it ends.
#[tauri::command]
pub async fn start_training<R: Runtime>(
    app: AppHandle<R>,
    name: String,
    prompts: Vec<String>,
    settings: JobSettings,
    channel: Channel<JobEvent>,
) -> Result<Job, AppError> {
    blocking(app, move |state| {
        training::start(state, &name, &prompts, settings, &mut |e| {
            let _ = channel.send(e.clone());
        })
    })
    .await
}

#[tauri::command]
pub async fn resume_training<R: Runtime>(
    app: AppHandle<R>,
    id: String,
    channel: Channel<JobEvent>,
) -> Result<Job, AppError> {
    blocking(app, move |state| {
        training::resume(state, &id, &mut |e| {
            let _ = channel.send(e.clone());
        })
    })
    .await
}

/// Stops the training job before its next update, keeping a checkpoint.
#[tauri::command]
pub fn cancel_training(state: State<'_, AppState>) -> bool {
    state.cancel_training()
}

#[tauri::command]
pub async fn delete_training_job<R: Runtime>(
    app: AppHandle<R>,
    id: String,
) -> Result<(), AppError> {
    blocking(app, move |state| training::delete(state, &id)).await
}

#[tauri::command]
pub fn rename_trained_model(
    state: State<'_, AppState>,
    id: String,
    name: String,
) -> Result<Job, AppError> {
    training::rename_model(&state, &id, &name)
}
