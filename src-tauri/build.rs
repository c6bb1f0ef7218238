fn main() {
    // Generating permissions for our commands turns on Tauri's ACL for them: the window may
    // call exactly what capabilities/default.json grants.
    tauri_build::try_build(tauri_build::Attributes::new().app_manifest(
        tauri_build::AppManifest::new().commands(&[
            "list_models",
            "current_model",
            "startup_model",
            "startup_notice",
            "load_model",
            "fetch_default_model",
            "list_conversations",
            "create_conversation",
            "rename_conversation",
            "delete_conversation",
            "get_messages",
            "update_settings",
            "export_conversation",
            "send_message",
            "regenerate",
            "edit_message",
            "continue_answer",
            "stop_generation",
            "race",
            "training_plan",
            "conversation_prompts",
            "file_prompts",
            "list_training_jobs",
            "start_training",
            "resume_training",
            "cancel_training",
            "delete_training_job",
            "rename_trained_model",
        ]),
    ))
    .expect("tauri build script");
}
