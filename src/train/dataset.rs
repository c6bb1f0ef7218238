//! Reading trajectory files for training, refusing what does not belong to the model.

use std::path::Path;

use super::trajectory::Record;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct Dataset {
    pub records: Vec<Record>,
    /// n, the same for every record.
    pub block: usize,
    /// Records skipped because they held no intermediate state.
    pub skipped: usize,
}

/// Reads a JSONL trajectory file. `block` is the size the caller expects, if any.
pub fn read(
    path: &Path,
    tokenizer: &Tokenizer,
    vocab: usize,
    block: Option<usize>,
) -> Result<Dataset> {
    let bad = |detail: String| Error::BadData {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fingerprint = tokenizer.fingerprint();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut records = Vec::new();
    let mut skipped = 0;
    let mut size: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let last = i == lines.len() - 1;
        let r: Record = serde_json::from_str(line).map_err(|e| {
            if last && !text.ends_with('\n') {
                bad(format!(
                    "line {} is truncated: the file ends mid-record ({e})",
                    i + 1
                ))
            } else {
                bad(format!("line {} is not a trajectory record: {e}", i + 1))
            }
        })?;
        if let Some(fp) = &r.tokenizer {
            if *fp != fingerprint {
                return Err(bad(format!(
                    "made with another tokenizer (fingerprint {fp}; this model's is {fingerprint})"
                )));
            }
        }
        let n = r.block();
        let ids = r
            .prompt()
            .iter()
            .chain(r.answer_trajectory_ids.iter().flatten());
        if let Some(&id) = ids.clone().find(|&&t| t as usize >= vocab) {
            return Err(bad(format!(
                "line {}: token id {id} is outside this model's vocabulary of {vocab}: made with another tokenizer",
                i + 1
            )));
        }
        if r.prompt().is_empty() || n == 0 {
            return Err(bad(format!("line {}: empty prompt or block", i + 1)));
        }
        if r.answer_trajectory_ids.iter().any(|s| s.len() != n) {
            return Err(bad(format!("line {}: states of different lengths", i + 1)));
        }
        match size {
            None => size = Some(n),
            Some(s) if s != n => {
                return Err(bad(format!(
                "line {}: block size {n}, but earlier records have {s}: one file, one block size",
                i + 1
            )))
            }
            _ => {}
        }
        if r.answer_trajectory_ids.len() < 2 {
            skipped += 1;
            continue;
        }
        records.push(r);
    }
    let Some(found) = size else {
        return Err(bad("holds no trajectory records".into()));
    };
    if let Some(want) = block {
        if want != found {
            return Err(bad(format!(
                "records have block size {found}, not the {want} asked for"
            )));
        }
    }
    if records.is_empty() {
        return Err(bad("no record has an intermediate state to train on".into()));
    }
    Ok(Dataset {
        records,
        block: found,
        skipped,
    })
}
