//! The app's commands on a tiny model: streaming through a real `Channel`, persistence,
//! stop, regenerate, race, and the IPC path with the real capability (ACL) on the mock runtime.

use std::sync::{Arc, Mutex};

use fixpoint::testing::{tiny_tokenizer, TinySpec};
use fixpoint::{CancelToken, Engine, GenerateRequest, Message, Prompt};
use fixpoint_desktop::chat::{self, ChatEvent, Turn};
use fixpoint_desktop::db::{ChatSettings, Db};
use fixpoint_desktop::{commands, AppError, AppState};
use serde_json::Value;
use tauri::ipc::{Channel, InvokeResponseBody};
use tauri::test::{get_ipc_response, mock_builder, INVOKE_KEY};
use tauri::Manager;

fn tiny_engine(context: usize) -> Engine {
    // An untied head: with the embedding as its head a random model only repeats its last
    // input token, and answers compared token by token would agree whatever went wrong.
    let spec = TinySpec {
        context,
        seed: 2,
        tie_embeddings: false,
        ..Default::default()
    };
    Engine::from_parts(
        spec.build_fast().unwrap(),
        tiny_tokenizer(),
        std::path::Path::new("tiny"),
    )
}

fn state_with_model() -> AppState {
    let state = AppState::new(Db::in_memory().unwrap());
    state.set_engine(tiny_engine(512));
    state
}

/// A Channel that records every message as JSON.
fn recording_channel<T: serde::Serialize>() -> (Channel<T>, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let channel = Channel::new(move |body| {
        let v = match body {
            InvokeResponseBody::Json(s) => serde_json::from_str(&s).unwrap(),
            InvokeResponseBody::Raw(b) => serde_json::from_slice(&b).unwrap(),
        };
        sink.lock().unwrap().push(v);
        Ok(())
    });
    (channel, got)
}

/// A new conversation with these settings; its id.
fn conversation(state: &AppState, title: &str, settings: ChatSettings) -> i64 {
    state
        .with_db(|db| db.create_conversation(title, &settings))
        .unwrap()
        .id
}

fn mock_app(state: AppState) -> tauri::App<tauri::test::MockRuntime> {
    fixpoint_desktop::builder(state)
        .build(tauri::generate_context!())
        .expect("mock app builds")
}

#[test]
fn an_answer_streams_through_a_channel_and_is_saved() {
    let app = mock_app(state_with_model());
    let state = app.state::<AppState>();
    let c = conversation(
        &state,
        fixpoint_desktop::NEW_CHAT_TITLE,
        ChatSettings {
            block: "4".into(),
            max_tokens: 40,
            ..Default::default()
        },
    );
    let (channel, got) = recording_channel::<ChatEvent>();
    let saved = tauri::async_runtime::block_on(commands::send_message(
        app.handle().clone(),
        c,
        "count to ten".into(),
        channel,
    ))
    .unwrap();

    let events = got.lock().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"done"));
    let iterations: Vec<&Value> = events.iter().filter(|e| e["kind"] == "iteration").collect();
    let done = events.last().unwrap();
    assert_eq!(
        iterations.len() as u64,
        done["stats"]["forward_passes"].as_u64().unwrap(),
        "one iteration event per forward pass"
    );
    for (i, it) in iterations.iter().enumerate() {
        assert_eq!(
            it["index"].as_u64().unwrap(),
            i as u64,
            "iterations in order"
        );
        assert_eq!(
            it["after"].as_array().unwrap().len(),
            it["after_ids"].as_array().unwrap().len()
        );
    }
    let text: String = events
        .iter()
        .filter(|e| e["kind"] == "text")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, saved.content, "the streamed text is the saved answer");

    let messages = state.with_db(|db| db.messages(c)).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].content, "count to ten");
    assert_eq!(
        messages[1]
            .trajectory
            .as_ref()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        iterations.len()
    );
    let renamed = state.with_db(|db| db.conversation(c)).unwrap();
    assert_eq!(renamed.title, "count to ten");

    // Regenerate replaces the answer instead of adding one.
    let (channel, _) = recording_channel::<ChatEvent>();
    tauri::async_runtime::block_on(commands::regenerate(app.handle().clone(), c, channel)).unwrap();
    assert_eq!(state.with_db(|db| db.messages(c)).unwrap().len(), 2);
}

#[test]
fn stop_cancels_within_a_pass_and_keeps_what_was_shown() {
    let state = AppState::new(Db::in_memory().unwrap());
    state.set_engine(tiny_engine(4096));
    let c = conversation(
        &state,
        "long",
        ChatSettings {
            block: "4".into(),
            max_tokens: 4000,
            ..Default::default()
        },
    );
    let mut passes = 0;
    let saved = chat::answer(&state, c, Turn::Ask("go".into()), &mut |e| {
        if let ChatEvent::Iteration(_) = e {
            passes += 1;
            if passes == 5 {
                assert!(state.cancel_job());
            }
        }
    })
    .unwrap();
    assert_eq!(passes, 5, "no pass after the stop");
    let stats = saved.stats.unwrap();
    assert_eq!(stats["stop_reason"], "cancelled");
    assert_eq!(stats["forward_passes"], 5);
    // The job slot is free again.
    assert!(!state.cancel_job());
}

#[test]
fn errors_come_back_typed() {
    let state = AppState::new(Db::in_memory().unwrap());
    let c = conversation(&state, "x", ChatSettings::default());
    let err = chat::answer(&state, c, Turn::Ask("hi".into()), &mut |_| {}).unwrap_err();
    assert!(matches!(err, AppError::NoModel));
    assert_eq!(serde_json::to_value(&err).unwrap()["kind"], "no_model");

    state.set_engine(tiny_engine(512));
    let bad = ChatSettings {
        block: "0".into(),
        ..Default::default()
    };
    state.with_db(|db| db.update_settings(c, &bad)).unwrap();
    let err = chat::answer(&state, c, Turn::Ask("hi".into()), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("block"), "{err}");
    let err = chat::answer(&state, 999, Turn::Ask("hi".into()), &mut |_| {}).unwrap_err();
    assert!(matches!(err, AppError::NoSuchConversation(999)));
    let missing =
        fixpoint_desktop::models::load(&state, std::path::Path::new("/nope.gguf")).unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
}

#[test]
fn a_regenerate_that_fails_keeps_the_old_answer() {
    let app = mock_app(state_with_model());
    let state = app.state::<AppState>();
    let c = conversation(
        &state,
        "long question",
        ChatSettings {
            max_tokens: 20,
            ..Default::default()
        },
    );
    let question = "the quick brown fox jumps over the lazy dog ".repeat(7);
    chat::answer(&state, c, Turn::Ask(question), &mut |_| {}).unwrap();
    let before = state.with_db(|db| db.messages(c)).unwrap();
    // Room for 256 new tokens leaves the 512-token context too small for the question.
    let roomy = ChatSettings {
        max_tokens: 256,
        ..Default::default()
    };
    state.with_db(|db| db.update_settings(c, &roomy)).unwrap();
    let err = chat::answer(&state, c, Turn::Regenerate, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("tokens"), "{err}");
    assert_eq!(state.with_db(|db| db.messages(c)).unwrap(), before);
}

#[test]
fn editing_a_question_replaces_what_came_after_it() {
    let app = mock_app(state_with_model());
    let state = app.state::<AppState>();
    let settings = ChatSettings {
        block: "4".into(),
        max_tokens: 20,
        ..Default::default()
    };
    let c = conversation(&state, fixpoint_desktop::NEW_CHAT_TITLE, settings.clone());
    let ask = |conversation: i64, text: &str| {
        let (channel, _) = recording_channel::<ChatEvent>();
        tauri::async_runtime::block_on(commands::send_message(
            app.handle().clone(),
            conversation,
            text.into(),
            channel,
        ))
        .unwrap()
    };
    ask(c, "count to ten");
    ask(c, "and back");
    let before = state.with_db(|db| db.messages(c)).unwrap();
    assert_eq!(before.len(), 4);
    let edit = |message_id: i64, content: &str| {
        let (channel, got) = recording_channel::<ChatEvent>();
        let saved = tauri::async_runtime::block_on(commands::edit_message(
            app.handle().clone(),
            c,
            message_id,
            content.into(),
            channel,
        ));
        let events = got.lock().unwrap().clone();
        (saved, events)
    };

    // Refused, and nothing changes: an empty question, an answer.
    for (id, text) in [(before[0].id, "  "), (before[1].id, "count")] {
        assert!(matches!(edit(id, text).0, Err(AppError::Invalid(_))));
        assert_eq!(state.with_db(|db| db.messages(c)).unwrap(), before);
    }

    let (saved, events) = edit(before[0].id, "count to five");
    let saved = saved.unwrap();
    assert_eq!(events.first().unwrap()["kind"], "started");
    assert_eq!(events.last().unwrap()["kind"], "done");
    let after = state.with_db(|db| db.messages(c)).unwrap();
    let texts: Vec<&str> = after.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["count to five", saved.content.as_str()]);
    assert_eq!(after[0].id, before[0].id, "the question keeps its place");
    let title = state.with_db(|db| db.conversation(c)).unwrap().title;
    assert_eq!(
        title, "count to five",
        "the title follows the first question"
    );
    // The answer is the one the edited question gets in a conversation of its own.
    let fresh = conversation(&state, fixpoint_desktop::NEW_CHAT_TITLE, settings);
    let expected = ask(fresh, "count to five");
    assert_eq!(
        saved.stats.unwrap()["token_ids"],
        expected.stats.unwrap()["token_ids"]
    );
}

#[test]
fn a_continued_answer_grows_in_place_into_the_longer_answer() {
    let app = mock_app(state_with_model());
    let state = app.state::<AppState>();
    let settings = |max_tokens| ChatSettings {
        block: "4".into(),
        max_tokens,
        ..Default::default()
    };
    let answer = |conversation: i64, turn: Turn| {
        chat::answer(&state, conversation, turn, &mut |_| {}).map(|m| {
            let stats: fixpoint::Generation =
                serde_json::from_value(m.stats.clone().unwrap()).unwrap();
            (m, stats)
        })
    };
    let whole = conversation(&state, "whole", settings(30));
    let (_, expected) = answer(whole, Turn::Ask("count to ten".into())).unwrap();
    assert_eq!(
        expected.generated_tokens, 30,
        "needs an answer that runs on"
    );

    let c = conversation(&state, "halves", settings(12));
    let (first, start) = answer(c, Turn::Ask("count to ten".into())).unwrap();
    assert_eq!(start.stop_reason, fixpoint::StopReason::MaxTokens);
    // The next 12, then the last 6.
    answer(c, Turn::Continue).unwrap();
    state
        .with_db(|db| db.update_settings(c, &settings(6)))
        .unwrap();
    let (grown, stats) = answer(c, Turn::Continue).unwrap();
    assert_eq!(grown.id, first.id, "the answer keeps its place");
    assert_eq!(stats.token_ids, expected.token_ids);
    assert_eq!(grown.content, expected.text);
    assert_eq!(stats.generated_tokens, 30);
    let messages = state.with_db(|db| db.messages(c)).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1], grown);
    // One replay of the whole answer: every pass, numbered in order.
    let trajectory = grown.trajectory.unwrap();
    let iterations = trajectory.as_array().unwrap();
    assert_eq!(iterations.len(), stats.forward_passes);
    for (i, it) in iterations.iter().enumerate() {
        assert_eq!(it["index"], i);
    }
    let starts: Vec<u64> = iterations
        .iter()
        .map(|it| it["block_start"].as_u64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(*starts.last().unwrap() < 30);

    // Nothing to continue: no answer yet, an answer that ended otherwise, or a question last.
    let empty = conversation(&state, "empty", settings(6));
    assert!(matches!(
        answer(empty, Turn::Continue),
        Err(AppError::Invalid(_))
    ));
    let mut ended = serde_json::to_value(&expected).unwrap();
    ended["stop_reason"] = "context_full".into();
    let mut foreign = serde_json::to_value(&start).unwrap();
    foreign["model"] = "/another/model.gguf".into();
    for stats in [ended, foreign] {
        state
            .with_db(|db| {
                db.add_message(empty, "user", "count to ten", None, None)?;
                db.add_message(empty, "assistant", &expected.text, Some(&stats), None)
            })
            .unwrap();
        assert!(matches!(
            answer(empty, Turn::Continue),
            Err(AppError::Invalid(_))
        ));
    }
    state
        .with_db(|db| db.add_message(c, "user", "and back", None, None))
        .unwrap();
    assert!(matches!(
        answer(c, Turn::Continue),
        Err(AppError::Invalid(_))
    ));
}

#[test]
fn a_system_prompt_opens_every_answer_and_the_race() {
    let app = mock_app(state_with_model());
    let state = app.state::<AppState>();
    let settings = ChatSettings {
        system: "  You count in French.\n".into(),
        block: "4".into(),
        max_tokens: 24,
        ..Default::default()
    };
    // A chat started from the settings the view shows keeps them (they were the defaults'
    // before the first message), and settings the engine would refuse are refused here.
    let c = commands::create_conversation(app.state(), Some(settings.clone())).unwrap();
    assert_eq!(c.settings, settings);
    let refused = ChatSettings {
        mode: "beam".into(),
        ..Default::default()
    };
    assert!(matches!(
        commands::create_conversation(app.state(), Some(refused)),
        Err(AppError::Invalid(_))
    ));
    let plain = commands::create_conversation(app.state(), None).unwrap();
    assert_eq!(plain.settings, ChatSettings::default());

    let (channel, _) = recording_channel::<ChatEvent>();
    let saved = tauri::async_runtime::block_on(commands::send_message(
        app.handle().clone(),
        c.id,
        "count to ten".into(),
        channel,
    ))
    .unwrap();
    let stats = saved.stats.unwrap();

    // What the engine answers to the trimmed system message and the question, given directly.
    let engine = state.engine().unwrap();
    let direct = |messages: Vec<Message>| {
        let request = GenerateRequest {
            prompt: Prompt::Chat(messages),
            options: chat::decode_options(&settings).unwrap(),
        };
        engine
            .generate(&request, &CancelToken::new(), |_| {})
            .unwrap()
    };
    let question = Message::user("count to ten");
    let with_system = direct(vec![
        Message::new("system", "You count in French."),
        question.clone(),
    ]);
    let without = direct(vec![question]);
    assert_eq!(stats["prompt_tokens"], with_system.prompt_tokens);
    assert_eq!(stats["token_ids"], serde_json::json!(with_system.token_ids));
    assert!(without.prompt_tokens < with_system.prompt_tokens);

    let mut lanes = Vec::new();
    chat::race(&state, "count to ten".into(), settings, &mut |e| {
        if let chat::RaceEvent::Finished { ar, jacobi, .. } = e {
            lanes.extend([ar.prompt_tokens, jacobi.prompt_tokens]);
        }
    })
    .unwrap();
    assert_eq!(lanes, [with_system.prompt_tokens; 2]);
}

#[test]
fn race_reports_both_decoders_on_the_same_prompt() {
    let state = state_with_model();
    let mut finished = None;
    chat::race(
        &state,
        "abc".into(),
        ChatSettings {
            block: "4".into(),
            max_tokens: 30,
            ..Default::default()
        },
        &mut |e| {
            if let chat::RaceEvent::Finished {
                identical, speedup, ..
            } = e
            {
                finished = Some((identical, speedup));
            }
        },
    )
    .unwrap();
    let (identical, speedup) = finished.expect("race finished");
    assert!(identical, "Jacobi is lossless");
    assert!(speedup > 0.0);
}

fn ipc(
    webview: &tauri::WebviewWindow<tauri::test::MockRuntime>,
    cmd: &str,
    body: Value,
) -> Result<Value, Value> {
    get_ipc_response(
        webview,
        tauri::webview::InvokeRequest {
            cmd: cmd.into(),
            callback: tauri::ipc::CallbackFn(0),
            error: tauri::ipc::CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: tauri::ipc::InvokeBody::Json(body),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|b| b.deserialize::<Value>().unwrap())
}

#[test]
fn the_window_may_call_our_commands_and_nothing_else() {
    let app = mock_builder()
        .manage(AppState::new(Db::in_memory().unwrap()))
        .invoke_handler(tauri::generate_handler![
            commands::create_conversation,
            commands::list_conversations,
        ])
        .build(tauri::generate_context!())
        .unwrap();
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let created = ipc(&webview, "create_conversation", serde_json::json!({})).unwrap();
    assert_eq!(created["title"], "New chat");
    let listed = ipc(
        &webview,
        "list_conversations",
        serde_json::json!({"query": ""}),
    )
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Core and plugin commands the capability does not grant are refused.
    assert!(ipc(
        &webview,
        "plugin:fs|read_file",
        serde_json::json!({"path": "/etc/passwd"})
    )
    .is_err());
    assert!(ipc(&webview, "plugin:window|close", serde_json::json!({})).is_err());
    // The capability names the main window only: another window gets nothing, not even ours.
    let other = tauri::WebviewWindowBuilder::new(&app, "other", Default::default())
        .build()
        .unwrap();
    let refused = ipc(
        &other,
        "list_conversations",
        serde_json::json!({"query": ""}),
    );
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn a_conversation_longer_than_the_context_keeps_answering() {
    let state = AppState::new(Db::in_memory().unwrap());
    state.set_engine(tiny_engine(256));
    let app = mock_app(state);
    let state = app.state::<AppState>();
    let c = conversation(
        &state,
        fixpoint_desktop::NEW_CHAT_TITLE,
        ChatSettings {
            max_tokens: 30,
            ..Default::default()
        },
    );
    let mut dropped = Vec::new();
    for turn in 0..16 {
        let (channel, _) = recording_channel::<ChatEvent>();
        let saved = tauri::async_runtime::block_on(commands::send_message(
            app.handle().clone(),
            c,
            format!("question {turn}: the quick brown fox jumps over the lazy dog"),
            channel,
        ))
        .unwrap_or_else(|e| panic!("turn {turn}: {e:?}"));
        let stats = saved.stats.unwrap();
        dropped.push(stats["dropped_messages"].as_u64().unwrap_or(0));
    }
    // Every message stays saved; the model saw only the latest ones once they outgrew it.
    let all = state.with_db(|db| db.messages(c)).unwrap();
    assert_eq!(all.len(), 32);
    assert!(*dropped.last().unwrap() > 0, "{dropped:?}");
    assert!(dropped.windows(2).all(|w| w[0] <= w[1]), "{dropped:?}");
}
