//! Prints the greedy prediction at every position of a token sequence and saves the logits
//! (f32, little endian, rows x vocab) for comparison with a reference implementation.
//! `cargo run --release --example dump_logits -- MODEL IDS(comma-separated) OUT.bin [exact]`
use fixpoint::model::{argmax_rows, Logits};
use fixpoint::{Engine, LoadOptions, WeightPolicy};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ids: Vec<u32> = args[2].split(',').map(|s| s.parse().unwrap()).collect();
    let weights = if args.get(4).is_some_and(|a| a == "exact") {
        WeightPolicy::Exact
    } else {
        WeightPolicy::Fast
    };
    let engine = Engine::load(
        args[1].as_ref(),
        &LoadOptions {
            weights,
            ..Default::default()
        },
    )?;
    let mut cache = engine.model().new_cache();
    let logits = engine.model().forward(&ids, &mut cache, Logits::All)?;
    println!(
        "{:?}",
        argmax_rows(&logits, engine.model().config().vocab_size)
    );
    let mut f = std::fs::File::create(&args[3])?;
    for x in logits {
        f.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}
