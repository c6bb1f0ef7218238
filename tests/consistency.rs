//! The proof that consistency training works: a tiny llama learns a synthetic language from
//! scratch (continue the alphabet, cyclically), its Jacobi trajectories are collected, it is
//! consistency-trained on them, and on held-out prompts it then fixes several tokens per pass
//! while its greedy answers stay the same.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use fixpoint::testing::{tiny_tokenizer, TinySpec};
use fixpoint::train::adamw::{AdamW, AdamWConfig};
use fixpoint::train::batch::causal_mask;
use fixpoint::train::llama::{log_softmax, TrainLlama};
use fixpoint::train::trajectory::{collect_all, CollectConfig, FileSettings, TrajectoryWriter};
use fixpoint::train::{train, LossKind, TrainSettings};
use fixpoint::{
    CancelToken, DecodeOptions, Engine, GenerateRequest, LoadOptions, Mode, Prompt, Tokenizer,
    WeightPolicy,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const BLOCK: usize = 8;

fn spec() -> TinySpec {
    TinySpec {
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 128,
        context: 256,
        tie_embeddings: false,
        seed: 7,
    }
}

/// `len` letters of the cyclic alphabet from `start`, as token ids.
fn letters(tok: &Tokenizer, start: usize, len: usize) -> Vec<u32> {
    let text: String = (0..len)
        .map(|i| ALPHABET[(start + i) % 26] as char)
        .collect();
    tok.encode(&text).unwrap()
}

/// Ordinary next-token training of a fresh random model on the alphabet language.
fn pretrain(tok: &Tokenizer) -> HashMap<String, Tensor> {
    let spec = spec();
    let model =
        TrainLlama::new(spec.config(), spec.random_tensors().unwrap(), &Device::Cpu).unwrap();
    let params = model.params().to_vec();
    let mut adam = AdamW::new(&params, AdamWConfig::default());
    let mut rng = StdRng::seed_from_u64(1);
    let t = 48;
    let mask = causal_mask(t, &Device::Cpu).unwrap();
    let positions: Vec<u32> = (0..t as u32).collect();
    for step in 0..300 {
        let seq = letters(tok, rng.random_range(0..26), t + 1);
        let h = model.hidden(&seq[..t], &positions, &mask).unwrap();
        let logp = log_softmax(&model.logits(&h).unwrap()).unwrap();
        let labels = Tensor::new(&seq[1..], &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let loss = logp
            .gather(&labels, 1)
            .unwrap()
            .mean_all()
            .unwrap()
            .neg()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = params
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        let lr = if step < 200 { 3e-3 } else { 1e-3 };
        adam.update(&params, &g, lr, 1.0).unwrap();
    }
    model.hf_tensors()
}

fn engine_of(dir: &Path) -> Engine {
    Engine::load(
        dir,
        &LoadOptions {
            weights: WeightPolicy::Exact,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Jacobi tokens per pass and the greedy answers on `prompts`.
fn evaluate(engine: &Engine, prompts: &[Vec<u32>]) -> (f64, Vec<Vec<u32>>) {
    let (mut tokens, mut passes) = (0, 0);
    let mut answers = Vec::new();
    for p in prompts {
        let text = engine.tokenizer().decode(p).unwrap();
        let g = engine
            .generate(
                &GenerateRequest {
                    prompt: Prompt::Raw(text),
                    options: DecodeOptions {
                        mode: Mode::Jacobi(BLOCK),
                        max_tokens: 33,
                        ..Default::default()
                    },
                },
                &CancelToken::new(),
                |_| {},
            )
            .unwrap();
        // The first token comes from prefill.
        tokens += g.generated_tokens - 1;
        passes += g.forward_passes;
        answers.push(g.token_ids);
    }
    (tokens as f64 / passes as f64, answers)
}

#[test]
fn consistency_training_raises_tokens_per_pass_and_keeps_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer();
    let base_dir = dir.path().join("base");
    let tensors = pretrain(&tok);
    let base = TinySpec::from_tensors(spec().config(), tensors, &Device::Cpu).unwrap();
    fixpoint::model::save_hf(&base, &base_dir).unwrap();
    tok.save(&base_dir).unwrap();
    let base = engine_of(&base_dir);

    let mut rng = StdRng::seed_from_u64(2);
    let mut prompt = || {
        let len = rng.random_range(4..10);
        letters(&tok, rng.random_range(0..26), len)
    };
    let train_prompts: Vec<Vec<u32>> = (0..40).map(|_| prompt()).collect();
    let held_out: Vec<Vec<u32>> = (0..12).map(|_| prompt()).collect();
    let (before_tpi, before_answers) = evaluate(&base, &held_out);
    // The pretrained model continues the alphabet.
    let want = letters(&tok, 0, 40);
    let first = &before_answers[0];
    assert!(
        want.windows(8).any(|w| w == &first[..8]),
        "pretraining failed: {:?}",
        tok.decode(first).unwrap()
    );

    let data = dir.path().join("trajectories.jsonl");
    let mut writer = TrajectoryWriter::open(
        &data,
        FileSettings {
            model: base_dir.display().to_string(),
            prompts: "synthetic".into(),
            skip: 0,
            collect: CollectConfig {
                block: BLOCK,
                max_new: 32,
                seed: 3,
            },
            tokenizer: tok.fingerprint(),
        },
    )
    .unwrap();
    collect_all(
        base.model(),
        &train_prompts,
        &mut writer,
        tok.stop_ids(),
        &CancelToken::new(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        writer.progress.records >= 80,
        "{:?}",
        writer.progress.records
    );

    let (global_tpi, global_same) = consistency_train(
        dir.path(),
        &base_dir,
        &data,
        LossKind::Global,
        &held_out,
        &before_answers,
    );
    let (local_tpi, local_same) = consistency_train(
        dir.path(),
        &base_dir,
        &data,
        LossKind::Local,
        &held_out,
        &before_answers,
    );
    eprintln!(
        "block {BLOCK}, tokens per pass on {} held-out prompts: base {before_tpi:.2}, \
         global loss {global_tpi:.2} ({global_same} answers unchanged), \
         local loss {local_tpi:.2} ({local_same} unchanged)",
        held_out.len()
    );
    assert!(
        before_tpi < 1.6,
        "the base model is already fast: {before_tpi}"
    );
    assert!(
        global_tpi >= 2.0,
        "global: tokens per pass {before_tpi:.2} -> {global_tpi:.2}"
    );
    assert!(
        local_tpi > before_tpi + 0.5,
        "local: {before_tpi:.2} -> {local_tpi:.2}"
    );
    for same in [global_same, local_same] {
        assert!(
            same * 4 >= held_out.len() * 3,
            "only {same} answers unchanged"
        );
    }
}

/// Consistency-trains the base model with `loss`; returns Jacobi tokens per pass on the
/// held-out prompts and how many greedy answers stayed as before.
fn consistency_train(
    dir: &Path,
    base: &Path,
    data: &Path,
    loss: LossKind,
    held_out: &[Vec<u32>],
    before: &[Vec<u32>],
) -> (f64, usize) {
    let out = dir.join(format!("cllm-{loss:?}"));
    let mut settings = TrainSettings::new(base.to_path_buf(), data.to_path_buf(), out.clone());
    settings.steps = Some(1000);
    settings.lr = 3e-3;
    settings.checkpoint_every = 1000;
    settings.loss = loss;
    let outcome = train(&settings, false, &CancelToken::new(), &mut |_| {}).unwrap();
    let h = &outcome.history;
    let first: f32 = h[..50].iter().map(|s| s.consistency_loss).sum();
    let last: f32 = h[h.len() - 50..].iter().map(|s| s.consistency_loss).sum();
    assert!(
        last < first * 0.5,
        "{loss:?}: consistency loss {first} -> {last}"
    );
    let (tpi, answers) = evaluate(&engine_of(&out), held_out);
    let same = before.iter().zip(&answers).filter(|(a, b)| a == b).count();
    (tpi, same)
}
