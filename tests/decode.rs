//! Stop conditions, cancellation and streaming, shared by both decoders.

use std::path::Path;

use candle_core::Device;
use fixpoint::testing::{tiny_tokenizer, TinySpec};
use fixpoint::{
    CancelToken, DecodeEvent, DecodeOptions, Engine, GenerateRequest, Mode, Prompt, StopReason,
};

fn engine() -> Engine {
    let model = TinySpec {
        seed: 7,
        ..Default::default()
    }
    .build(&Device::Cpu)
    .unwrap();
    Engine::from_parts(model, tiny_tokenizer(), Path::new("tiny"))
}

fn request(mode: Mode, max_tokens: usize, stop: Vec<String>) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Raw("the quick brown fox".into()),
        options: DecodeOptions {
            mode,
            max_tokens,
            stop,
            ..Default::default()
        },
    }
}

const MODES: [Mode; 3] = [Mode::Autoregressive, Mode::Jacobi(1), Mode::Jacobi(6)];

#[test]
fn stop_string_cuts_the_text_and_is_never_streamed() {
    let e = engine();
    let full = e
        .generate(
            &request(Mode::Autoregressive, 60, vec![]),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "need some text: {:?}", full.text);
    let stop: String = chars[8..11].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    for mode in MODES {
        let mut streamed = String::new();
        let out = e
            .generate(
                &request(mode, 60, vec![stop.clone()]),
                &CancelToken::new(),
                |ev| {
                    if let DecodeEvent::Tokens { text, .. } = ev {
                        streamed.push_str(&text);
                    }
                },
            )
            .unwrap();
        assert_eq!(out.stop_reason, StopReason::StopString, "{mode:?}");
        assert_eq!(out.text, full.text[..cut], "{mode:?}");
        assert_eq!(streamed, out.text, "{mode:?}");
    }
}

#[test]
fn max_tokens_is_exact_and_streamed_text_is_the_result() {
    let e = engine();
    for mode in MODES {
        for max in [1, 2, 7, 33] {
            let mut streamed = String::new();
            let mut ids = Vec::new();
            let out = e
                .generate(&request(mode, max, vec![]), &CancelToken::new(), |ev| {
                    if let DecodeEvent::Tokens { text, ids: i } = ev {
                        streamed.push_str(&text);
                        ids.extend(i);
                    }
                })
                .unwrap();
            if out.stop_reason == StopReason::MaxTokens {
                assert_eq!(out.generated_tokens, max, "{mode:?}");
            }
            assert!(out.generated_tokens <= max);
            assert_eq!(ids, out.token_ids);
            assert_eq!(streamed, out.text);
            assert_eq!(out.text, e.tokenizer().decode(&out.token_ids).unwrap());
        }
    }
}

#[test]
fn cancel_stops_before_the_next_pass() {
    let e = engine();
    for mode in MODES {
        let cancel = CancelToken::new();
        let mut passes_after_cancel = 0;
        let out = e
            .generate(&request(mode, 200, vec![]), &cancel, |ev| match ev {
                DecodeEvent::Iteration(_) if cancel.is_cancelled() => passes_after_cancel += 1,
                DecodeEvent::Tokens { .. } => cancel.cancel(),
                _ => {}
            })
            .unwrap();
        assert_eq!(out.stop_reason, StopReason::Cancelled, "{mode:?}");
        assert!(
            out.forward_passes <= 1,
            "{mode:?}: {} passes",
            out.forward_passes
        );
        assert!(passes_after_cancel <= 1);
    }
}

#[test]
fn cancel_from_another_thread() {
    let e = engine();
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| e.generate(&request(Mode::Jacobi(4), 100_000, vec![]), &cancel, |_| {}));
        std::thread::sleep(std::time::Duration::from_millis(50));
        c2.cancel();
        h.join().unwrap()
    })
    .unwrap();
    assert!(matches!(
        out.stop_reason,
        StopReason::Cancelled | StopReason::ContextFull | StopReason::Eos
    ));
}

#[test]
fn auto_block_is_lossless_and_reports_the_size_it_used() {
    let e = engine();
    let ar = e
        .generate(
            &request(Mode::Autoregressive, 150, vec![]),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    let mut sizes = Vec::new();
    let auto = e
        .generate(
            &request(Mode::JacobiAuto(16), 150, vec![]),
            &CancelToken::new(),
            |ev| {
                if let DecodeEvent::Iteration(it) = ev {
                    sizes.push(it.before.len());
                }
            },
        )
        .unwrap();
    assert_eq!(auto.token_ids, ar.token_ids);
    assert!(sizes.iter().all(|&n| (1..=16).contains(&n)));
    assert!(
        sizes.contains(&auto.block),
        "{} not among {sizes:?}",
        auto.block
    );
}
