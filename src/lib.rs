//! Fixpoint: a local LLM engine that decodes several tokens per forward pass.
//!
//! Data flows one way: text -> [`tokenizer`] -> token ids -> [`model`] (a llama-family
//! transformer on candle with a truncatable KV cache) -> [`decode`] (autoregressive or Jacobi)
//! -> [`DecodeEvent`]s -> the CLI or the desktop app. [`Engine`] ties a loaded model to its
//! tokenizer and is the one value callers hold.
//!
//! ```no_run
//! use fixpoint::{DecodeOptions, Engine, GenerateRequest, LoadOptions, Message, Mode, Prompt};
//! # fn main() -> fixpoint::Result<()> {
//! let engine = Engine::load(&fixpoint::model_store::default_model_path(), &LoadOptions::default())?;
//! let request = GenerateRequest {
//!     prompt: Prompt::Chat(vec![Message::user("What is 7 * 6?")]),
//!     options: DecodeOptions { mode: Mode::Jacobi(8), max_tokens: 64, ..Default::default() },
//! };
//! let out = engine.generate(&request, &Default::default(), |event| println!("{event:?}"))?;
//! println!("{} ({:.2} tokens per pass)", out.text, out.tokens_per_iteration);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod decode;
pub mod device;
mod engine;
mod error;
mod fsutil;
pub mod kernels;
pub mod model;
pub mod model_store;
pub mod testing;
pub mod tokenizer;
pub mod train;
pub mod vector_probe;

pub use decode::{
    BlockSpec, CancelToken, DecodeEvent, DecodeOptions, Generation, Guesses, Iteration, Mode,
    Sampling, StopReason,
};
pub use device::DeviceChoice;
pub use engine::{Engine, GenerateRequest, LoadOptions, ModelInfo, Prompt};
pub use error::{Error, Result};
pub use fsutil::write_atomic;
pub use model::WeightPolicy;
pub use tokenizer::{Message, Tokenizer};
