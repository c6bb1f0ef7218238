//! Errors as the UI receives them: a kind to branch on and a message to show.

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Engine(#[from] fixpoint::Error),
    #[error("no model is loaded: pick one in the model menu")]
    NoModel,
    #[error("an answer is already being generated")]
    Busy,
    #[error("conversation {0} does not exist")]
    NoSuchConversation(i64),
    #[error("{0}")]
    Invalid(String),
    #[error("training failed: {0}")]
    Training(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        AppError::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for AppError {
    fn from(e: serde_json::Error) -> Self {
        AppError::Storage(e.to_string())
    }
}

impl AppError {
    fn kind(&self) -> &'static str {
        match self {
            AppError::Engine(_) => "engine",
            AppError::NoModel => "no_model",
            AppError::Busy => "busy",
            AppError::NoSuchConversation(_) => "not_found",
            AppError::Invalid(_) => "invalid",
            AppError::Training(_) => "training",
            AppError::Storage(_) => "storage",
        }
    }
}

/// Serialized as `{ "kind": "...", "message": "..." }`.
impl Serialize for AppError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("AppError", 2)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}
