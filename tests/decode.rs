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

fn chat(messages: &[(&str, &str)], mode: Mode) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat(
            messages
                .iter()
                .map(|(role, text)| fixpoint::Message::new(*role, *text))
                .collect(),
        ),
        options: DecodeOptions {
            mode,
            max_tokens: 40,
            ..Default::default()
        },
    }
}

/// An engine on the fast CPU forward, whose results do not depend on how many tokens share a
/// pass: the one that reuses a previous prompt's cache entries.
fn fast_engine() -> Engine {
    fast_engine_with_context(TinySpec::default().context)
}

fn fast_engine_with_context(context: usize) -> Engine {
    // An untied head: with the embedding as its head a random model only repeats its last
    // input token, and answers compared token by token would agree whatever the cache held.
    let model = TinySpec {
        seed: 2,
        context,
        tie_embeddings: false,
        ..Default::default()
    }
    .build_fast()
    .unwrap();
    Engine::from_parts(model, tiny_tokenizer(), Path::new("tiny"))
}

/// The engine's answer to a conversation.
fn ask(e: &Engine, messages: &[(&str, &str)], mode: Mode) -> fixpoint::Generation {
    e.generate(&chat(messages, mode), &CancelToken::new(), |_| {})
        .unwrap()
}

/// Whether two sets of logits are the same bits.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn a_chat_turn_reuses_the_last_turns_cache_and_answers_as_from_scratch() {
    for mode in [Mode::Autoregressive, Mode::JacobiAuto(8)] {
        let e = fast_engine();
        let go = |e: &Engine, r: &GenerateRequest| {
            let mut reported = None;
            let g = e
                .generate(r, &CancelToken::new(), |ev| {
                    if let DecodeEvent::Prefill { reused_tokens, .. } = ev {
                        reported = Some(reused_tokens);
                    }
                })
                .unwrap();
            assert_eq!(reported, Some(g.reused_prompt_tokens));
            g
        };
        let first = go(&e, &chat(&[("user", "the quick brown fox")], mode));
        assert_eq!(first.reused_prompt_tokens, 0, "nothing to reuse yet");
        let history = [
            ("user", "the quick brown fox"),
            ("assistant", first.text.as_str()),
            ("user", "jumps over the lazy dog"),
        ];
        let second = go(&e, &chat(&history, mode));
        // The template and the first turn's prompt at least, all but the last token at most.
        assert!(
            second.reused_prompt_tokens >= first.prompt_tokens
                && second.reused_prompt_tokens < second.prompt_tokens,
            "{} of {} reused after a prompt of {}",
            second.reused_prompt_tokens,
            second.prompt_tokens,
            first.prompt_tokens
        );
        let fresh = go(&fast_engine(), &chat(&history, mode));
        assert_eq!(fresh.reused_prompt_tokens, 0);
        assert_eq!(second.token_ids, fresh.token_ids, "{mode:?}");
        assert_eq!(second.text, fresh.text);
        // The same request again: only the prompt's last token goes through the model.
        let again = go(&e, &chat(&history, mode));
        assert_eq!(again.reused_prompt_tokens, again.prompt_tokens - 1);
        assert_eq!(again.token_ids, fresh.token_ids);
        // A different conversation shares only the template's start.
        let other = go(&e, &chat(&[("user", "hello there")], mode));
        assert!(other.reused_prompt_tokens < first.prompt_tokens);
        let other_fresh = go(&fast_engine(), &chat(&[("user", "hello there")], mode));
        assert_eq!(other.token_ids, other_fresh.token_ids);
    }
}

#[test]
fn a_continued_answer_is_the_longer_answer() {
    let question = vec![fixpoint::Message::user("the quick brown fox")];
    for mode in [Mode::Autoregressive, Mode::Jacobi(4), Mode::JacobiAuto(8)] {
        let e = fast_engine();
        let run = |prompt: Prompt, max_tokens: usize| {
            let options = DecodeOptions {
                mode,
                max_tokens,
                ..Default::default()
            };
            e.generate(
                &GenerateRequest { prompt, options },
                &CancelToken::new(),
                |_| {},
            )
            .unwrap()
        };
        let whole = run(Prompt::Chat(question.clone()), 40);
        assert_eq!(whole.generated_tokens, 40, "needs an answer that runs on");
        let mut distinct = whole.token_ids.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 10,
            "needs an answer that varies: {distinct:?}"
        );
        let start = run(Prompt::Chat(question.clone()), 15);
        assert_eq!(start.stop_reason, StopReason::MaxTokens);
        let rest = run(
            Prompt::Continue {
                chat: question.clone(),
                answer: start.token_ids.clone(),
            },
            25,
        );
        // The answer's cache is still there: only its last token goes through the model.
        assert_eq!(rest.prompt_tokens, start.prompt_tokens + 15);
        assert_eq!(
            rest.reused_prompt_tokens,
            rest.prompt_tokens - 1,
            "{mode:?}"
        );
        let joined = start.continued_by(rest, e.tokenizer()).unwrap();
        assert_eq!(joined.token_ids, whole.token_ids, "{mode:?}");
        assert_eq!(joined.text, whole.text);
        assert_eq!(
            (
                joined.generated_tokens,
                joined.stop_reason,
                joined.prompt_tokens
            ),
            (40, whole.stop_reason, whole.prompt_tokens)
        );
        // Continued on an engine that never saw the start: the same tokens.
        let cold = fast_engine()
            .generate(
                &GenerateRequest {
                    prompt: Prompt::Continue {
                        chat: question.clone(),
                        answer: whole.token_ids[..15].to_vec(),
                    },
                    options: DecodeOptions {
                        mode,
                        max_tokens: 25,
                        ..Default::default()
                    },
                },
                &CancelToken::new(),
                |_| {},
            )
            .unwrap();
        assert_eq!(cold.token_ids, whole.token_ids[15..]);
    }
    let bad = Prompt::Continue {
        chat: question,
        answer: vec![3, 1 << 30],
    };
    let err = fast_engine().prompt_ids(&bad).unwrap_err();
    assert!(matches!(err, fixpoint::Error::InvalidToken { id, .. } if id == 1 << 30));
}

#[test]
fn a_cancelled_answer_leaves_a_cache_the_next_prompt_can_use() {
    let e = fast_engine();
    let cancel = CancelToken::new();
    let mut passes = 0;
    let cut = e
        .generate(
            &chat(&[("user", "the quick brown fox")], Mode::Jacobi(4)),
            &cancel,
            |ev| {
                if let DecodeEvent::Iteration(_) = ev {
                    passes += 1;
                    if passes == 3 {
                        cancel.cancel();
                    }
                }
            },
        )
        .unwrap();
    assert_eq!(cut.stop_reason, StopReason::Cancelled);
    let history = [
        ("user", "the quick brown fox"),
        ("assistant", cut.text.as_str()),
        ("user", "and then?"),
    ];
    let next = ask(&e, &history, Mode::Autoregressive);
    assert!(next.reused_prompt_tokens > 0);
    let fresh = ask(&fast_engine(), &history, Mode::Autoregressive);
    assert_eq!(next.token_ids, fresh.token_ids);
}

#[test]
fn candle_models_compute_every_prompt_again() {
    // Its matmuls round differently for different shapes, so reusing entries could change an
    // answer.
    let e = engine();
    for _ in 0..2 {
        let g = ask(&e, &[("user", "the quick brown fox")], Mode::Autoregressive);
        assert_eq!(g.reused_prompt_tokens, 0);
    }
}

#[test]
fn a_reused_cache_holds_the_same_entries_as_one_filled_from_scratch() {
    use fixpoint::decode::generate_in;
    use fixpoint::model::Logits;
    let e = fast_engine();
    let (model, tok) = (e.model(), e.tokenizer());
    let ids = |messages: &[(&str, &str)]| {
        e.prompt_ids(&chat(messages, Mode::Autoregressive).prompt)
            .unwrap()
    };
    let shared = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let mut cache = model.new_cache();
    let mut last = None;
    // A conversation, then a different one, then the first again: every kind of overlap.
    for (i, prompt) in [
        ids(&[("user", "the quick brown fox")]),
        ids(&[
            ("user", "the quick brown fox"),
            ("assistant", "jumps"),
            ("user", "over the lazy dog"),
        ]),
        ids(&[("user", "hello there")]),
        ids(&[
            ("user", "the quick brown fox"),
            ("assistant", "jumps"),
            ("user", "over"),
        ]),
    ]
    .into_iter()
    .enumerate()
    {
        let mode = if i % 2 == 0 {
            Mode::Autoregressive
        } else {
            Mode::Jacobi(4)
        };
        let opts = DecodeOptions {
            mode,
            max_tokens: 12,
            ..Default::default()
        };
        let run = |cache: &mut fixpoint::model::KvCache| {
            generate_in(
                model,
                tok,
                cache,
                &prompt,
                &opts,
                &CancelToken::new(),
                None,
                |_| {},
            )
            .unwrap()
        };
        let held = cache.tokens().expect("every forward recorded").to_vec();
        let g = run(&mut cache);
        assert_eq!(
            g.reused_prompt_tokens,
            shared(&held, &prompt).min(prompt.len() - 1)
        );
        let mut fresh = model.new_cache();
        let f = run(&mut fresh);
        assert_eq!((f.reused_prompt_tokens, &f.token_ids), (0, &g.token_ids));
        assert_eq!(cache.tokens(), fresh.tokens());
        // Entries equal bit for bit: the next token's logits are.
        let next = [g.token_ids.last().copied().unwrap_or(3)];
        let (mut a, mut b) = (cache.clone(), fresh.clone());
        let la = model.forward(&next, &mut a, Logits::Last).unwrap();
        let lb = model.forward(&next, &mut b, Logits::Last).unwrap();
        assert!(same_bits(&la, &lb), "prompt {i}");
        last = Some(g.reused_prompt_tokens);
    }
    assert!(last.unwrap() > 0);
}

#[test]
fn going_back_to_an_earlier_conversation_reuses_its_cache() {
    let e = fast_engine();
    let go = |messages: &[(&str, &str)]| ask(&e, messages, Mode::JacobiAuto(8));
    let a1 = go(&[("user", "the quick brown fox")]);
    let b1 = go(&[("user", "hello there, how are you")]);
    let a = [
        ("user", "the quick brown fox"),
        ("assistant", a1.text.as_str()),
        ("user", "jumps over"),
    ];
    let b = [
        ("user", "hello there, how are you"),
        ("assistant", b1.text.as_str()),
        ("user", "fine"),
    ];
    // Each picks up its own conversation's cache, not the latest one.
    let a2 = go(&a);
    assert!(a2.reused_prompt_tokens >= a1.prompt_tokens, "{a2:?}");
    let b2 = go(&b);
    assert!(b2.reused_prompt_tokens >= b1.prompt_tokens, "{b2:?}");
    // Regenerating the answer: the prompt parts from the cache at the old answer, so the new
    // answer starts from a copy of the prompt's entries.
    let again = go(&a);
    assert_eq!(again.reused_prompt_tokens, again.prompt_tokens - 1);
    assert_eq!(again.token_ids, a2.token_ids);
    for (messages, got) in [(&a, &a2), (&b, &b2)] {
        let fresh = ask(&fast_engine(), messages, Mode::JacobiAuto(8));
        assert_eq!(fresh.token_ids, got.token_ids);
    }
}

#[test]
fn a_copied_prefix_continues_like_the_cache_it_came_from() {
    use fixpoint::model::Logits;
    let e = fast_engine();
    let model = e.model();
    let ids: Vec<u32> = (0..300u32).map(|i| 3 + i * 7 % 250).collect();
    let mut cache = model.new_cache();
    // Grown past one step of its buffers, then cut inside them.
    model
        .forward(&ids[..280], &mut cache, Logits::Last)
        .unwrap();
    for len in [0, 1, 100, 257, 280] {
        let mut copy = cache.copy_prefix(len);
        assert_eq!(copy.len(), len);
        assert_eq!(copy.tokens(), Some(&ids[..len]));
        let mut cut = cache.clone();
        cut.truncate(len);
        let a = model
            .forward(&ids[len..len + 20], &mut copy, Logits::All)
            .unwrap();
        let b = model
            .forward(&ids[len..len + 20], &mut cut, Logits::All)
            .unwrap();
        assert!(same_bits(&a, &b), "len {len}");
    }
    // The original is untouched.
    assert_eq!(cache.tokens(), Some(&ids[..280]));
}

#[test]
fn a_long_conversation_keeps_its_latest_messages_and_a_steady_start() {
    let e = fast_engine();
    let context = e.model().config().context_length;
    let (max_tokens, budget, step) = (100, context - 100, context / 4);
    let mut history = vec![fixpoint::Message::new("system", "be brief")];
    let mut starts = Vec::new();
    for turn in 0..80 {
        history.push(fixpoint::Message::user(format!(
            "question {turn}: the quick brown fox"
        )));
        let (kept, dropped) = e.fit_chat(&history, max_tokens).unwrap();
        let ids = e.prompt_ids(&Prompt::Chat(kept.clone())).unwrap();
        assert!(ids.len() <= budget, "turn {turn}: {} tokens", ids.len());
        assert_eq!(kept[0].role, "system");
        assert_eq!(kept[1].role, "user");
        assert_eq!(&kept[1..], &history[1 + dropped..]);
        // Not much more than needed: a step is a quarter of the context in the messages' own
        // tokens (the template's markers come on top).
        if dropped > 0 {
            assert!(
                ids.len() + 2 * step > budget,
                "turn {turn}: {} tokens",
                ids.len()
            );
        }
        starts.push(dropped);
        history.push(fixpoint::Message::assistant(
            "the lazy dog sleeps in the sun",
        ));
    }
    // The start moved, forward only, and stayed put for several turns at a time.
    let cut = starts.iter().filter(|&&d| d > 0).count();
    let moves = starts.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(cut > 0 && moves > 1, "{starts:?}");
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(moves * 2 < cut, "{starts:?}");
    // A message too long for the context with the answer's room is an error that says so.
    let long = "the quick brown fox ".repeat(200);
    let err = e
        .fit_chat(&[fixpoint::Message::user(long)], max_tokens)
        .unwrap_err();
    assert!(
        matches!(err, fixpoint::Error::MessageTooLong { .. }),
        "{err}"
    );
}

/// An engine whose context holds prompts of several prefill chunks, and such a prompt.
fn long_prompt_engine() -> (Engine, GenerateRequest) {
    let engine = fast_engine_with_context(4096);
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    let request = GenerateRequest {
        prompt: Prompt::Raw(text),
        options: DecodeOptions {
            mode: Mode::Autoregressive,
            max_tokens: 8,
            ..Default::default()
        },
    };
    (engine, request)
}

#[test]
fn a_long_prompt_reports_its_way_through_the_model() {
    let (e, long) = long_prompt_engine();
    let mut events = Vec::new();
    let g = e
        .generate(&long, &CancelToken::new(), |ev| events.push(ev))
        .unwrap();
    let progress: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|ev| match ev {
            DecodeEvent::PrefillProgress { done, total } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    assert!(progress.len() >= 2, "{} prompt tokens", g.prompt_tokens);
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(progress.iter().all(|&(_, total)| total == g.prompt_tokens));
    assert_eq!(progress.last().unwrap().0, g.prompt_tokens);
    // Then the prompt is through, then the answer.
    let prefill = events
        .iter()
        .position(|ev| matches!(ev, DecodeEvent::Prefill { .. }))
        .unwrap();
    assert!(matches!(
        events[prefill - 1],
        DecodeEvent::PrefillProgress { .. }
    ));
    assert_eq!(g.generated_tokens, 8);
    // A prompt of one chunk reports nothing on the way.
    let mut short = Vec::new();
    e.generate(
        &request(Mode::Autoregressive, 4, vec![]),
        &CancelToken::new(),
        |ev| short.push(ev),
    )
    .unwrap();
    assert!(!short
        .iter()
        .any(|ev| matches!(ev, DecodeEvent::PrefillProgress { .. })));
}

#[test]
fn a_stop_while_a_long_prompt_goes_through_ends_it_between_chunks() {
    let (e, request) = long_prompt_engine();
    let cancel = CancelToken::new();
    let mut events = Vec::new();
    let cut = e
        .generate(&request, &cancel, |ev| {
            if let DecodeEvent::PrefillProgress { .. } = ev {
                cancel.cancel();
            }
            events.push(ev);
        })
        .unwrap();
    assert_eq!(cut.stop_reason, StopReason::Cancelled);
    assert_eq!((cut.generated_tokens, cut.text.as_str()), (0, ""));
    // One chunk went through, nothing after it.
    assert_eq!(events.len(), 1, "{events:?}");
    // The next answer starts from the chunk that went through, and is the same as from scratch.
    let next = e.generate(&request, &CancelToken::new(), |_| {}).unwrap();
    let DecodeEvent::PrefillProgress { done, .. } = events[0] else {
        unreachable!("only progress was recorded")
    };
    assert_eq!(next.reused_prompt_tokens, done);
    let fresh = long_prompt_engine()
        .0
        .generate(&request, &CancelToken::new(), |_| {})
        .unwrap();
    assert_eq!(next.token_ids, fresh.token_ids);
}
