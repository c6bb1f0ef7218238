//! Jacobi trajectories: the training data of consistency training (ALGORITHM.md section 2).
//!
//! For each prompt the target model decodes block after block. A block starts as the first
//! correct token plus n - 1 tokens drawn from the context and is iterated until every position
//! is at its fixed point; every state on the way is recorded. Then prompt + fixed point is the
//! next block's prompt. One JSON line per (prompt, block), with the reference implementation's
//! field names, so its PyTorch trainer reads our files:
//!
//! ```json
//! {"data_id": "data_3", "jacobian_itr_id": "itr_0", "prompt_ids": [[...]],
//!  "answer_trajectory_ids": [[...n ids...], ..., [...fixed point...]],
//!  "teacher_output_ids": [[...prompt ids, fixed point...]],
//!  "block_size": 16, "tokenizer": "9f3c..."}
//! ```

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::decode::jacobi::{fill_guesses, step};
use crate::decode::{prefill, CancelToken};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::{argmax_rows, Logits, Transformer};

/// Records whose answer repeats one token this many times in a row are dropped (as in the
/// reference): they teach the model to loop.
pub const MAX_REPEAT: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `data_<prompt index>`.
    pub data_id: String,
    /// `itr_<block index>` within the prompt's answer.
    pub jacobian_itr_id: String,
    /// `[[prompt + earlier fixed points]]` (batch of one, as in the reference).
    pub prompt_ids: Vec<Vec<u32>>,
    /// Every state of the block from its random start; the last one is the fixed point.
    pub answer_trajectory_ids: Vec<Vec<u32>>,
    /// `[[prompt_ids + fixed point]]`.
    pub teacher_output_ids: Vec<Vec<u32>>,
    /// n; absent in the reference's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// [`crate::Tokenizer::fingerprint`] of the tokenizer the ids belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
}

impl Record {
    pub fn prompt(&self) -> &[u32] {
        self.prompt_ids.first().map_or(&[], |p| p.as_slice())
    }

    pub fn fixed_point(&self) -> &[u32] {
        self.answer_trajectory_ids
            .last()
            .map_or(&[], |p| p.as_slice())
    }

    pub fn block(&self) -> usize {
        self.fixed_point().len()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectConfig {
    pub block: usize,
    pub max_new: usize,
    pub seed: u64,
}

/// What one prompt produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PromptTrajectories {
    pub records: Vec<Record>,
    /// Blocks dropped for repetition or because they converged at once (nothing to learn).
    pub dropped: usize,
    pub tokens: usize,
    pub passes: usize,
}

/// Decodes one prompt block by block and records every block's trajectory.
pub fn collect(
    model: &Transformer,
    prompt: &[u32],
    index: usize,
    cfg: &CollectConfig,
    stop_ids: &[u32],
    fingerprint: &str,
    cancel: &CancelToken,
) -> Result<PromptTrajectories> {
    let n = cfg.block;
    let context = model.config().context_length;
    if n == 0 || n > context {
        return Err(Error::InvalidBlockSize {
            block: n,
            max: context,
        });
    }
    if prompt.len() + n > context {
        return Err(Error::PromptTooLong {
            tokens: prompt.len() + n,
            context,
        });
    }
    let vocab = model.config().vocab_size;
    // Seeded by prompt index, so an interrupted run repeats exactly what it lost.
    let mut rng =
        StdRng::seed_from_u64(cfg.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut cache = model.new_cache();
    let logits = prefill(model, &mut cache, prompt)?;
    let mut first = argmax_rows(&logits, vocab)[0];
    let mut out = PromptTrajectories::default();
    let mut answer: Vec<u32> = Vec::new();
    let mut context_ids = prompt.to_vec();
    for itr in 0.. {
        if answer.len() >= cfg.max_new || cache.len() + n > context || cancel.is_cancelled() {
            break;
        }
        let start = cache.len();
        let mut block = vec![first];
        fill_guesses(&mut block, n, &context_ids, &mut rng);
        let mut states = vec![block.clone()];
        let mut preds = vec![0u32; n];
        // Leading positions whose inputs are right and whose keys/values are in the cache: a
        // pass only needs the positions after them.
        let mut known = 0;
        loop {
            cache.truncate(start + known);
            let logits = model.forward(&block[known..], &mut cache, Logits::All)?;
            preds[known..].copy_from_slice(&argmax_rows(&logits, vocab));
            out.passes += 1;
            let s = step(&block, &preds);
            if s.accepted == n {
                break;
            }
            known = s.accepted;
            block = s.next_state;
            states.push(block.clone());
        }
        // `block` is the fixed point; the cache holds all of it.
        first = preds[n - 1];
        let repeats = has_run(&answer, &block, MAX_REPEAT);
        let prompt_ids = context_ids.clone();
        answer.extend_from_slice(&block);
        context_ids.extend_from_slice(&block);
        out.tokens += n;
        if states.len() < 2 || repeats {
            out.dropped += 1;
        } else {
            out.records.push(Record {
                data_id: format!("data_{index}"),
                jacobian_itr_id: format!("itr_{itr}"),
                teacher_output_ids: vec![context_ids.clone()],
                prompt_ids: vec![prompt_ids],
                answer_trajectory_ids: states,
                block_size: Some(n),
                tokenizer: Some(fingerprint.to_string()),
            });
        }
        if block.iter().any(|t| stop_ids.contains(t)) {
            break;
        }
    }
    Ok(out)
}

/// Whether `block`, appended to `before`, contains a run of `max` equal tokens that touches it.
fn has_run(before: &[u32], block: &[u32], max: usize) -> bool {
    let tail = &before[before.len().saturating_sub(max - 1)..];
    let joined: Vec<u32> = tail.iter().chain(block).copied().collect();
    joined.windows(max).any(|w| w.iter().all(|&t| t == w[0]))
}

/// The settings a trajectory file was started with; a resumed run must use the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSettings {
    pub model: String,
    pub prompts: String,
    pub skip: usize,
    pub collect: CollectConfig,
    pub tokenizer: String,
}

/// Progress of a trajectory file, kept beside it as `<file>.progress.json`. It is the commit
/// record: the JSONL is only trusted up to `bytes`, so a kill mid-line loses nothing but that
/// line's prompt, which is redone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileProgress {
    pub settings: FileSettings,
    pub prompts_done: usize,
    pub records: usize,
    pub bytes: u64,
    pub tokens: usize,
    pub passes: usize,
    pub dropped: usize,
}

/// Appends prompts' records to a JSONL file and can continue an interrupted one.
pub struct TrajectoryWriter {
    file: std::fs::File,
    progress_path: PathBuf,
    pub progress: FileProgress,
}

pub fn progress_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".progress.json");
    out.with_file_name(name)
}

impl TrajectoryWriter {
    /// Opens `out` to continue where a run with the same settings stopped, or starts it. A file
    /// that exists without progress (or with other settings) is refused, never overwritten.
    pub fn open(out: &Path, settings: FileSettings) -> Result<Self> {
        let progress_path = progress_path(out);
        let progress = if progress_path.exists() {
            let text = std::fs::read_to_string(&progress_path)
                .map_err(|e| Error::io(&progress_path, e))?;
            let p: FileProgress = serde_json::from_str(&text)
                .map_err(|e| Error::BadConfig(format!("{}: {e}", progress_path.display())))?;
            if p.settings != settings {
                return Err(Error::BadConfig(format!(
                    "{} was started with other settings ({}); use another --out, or delete it and {}",
                    out.display(),
                    serde_json::to_string(&p.settings).unwrap_or_default(),
                    progress_path.display()
                )));
            }
            p
        } else {
            if out.metadata().is_ok_and(|m| m.len() > 0) {
                return Err(Error::BadConfig(format!(
                    "{} already exists and is not an interrupted trajectory run (no {}); choose another --out",
                    out.display(),
                    progress_path.display()
                )));
            }
            FileProgress {
                settings,
                prompts_done: 0,
                records: 0,
                bytes: 0,
                tokens: 0,
                passes: 0,
                dropped: 0,
            }
        };
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(out)
            .map_err(|e| Error::io(out, e))?;
        let len = file.metadata().map_err(|e| Error::io(out, e))?.len();
        if len < progress.bytes {
            return Err(Error::BadConfig(format!(
                "{} is shorter ({len} bytes) than its progress file says ({}): it was changed by something else",
                out.display(),
                progress.bytes
            )));
        }
        // Drop whatever an interrupted run wrote after its last completed prompt.
        file.set_len(progress.bytes)
            .map_err(|e| Error::io(out, e))?;
        file.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(out, e))?;
        let w = Self {
            file,
            progress_path,
            progress,
        };
        w.save_progress()?;
        Ok(w)
    }

    /// Appends one prompt's records, then commits them in the progress file.
    pub fn append(&mut self, t: &PromptTrajectories) -> Result<()> {
        let mut buf = Vec::new();
        for r in &t.records {
            serde_json::to_writer(&mut buf, r).expect("records serialize");
            buf.push(b'\n');
        }
        let path = self.progress_path.clone();
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        let p = &mut self.progress;
        p.bytes += buf.len() as u64;
        p.prompts_done += 1;
        p.records += t.records.len();
        p.tokens += t.tokens;
        p.passes += t.passes;
        p.dropped += t.dropped;
        self.save_progress()
    }

    fn save_progress(&self) -> Result<()> {
        write_atomic(
            &self.progress_path,
            serde_json::to_string_pretty(&self.progress)
                .expect("progress serializes")
                .as_bytes(),
        )
    }
}

/// Progress of a collection run, for progress bars and the app.
#[derive(Debug, Clone, Serialize)]
pub struct CollectProgress {
    pub prompts_done: usize,
    pub prompts_total: usize,
    pub records: usize,
    pub dropped: usize,
    pub tokens: usize,
    /// Generated tokens per forward pass so far (the target model's Jacobi rate).
    pub tokens_per_pass: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
}

/// Collects trajectories of `prompts` (already token ids, chat template applied) into `writer`,
/// skipping the prompts it already holds.
pub fn collect_all(
    model: &Transformer,
    prompts: &[Vec<u32>],
    writer: &mut TrajectoryWriter,
    stop_ids: &[u32],
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(&CollectProgress),
) -> Result<()> {
    let cfg = writer.progress.settings.collect.clone();
    let fingerprint = writer.progress.settings.tokenizer.clone();
    let first = writer.progress.prompts_done;
    let t0 = Instant::now();
    let report = |w: &TrajectoryWriter, done_now: usize| {
        let p = &w.progress;
        let elapsed = t0.elapsed().as_secs_f64();
        let left = prompts.len().saturating_sub(p.prompts_done);
        CollectProgress {
            prompts_done: p.prompts_done,
            prompts_total: prompts.len(),
            records: p.records,
            dropped: p.dropped,
            tokens: p.tokens,
            tokens_per_pass: p.tokens as f64 / p.passes.max(1) as f64,
            elapsed_s: elapsed,
            eta_s: if done_now == 0 {
                0.0
            } else {
                elapsed / done_now as f64 * left as f64
            },
        }
    };
    on_progress(&report(writer, 0));
    for (i, prompt) in prompts.iter().enumerate().skip(first) {
        if cancel.is_cancelled() {
            break;
        }
        let t = collect(
            model,
            prompt,
            writer.progress.settings.skip + i,
            &cfg,
            stop_ids,
            &fingerprint,
            cancel,
        )?;
        if cancel.is_cancelled() {
            // A prompt cut short would be recorded as complete; leave it for the next run.
            break;
        }
        writer.append(&t)?;
        on_progress(&report(writer, i + 1 - first));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_across_the_block_boundary() {
        assert!(has_run(&[1, 7, 7, 7, 7], &[7, 7, 7, 7, 7, 7, 2], 10));
        assert!(!has_run(&[7, 7, 7], &[7, 7, 7, 7, 7, 7, 2], 10));
        assert!(!has_run(&[7; 20], &[1, 2, 3], 10));
    }
}
