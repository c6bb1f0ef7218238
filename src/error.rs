//! The engine's error type: one variant per thing a user can get wrong, each with a message that
//! names the problem, so the CLI and the app can show it as one line.

use std::path::PathBuf;

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file not found: {0}")]
    ModelNotFound(PathBuf),

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0} is not a GGUF file (bad magic bytes); expected a .gguf model or a Hugging Face model folder")]
    NotGguf(PathBuf),

    #[error("{path} is truncated: {detail}")]
    TruncatedGguf { path: PathBuf, detail: String },

    #[error("{path} is not a valid GGUF file: {detail}")]
    BadGguf { path: PathBuf, detail: String },

    #[error("unsupported model architecture `{0}`: Fixpoint runs llama-family models")]
    UnsupportedArchitecture(String),

    #[error(
        "tensor `{name}` has type {dtype}, which Fixpoint cannot load (supported: {supported})"
    )]
    UnsupportedTensorType {
        name: String,
        dtype: String,
        supported: &'static str,
    },

    #[error("model is missing tensor `{0}`")]
    MissingTensor(String),

    #[error("model is missing metadata `{0}`")]
    MissingMetadata(String),

    #[error("bad model config: {0}")]
    BadConfig(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("the prompt is empty")]
    EmptyPrompt,

    #[error("max tokens must be at least 1")]
    NoTokensAsked,

    #[error("token id {id} is not in the model's vocabulary of {vocab}")]
    InvalidToken { id: u32, vocab: usize },

    #[error("the prompt is {tokens} tokens long, but the model's context holds {context}")]
    PromptTooLong { tokens: usize, context: usize },

    #[error(
        "the last message makes a prompt of {tokens} tokens; with {room} kept for the answer, \
         the model's context of {context} has no room for it (shorten it or lower max tokens)"
    )]
    MessageTooLong {
        tokens: usize,
        room: usize,
        context: usize,
    },

    #[error("block size {block} is invalid: it must be between 1 and {max}")]
    InvalidBlockSize { block: usize, max: usize },

    #[error(
        "sampling (temperature {0}) is only available with --mode ar: Jacobi decoding is greedy"
    )]
    SamplingWithJacobi(f64),

    #[error("invalid sampling setting: {0}")]
    InvalidSampling(String),

    #[error("device `{0}` is not available: {1}")]
    DeviceUnavailable(String, String),

    #[error("{path}: {detail}")]
    BadData { path: PathBuf, detail: String },

    #[error("cannot train: {0}")]
    Training(String),

    #[error("default model: {0}")]
    Fetch(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
