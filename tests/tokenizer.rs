//! Tokenization of the default model (SmolLM2's "smollm" pre-tokenizer rebuilt from GGUF
//! metadata) against reference ids, round trips, and chat templates.

use fixpoint::testing::tiny_tokenizer;
use fixpoint::{Engine, LoadOptions, Message, Prompt};

fn default_model() -> Option<Engine> {
    let path = std::env::var_os("FIXPOINT_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(fixpoint::model_store::default_model_path);
    if !path.exists() {
        eprintln!("skipping: no model at {}", path.display());
        return None;
    }
    Some(Engine::load(&path, &LoadOptions::default()).unwrap())
}

/// Reference ids from Hugging Face `tokenizers` (Python) configured as SmolLM2's tokenizer.json:
/// Digits(individual) + ByteLevel pre-tokenizer over the same vocabulary and merges.
const REFERENCE: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    (
        "The year 2024 had 366 days.",
        &[
            504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 12*34?<|im_end|>\n",
        &[1, 4093, 198, 1780, 314, 216, 33, 34, 26, 35, 36, 47, 2, 198],
    ),
    (
        "  indented\n\ttabs and émojis 🎉",
        &[
            216, 641, 6574, 198, 197, 100, 7366, 284, 26411, 15771, 90, 271, 15107, 232, 227,
        ],
    ),
    ("don't stop", &[12420, 982, 2853]),
];

#[test]
fn default_model_ids_match_the_reference() {
    let Some(engine) = default_model() else {
        return;
    };
    let tok = engine.tokenizer();
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(tok.stop_ids().contains(&2));
    for (text, ids) in REFERENCE {
        assert_eq!(tok.encode(text).unwrap(), *ids, "{text:?}");
        assert_eq!(
            tok.decode(ids).unwrap(),
            text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        );
    }
    // Digits are split one by one.
    let ids = tok.encode("1234567890").unwrap();
    assert_eq!(ids.len(), 10);
    for (d, id) in "1234567890".chars().zip(&ids) {
        assert_eq!(tok.token_to_id(&d.to_string()), Some(*id));
    }
}

#[test]
fn default_model_chat_template_adds_the_default_system_prompt() {
    let Some(engine) = default_model() else {
        return;
    };
    let text = engine
        .tokenizer()
        .apply_chat_template(&[Message::user("Hi")])
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = engine
        .prompt_ids(&Prompt::Chat(vec![Message::user("Hi")]))
        .unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[ids.len() - 3..], &[520, 9531, 198]);
}

#[test]
fn text_round_trips_through_the_tiny_tokenizer() {
    let tok = tiny_tokenizer();
    for text in ["the theme", "ünïcödé ✓ 🎉", "a\n\tb  c", "", "x<|im_end|>y"] {
        let ids = tok.encode(text).unwrap();
        let back = tok.decode(&ids).unwrap();
        assert_eq!(back, text.replace("<|im_end|>", ""), "{text:?} -> {ids:?}");
    }
    // Merges apply; specials are single ids.
    assert_eq!(tok.encode(" the").unwrap().len(), 1);
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
}

#[test]
fn chat_template_is_rendered_by_jinja() {
    let tok = tiny_tokenizer();
    let text = tok
        .apply_chat_template(&[
            Message::new("system", "Be brief."),
            Message::user("2+2?"),
            Message::assistant("4"),
            Message::user("and 3+3?"),
        ])
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
}
