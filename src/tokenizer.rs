//! Text <-> token ids with the Hugging Face `tokenizers` crate, and the model's chat template.
//!
//! A GGUF file carries its vocabulary, merges and the name of its pre-tokenizer
//! (`tokenizer.ggml.pre`); we rebuild the same pipeline `tokenizer.json` would describe. A model
//! folder carries `tokenizer.json` (and the template in `tokenizer_config.json`).

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Serialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Used only when a model ships no template at all.
const FALLBACK_CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Ids that end generation once accepted.
    stop_ids: Vec<u32>,
}

impl Tokenizer {
    /// Rebuilds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let get = |k: &str| ct.metadata.get(k);
        let model = match get("tokenizer.ggml.model") {
            Some(gguf_file::Value::String(s)) => s.as_str(),
            _ => {
                return Err(Error::Tokenizer(
                    "GGUF has no `tokenizer.ggml.model`".into(),
                ))
            }
        };
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer model `{model}` is not supported (Fixpoint reads byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = string_array(get("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens")?;
        let merges = string_array(get("tokenizer.ggml.merges"), "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("bad merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i64> = match get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(v)) => v
                .iter()
                .map(|x| x.to_i32().map(|x| x as i64).unwrap_or(1))
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let mut inner = tokenizers::Tokenizer::new(bpe(&tokens, merges)?);
        let pre = match get("tokenizer.ggml.pre") {
            Some(gguf_file::Value::String(s)) => s.as_str(),
            _ => "default",
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched whole, before BPE.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(tok, &t)| AddedToken::from(tok.clone(), t == 3))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let id_token = |key: &str| -> Option<String> {
            get(key)
                .and_then(crate::model::config::gguf_int)
                .and_then(|i| tokens.get(i).cloned())
        };
        let chat_template = match get("tokenizer.chat_template") {
            Some(gguf_file::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Self::assemble(
            inner,
            chat_template,
            id_token("tokenizer.ggml.bos_token_id"),
            id_token("tokenizer.ggml.eos_token_id"),
        ))
    }

    /// Reads `tokenizer.json` (and `tokenizer_config.json` if present) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer(format!("{} is missing", path.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", cfg_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let token = |key: &str| -> Option<String> {
            match &cfg[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).map(String::from)
                }
                _ => None,
            }
        };
        let chat_template = match &cfg["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            // A list of named templates: take "default".
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or(list.first())
                .and_then(|t| t["template"].as_str())
                .map(String::from),
            _ => None,
        };
        Ok(Self::assemble(
            inner,
            chat_template,
            token("bos_token"),
            token("eos_token"),
        ))
    }

    /// Wraps an existing `tokenizers::Tokenizer` (tests build tiny ones).
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        Self::assemble(inner, chat_template, bos_token, eos_token)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        let mut stop_ids = Vec::new();
        let candidates = eos_token.iter().map(String::as_str).chain([
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "</s>",
        ]);
        for tok in candidates {
            if let Some(id) = inner.token_to_id(tok) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        Self {
            inner,
            chat_template,
            bos_token,
            eos_token,
            stop_ids,
        }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A short hash of the vocabulary (token text by id): files of token ids carry it so that
    /// ids from another tokenizer are refused instead of silently misread.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut vocab: Vec<(String, u32)> = self.inner.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|&(_, id)| id);
        let mut h = Sha256::new();
        for (tok, id) in &vocab {
            h.update(id.to_le_bytes());
            h.update(tok.as_bytes());
            h.update([0]);
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Ids of `text`; special-token strings in it (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The text of one token id as the vocabulary spells it, decoded (for visualizers).
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// Renders the conversation with the model's own Jinja chat template, ending with the
    /// assistant's turn opened.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
        let source = self.chat_template.as_deref().unwrap_or(FALLBACK_CHATML);
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", source)
            .map_err(|e| Error::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::Template(e.to_string()))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into a model folder, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let cfg = serde_json::json!({
            "chat_template": self.chat_template,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg).expect("json").as_bytes(),
        )
    }
}

/// A BPE model whose ids are the positions in `tokens`.
pub(crate) fn bpe(tokens: &[String], merges: Vec<(String, String)>) -> Result<BPE> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))
}

fn string_array(v: Option<&gguf_file::Value>, key: &str) -> Result<Vec<String>> {
    let arr = v
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| Error::Tokenizer(format!("GGUF has no `{key}` array")))?;
    arr.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|_| Error::Tokenizer(format!("`{key}` holds a non-string")))
        })
        .collect()
}

/// The pre-tokenizer `tokenizer.json` uses for each `tokenizer.ggml.pre` value we know.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let s = Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Sequence::new(vec![s.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    Ok(match pre {
        // SmolLM: every digit is its own pre-token, then GPT-2 byte-level splitting.
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "llama-bpe" | "llama3" | "smaug-bpe" => split(LLAMA3)?,
        "qwen2" => split(QWEN2)?,
        "default" | "gpt2" | "gpt-2" => ByteLevel::new(false, true, true).into(),
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer `{other}` is not supported (known: smollm, llama-bpe, qwen2, gpt2)"
            )))
        }
    })
}
