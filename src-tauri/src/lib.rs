//! Fixpoint's desktop app: a thin Tauri shell over the `fixpoint` engine.
//!
//! UI (ui/) --invoke--> commands --> chat / models / db / training --> fixpoint::Engine
//!     ^------------- Channel<ChatEvent> / Channel<JobEvent> ---------------'

pub mod chat;
pub mod commands;
pub mod db;
pub mod error;
pub mod models;
pub mod state;
pub mod training;

pub use error::AppError;
pub use state::AppState;

/// Title of a conversation until its first message names it.
pub const NEW_CHAT_TITLE: &str = "New chat";

/// Where conversations are kept: `chats.sqlite` in Fixpoint's data directory.
pub fn database_path() -> std::path::PathBuf {
    fixpoint::model_store::data_dir().join("chats.sqlite")
}

/// The app with its state and commands; `run` starts it, tests drive it on the mock runtime.
pub fn builder<R: tauri::Runtime>(state: AppState) -> tauri::Builder<R> {
    tauri::Builder::<R>::new()
        .manage(state)
        .invoke_handler(tauri::generate_handler![
            commands::list_models,
            commands::current_model,
            commands::startup_model,
            commands::startup_notice,
            commands::load_model,
            commands::fetch_default_model,
            commands::list_conversations,
            commands::create_conversation,
            commands::rename_conversation,
            commands::delete_conversation,
            commands::get_messages,
            commands::update_settings,
            commands::export_conversation,
            commands::send_message,
            commands::regenerate,
            commands::edit_message,
            commands::continue_answer,
            commands::stop_generation,
            commands::race,
            commands::training_plan,
            commands::conversation_prompts,
            commands::file_prompts,
            commands::list_training_jobs,
            commands::start_training,
            commands::resume_training,
            commands::cancel_training,
            commands::delete_training_job,
            commands::rename_trained_model,
        ])
}

pub fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let (db, notice) = match db::Db::open_or_recover(&database_path()) {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", database_path().display());
            std::process::exit(1);
        }
    };
    if let Some(notice) = &notice {
        tracing::warn!("{notice}");
    }
    builder::<tauri::Wry>(AppState::new(db).with_notice(notice))
        .run(tauri::generate_context!())
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1);
        });
}
