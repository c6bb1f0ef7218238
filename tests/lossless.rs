//! Jacobi decoding must reproduce greedy autoregressive decoding token for token.

use std::path::Path;

use candle_core::Device;
use fixpoint::testing::{tiny_tokenizer, TinySpec};
use fixpoint::{
    CancelToken, DecodeOptions, Engine, GenerateRequest, LoadOptions, Message, Mode, Prompt,
};
use proptest::prelude::*;

/// `fast`: our CPU kernels (Q8 weights, int8 activations); else candle with f32 weights.
fn tiny_engine(spec: &TinySpec, fast: bool) -> Engine {
    let model = if fast {
        spec.build_fast()
    } else {
        spec.build(&Device::Cpu)
    }
    .expect("tiny model builds");
    Engine::from_parts(model, tiny_tokenizer(), Path::new("tiny"))
}

fn run(
    engine: &Engine,
    prompt: &Prompt,
    mode: Mode,
    max_tokens: usize,
    seed: u64,
) -> fixpoint::Generation {
    let request = GenerateRequest {
        prompt: prompt.clone(),
        options: DecodeOptions {
            mode,
            max_tokens,
            seed,
            ..Default::default()
        },
    };
    engine
        .generate(&request, &CancelToken::new(), |_| {})
        .expect("generation succeeds")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn jacobi_equals_greedy_on_random_models(
        seed in 0u64..1_000,
        gqa in any::<bool>(),
        layers in 1usize..3,
        block in 1usize..=32,
        max_tokens in 1usize..=200,
        prompt in "[a-z ]{1,40}",
        fast in any::<bool>(),
    ) {
        let spec = TinySpec {
            seed,
            kv_heads: if gqa { 2 } else { 4 },
            layers,
            ..Default::default()
        };
        let engine = tiny_engine(&spec, fast);
        let prompt = Prompt::Raw(prompt);
        let ar = run(&engine, &prompt, Mode::Autoregressive, max_tokens, seed);
        let jacobi = run(&engine, &prompt, Mode::Jacobi(block), max_tokens, seed);
        prop_assert_eq!(&jacobi.token_ids, &ar.token_ids);
        prop_assert_eq!(jacobi.stop_reason, ar.stop_reason);
        prop_assert!(jacobi.forward_passes <= ar.forward_passes.max(1));
    }
}

#[test]
fn every_pass_fixes_at_least_one_token() {
    let engine = tiny_engine(&TinySpec::default(), true);
    let mut accepted = Vec::new();
    let request = GenerateRequest {
        prompt: Prompt::Raw("hello there".into()),
        options: DecodeOptions {
            mode: Mode::Jacobi(8),
            max_tokens: 100,
            ..Default::default()
        },
    };
    let out = engine
        .generate(&request, &CancelToken::new(), |e| {
            if let fixpoint::DecodeEvent::Iteration(it) = e {
                assert_eq!(it.before.len(), it.after.len());
                assert_eq!(it.before[0], it.after[0]);
                accepted.push(it.accepted);
            }
        })
        .unwrap();
    assert_eq!(accepted.len(), out.forward_passes);
    assert!(accepted.iter().all(|&a| a >= 1));
}

/// The real default model, when it is installed (CI fetches it first).
#[test]
fn jacobi_equals_greedy_on_the_default_model() {
    let path = std::env::var_os("FIXPOINT_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(fixpoint::model_store::default_model_path);
    if !path.exists() {
        eprintln!(
            "skipping: no model at {} (run `fixpoint models fetch`)",
            path.display()
        );
        return;
    }
    let engine = Engine::load(&path, &LoadOptions::default()).unwrap();
    let prompts = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "Write a short poem about the sea.",
    ];
    for (i, p) in prompts.iter().enumerate() {
        let prompt = Prompt::Chat(vec![Message::user(*p)]);
        let ar = run(&engine, &prompt, Mode::Autoregressive, 256, 0);
        let block = [8, 16][i % 2];
        let jacobi = run(&engine, &prompt, Mode::Jacobi(block), 256, 0);
        assert_eq!(
            jacobi.token_ids, ar.token_ids,
            "prompt {p:?}, block {block}"
        );
        eprintln!(
            "{p:?}: {} tokens, AR {:.1} tok/s, Jacobi({block}) {:.1} tok/s at {:.2} tokens/pass",
            ar.generated_tokens,
            ar.tokens_per_second,
            jacobi.tokens_per_second,
            jacobi.tokens_per_iteration
        );
    }
}
