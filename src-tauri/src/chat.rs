//! An answer, start to end: save the user's message, decode with the engine on the calling
//! (worker) thread, turn the engine's events into what the UI draws, save the answer.

use fixpoint::{
    BlockSpec, DecodeEvent, DecodeOptions, Engine, GenerateRequest, Generation, Message, Mode,
    Prompt, Sampling, StopReason,
};
use serde::{Deserialize, Serialize};

use crate::db::{ChatSettings, StoredMessage};
use crate::error::AppError;
use crate::state::{lock, AppState};

/// What the chat view and the visualizer receive while an answer streams.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The user's message is saved; decoding starts.
    Started {
        user_message: Option<StoredMessage>,
        mode: String,
    },
    /// `done` of the `total` prompt tokens the model computes (a long prompt, chunk by chunk).
    PrefillProgress {
        done: usize,
        total: usize,
    },
    Prefill {
        prompt_tokens: usize,
        /// Prompt tokens whose KV entries the previous generation left (not computed again).
        reused_tokens: usize,
        ms: f64,
    },
    /// Tokens the answer grew by, and their text.
    Text {
        ids: Vec<u32>,
        delta: String,
    },
    Iteration(IterationView),
    /// The answer is saved.
    Done {
        message: StoredMessage,
        stats: Generation,
        /// Greedy AR tokens/s measured on this model, if any: the speedup's denominator.
        ar_tokens_per_second: Option<f64>,
    },
}

/// One Jacobi iteration with its tokens as text, for the visualizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterationView {
    pub index: usize,
    pub block_start: usize,
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub before_ids: Vec<u32>,
    pub after_ids: Vec<u32>,
    pub accepted: usize,
    pub new_tokens: usize,
    pub known_correct: usize,
    /// Length of the context match the guesses were copied after (0: the model's own).
    pub context_match: usize,
    pub ms: f64,
}

impl IterationView {
    fn new(engine: &Engine, it: fixpoint::Iteration) -> Self {
        let text = |ids: &[u32]| {
            ids.iter()
                .map(|&t| engine.tokenizer().token_text(t))
                .collect()
        };
        Self {
            index: it.index,
            block_start: it.block_start,
            before: text(&it.before),
            after: text(&it.after),
            before_ids: it.before,
            after_ids: it.after,
            accepted: it.accepted,
            new_tokens: it.new_tokens,
            known_correct: it.known_correct,
            context_match: it.context_match,
            ms: it.ms,
        }
    }
}

/// The engine's options for a conversation's settings.
pub fn decode_options(s: &ChatSettings) -> Result<DecodeOptions, AppError> {
    if s.max_tokens == 0 {
        return Err(AppError::Invalid("max tokens must be at least 1".into()));
    }
    let mode = match s.mode.as_str() {
        "ar" => Mode::Autoregressive,
        "jacobi" => {
            if s.temperature > 0.0 {
                return Err(AppError::Invalid(
                    "temperature applies to AR decoding only: Jacobi decoding is greedy".into(),
                ));
            }
            s.block
                .parse::<BlockSpec>()
                .map_err(|e| AppError::Invalid(format!("block size: {e}")))?
                .mode()
        }
        other => return Err(AppError::Invalid(format!("unknown decoder `{other}`"))),
    };
    let sampling = if s.temperature > 0.0 {
        Sampling {
            temperature: s.temperature,
            // A new draw on every answer, so regenerate gives another one.
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            ..Sampling::greedy()
        }
    } else {
        Sampling::greedy()
    };
    Ok(DecodeOptions {
        mode,
        max_tokens: s.max_tokens,
        sampling,
        guesses: s.guesses,
        ..Default::default()
    })
}

/// Runs `engine` on `prompt`, mapping its events to [`ChatEvent`]s; returns the generation and
/// the iterations (the trajectory kept for replay).
pub fn decode(
    engine: &Engine,
    prompt: Prompt,
    options: DecodeOptions,
    cancel: &fixpoint::CancelToken,
    emit: &mut dyn FnMut(ChatEvent),
) -> Result<(Generation, Vec<IterationView>), AppError> {
    let mut trajectory = Vec::new();
    let generation =
        engine.generate(
            &GenerateRequest { prompt, options },
            cancel,
            |event| match event {
                DecodeEvent::PrefillProgress { done, total } => {
                    emit(ChatEvent::PrefillProgress { done, total })
                }
                DecodeEvent::Prefill {
                    prompt_tokens,
                    reused_tokens,
                    ms,
                } => emit(ChatEvent::Prefill {
                    prompt_tokens,
                    reused_tokens,
                    ms,
                }),
                DecodeEvent::Tokens { ids, text } => emit(ChatEvent::Text { ids, delta: text }),
                DecodeEvent::Iteration(it) => {
                    let view = IterationView::new(engine, it);
                    trajectory.push(view.clone());
                    emit(ChatEvent::Iteration(view));
                }
            },
        )?;
    Ok((generation, trajectory))
}

/// What an answer answers.
#[derive(Debug, Clone)]
pub enum Turn {
    /// A new user message, saved first.
    Ask(String),
    /// The last user message again: its answer is replaced once the new one is saved.
    Regenerate,
    /// User message `message_id` with new text: the messages after it are replaced.
    Edit { message_id: i64, content: String },
    /// The last answer, from where it stopped (max tokens, or a Stop): it grows in place.
    Continue,
}

/// An answer being continued: its record and its iterations.
struct Partial {
    generation: Generation,
    trajectory: Option<Vec<IterationView>>,
}

impl Partial {
    /// The conversation's last message, if it is an answer that stopped before its end and
    /// whose tokens `engine`'s model made (answers saved before the model was recorded are
    /// taken to be its own).
    fn last_of(history: &[StoredMessage], engine: &Engine) -> Result<Self, AppError> {
        let message = history
            .last()
            .filter(|m| m.role == "assistant")
            .ok_or_else(|| AppError::Invalid("there is no answer to continue".into()))?;
        fn record<T: serde::de::DeserializeOwned>(v: &Option<serde_json::Value>) -> Option<T> {
            serde_json::from_value(v.clone()?).ok()
        }
        let generation: Generation = record(&message.stats)
            .ok_or_else(|| AppError::Invalid("this answer has no record of its tokens".into()))?;
        if !matches!(
            generation.stop_reason,
            StopReason::MaxTokens | StopReason::Cancelled
        ) {
            return Err(AppError::Invalid(
                "only an answer stopped by max tokens or Stop can be continued".into(),
            ));
        }
        let model = message.stats.as_ref().and_then(|s| s["model"].as_str());
        if model.is_some_and(|m| m != model_of(engine)) {
            return Err(AppError::Invalid(format!(
                "this answer came from another model ({}): load it to continue, or regenerate",
                model.unwrap_or_default()
            )));
        }
        Ok(Self {
            generation,
            trajectory: record(&message.trajectory),
        })
    }

    /// The answer grown by `next`: one record, and the iterations of both runs in one
    /// numbering where both ran Jacobi (a replay of only one of them would mislead).
    fn join(
        self,
        next: Generation,
        iterations: Vec<IterationView>,
        engine: &Engine,
    ) -> Result<(Generation, Vec<IterationView>), AppError> {
        let (passes, tokens) = (
            self.generation.forward_passes,
            self.generation.generated_tokens,
        );
        let joined = self.generation.continued_by(next, engine.tokenizer())?;
        let trajectory = match self.trajectory {
            Some(mut earlier) if !earlier.is_empty() && !iterations.is_empty() => {
                earlier.extend(iterations.into_iter().map(|it| IterationView {
                    index: it.index + passes,
                    block_start: it.block_start + tokens,
                    ..it
                }));
                earlier
            }
            _ => Vec::new(),
        };
        Ok((joined, trajectory))
    }
}

/// Answers the conversation's last user message after `turn` is applied to the conversation.
pub fn answer(
    state: &AppState,
    conversation_id: i64,
    turn: Turn,
    emit: &mut dyn FnMut(ChatEvent),
) -> Result<StoredMessage, AppError> {
    let job = state.start_job()?;
    let engine = state.engine()?;
    let conversation = state.with_db(|db| db.conversation(conversation_id))?;
    let options = decode_options(&conversation.settings)?;
    if let Turn::Ask(text) | Turn::Edit { content: text, .. } = &turn {
        if text.trim().is_empty() {
            return Err(AppError::Invalid("the message is empty".into()));
        }
    }
    let continuing = matches!(turn, Turn::Continue);
    let replacing_last = continuing || matches!(turn, Turn::Regenerate);
    let user_message = match turn {
        Turn::Ask(text) => {
            let saved = state.with_db(|db| {
                let first = db.messages(conversation_id)?.is_empty();
                let m = db.add_message(conversation_id, "user", &text, None, None)?;
                if first && conversation.title == crate::NEW_CHAT_TITLE {
                    db.rename_conversation(conversation_id, &title_of(&text))?;
                }
                Ok(m)
            })?;
            Some(saved)
        }
        // The view truncates its own copy of the conversation at the edited message.
        Turn::Edit {
            message_id,
            content,
        } => {
            state.with_db(|db| {
                let old = db.edit_user_message(conversation_id, message_id, &content)?;
                // A title taken from the question follows its edit.
                let first = db.messages(conversation_id)?.first().map(|m| m.id);
                if first == Some(message_id) && conversation.title == title_of(&old.content) {
                    db.rename_conversation(conversation_id, &title_of(&content))?;
                }
                Ok(())
            })?;
            None
        }
        Turn::Regenerate | Turn::Continue => None,
    };
    let mut history = state.with_db(|db| db.messages(conversation_id))?;
    let partial = continuing
        .then(|| Partial::last_of(&history, &engine))
        .transpose()?;
    // A regenerated or continued answer stays saved as it was until its replacement is, so a
    // decode that fails loses nothing.
    let replaced = match history.last() {
        Some(m) if replacing_last && m.role == "assistant" => {
            let id = m.id;
            history.pop();
            Some(id)
        }
        _ => None,
    };
    if history.last().is_none_or(|m| m.role != "user") {
        return Err(AppError::Invalid("there is no question to answer".into()));
    }
    emit(ChatEvent::Started {
        user_message,
        mode: conversation.settings.mode.clone(),
    });
    let messages: Vec<Message> = system_message(&conversation.settings)
        .into_iter()
        .chain(
            history
                .iter()
                .map(|m| Message::new(m.role.clone(), m.content.clone())),
        )
        .collect();
    // A conversation longer than the context keeps its latest messages (the saved ones stay).
    let (messages, dropped) = engine.fit_chat(&messages, options.max_tokens)?;
    let prompt = match &partial {
        Some(p) => Prompt::Continue {
            chat: messages,
            answer: p.generation.token_ids.clone(),
        },
        None => Prompt::Chat(messages),
    };
    let greedy_ar = options.mode == Mode::Autoregressive && options.sampling.is_greedy();
    let (generation, trajectory) =
        decode(&engine, prompt, options, &job.token, emit).map_err(|e| match e {
            AppError::Engine(fixpoint::Error::PromptTooLong { context, .. }) if continuing => {
                AppError::Invalid(format!(
                    "the answer fills the model's context of {context} tokens: nothing more fits"
                ))
            }
            e => e,
        })?;
    if greedy_ar
        && generation.stop_reason != StopReason::Cancelled
        && generation.generated_tokens > 1
    {
        *lock(&state.ar_speed) = Some(generation.tokens_per_second);
    }
    let (generation, trajectory) = match partial {
        Some(p) => p.join(generation, trajectory, &engine)?,
        None => (generation, trajectory),
    };
    let mut stats = serde_json::to_value(&generation)?;
    // Token ids mean something only to the model that made them (see `Partial::last_of`).
    stats["model"] = model_of(&engine).into();
    if dropped > 0 {
        // Shown under the answer: the model did not see the earliest messages.
        stats["dropped_messages"] = dropped.into();
    }
    let trajectory = (!trajectory.is_empty())
        .then(|| serde_json::to_value(&trajectory))
        .transpose()?;
    let message = state.with_db(|db| match replaced {
        Some(id) => db.replace_message(
            conversation_id,
            id,
            &generation.text,
            Some(&stats),
            trajectory.as_ref(),
        ),
        None => db.add_message(
            conversation_id,
            "assistant",
            &generation.text,
            Some(&stats),
            trajectory.as_ref(),
        ),
    })?;
    emit(ChatEvent::Done {
        message: message.clone(),
        stats: generation,
        ar_tokens_per_second: *lock(&state.ar_speed),
    });
    Ok(message)
}

/// The loaded model, as answers record it.
fn model_of(engine: &Engine) -> String {
    engine.info().path.display().to_string()
}

/// The conversation's system message, if it sets one (otherwise the chat template's default
/// applies). Kept through [`Engine::fit_chat`]'s cuts, so a long conversation keeps it.
fn system_message(settings: &ChatSettings) -> Option<Message> {
    let text = settings.system.trim();
    (!text.is_empty()).then(|| Message::new("system", text))
}

fn title_of(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut title: String = line.chars().take(48).collect();
    if line.chars().count() > 48 {
        title.push('…');
    }
    title
}

/// The same prompt decoded by AR and by Jacobi, one after the other.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RaceEvent {
    Lane {
        lane: &'static str,
        event: ChatEvent,
    },
    Finished {
        ar: Generation,
        jacobi: Generation,
        /// Jacobi tokens/s over AR tokens/s.
        speedup: f64,
        identical: bool,
    },
}

pub fn race(
    state: &AppState,
    prompt: String,
    settings: ChatSettings,
    emit: &mut dyn FnMut(RaceEvent),
) -> Result<(), AppError> {
    if prompt.trim().is_empty() {
        return Err(AppError::Invalid("the race needs a prompt".into()));
    }
    let job = state.start_job()?;
    let engine = state.engine()?;
    let jacobi = decode_options(&ChatSettings {
        mode: "jacobi".into(),
        temperature: 0.0,
        ..settings.clone()
    })?;
    let ar = DecodeOptions {
        mode: Mode::Autoregressive,
        ..jacobi.clone()
    };
    let chat = || {
        let question = Message::user(prompt.clone());
        Prompt::Chat(
            system_message(&settings)
                .into_iter()
                .chain([question])
                .collect(),
        )
    };
    let mut results = Vec::new();
    for (lane, options) in [("ar", ar), ("jacobi", jacobi)] {
        emit(RaceEvent::Lane {
            lane,
            event: ChatEvent::Started {
                user_message: None,
                mode: lane.into(),
            },
        });
        let (g, _) = decode(&engine, chat(), options, &job.token, &mut |event| {
            emit(RaceEvent::Lane { lane, event })
        })?;
        if g.stop_reason == StopReason::Cancelled {
            return Ok(());
        }
        results.push(g);
    }
    let jacobi = results.pop().expect("two lanes");
    let ar = results.pop().expect("two lanes");
    *lock(&state.ar_speed) = Some(ar.tokens_per_second);
    emit(RaceEvent::Finished {
        speedup: jacobi.tokens_per_second / ar.tokens_per_second.max(1e-9),
        identical: jacobi.token_ids == ar.token_ids,
        ar,
        jacobi,
    });
    Ok(())
}
