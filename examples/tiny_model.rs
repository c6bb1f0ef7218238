//! Writes a small random llama as a GGUF file, for the app's end-to-end test:
//! `cargo run --release --example tiny_model -- OUT.gguf`. Big enough that an answer takes a
//! few seconds to stream (so Stop can be pressed mid-answer), small enough to build instantly.

use candle_core::quantized::GgmlDType;
use fixpoint::testing::{write_gguf, TinySpec};

fn main() -> fixpoint::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tiny-e2e.gguf".into());
    let spec = TinySpec {
        hidden: 256,
        layers: 4,
        heads: 8,
        kv_heads: 2,
        intermediate: 768,
        context: 4096,
        tie_embeddings: true,
        seed: 42,
    };
    write_gguf(
        std::path::Path::new(&out),
        &spec.config(),
        &spec.random_tensors()?,
        GgmlDType::Q8_0,
        |_| {},
    )?;
    eprintln!("wrote {out}");
    Ok(())
}
