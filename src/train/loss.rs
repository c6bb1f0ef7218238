//! The CLLM objective (ALGORITHM.md section 3) for one trajectory record.
//!
//! - Consistency: at each block position from the first wrong token of the state on, the model
//!   on prompt + state should predict what it predicts on prompt + target, the target side
//!   detached. Global: the target is the fixed point. Local: the next state of the trajectory.
//! - AR: next-token cross-entropy of the fixed point given the prompt, with label smoothing.
//!   Prompt tokens are context, not labels: a record's prompt is the user's question plus
//!   earlier blocks' fixed points, and each answer token is the label of exactly one record.
//!
//! Both come from one packed forward ([`super::batch`]).

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::batch::pack;
use super::llama::{log_softmax, TrainLlama};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// State -> fixed point (what the CLLM reference trains).
    #[default]
    Global,
    /// State -> next state of the trajectory (the paper's local loss).
    Local,
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "global" => Ok(LossKind::Global),
            "local" => Ok(LossKind::Local),
            _ => Err(format!("unknown loss `{s}`: use global or local")),
        }
    }
}

/// One training example drawn from a record.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub prompt: &'a [u32],
    /// The intermediate state the model sees.
    pub state: &'a [u32],
    /// The state whose predictions it should match: the fixed point (global) or the next state
    /// (local).
    pub target: &'a [u32],
    pub fixed_point: &'a [u32],
}

pub struct Losses {
    /// `ar_weight * ar + consistency`, with gradients.
    pub total: Tensor,
    pub ar: f32,
    pub consistency: f32,
    /// Tokens in the packed forward.
    pub tokens: usize,
}

pub struct Weights {
    pub ar: f64,
    pub label_smoothing: f64,
}

pub fn losses(model: &TrainLlama, s: &Sample<'_>, w: &Weights) -> Result<Losses> {
    let n = s.fixed_point.len();
    if s.state.len() != n || s.target.len() != n {
        return Err(Error::BadConfig(
            "states of one record differ in length".into(),
        ));
    }
    // The target segment is the fixed point itself for the global loss.
    let mut segments: Vec<&[u32]> = vec![s.state, s.fixed_point];
    let target_seg = if s.target == s.fixed_point {
        1
    } else {
        segments.push(s.target);
        2
    };
    let dev = model.device();
    let packed = pack(s.prompt, &segments, dev)?;
    let hidden = model.hidden(&packed.tokens, &packed.positions, &packed.mask)?;
    // Only the rows with a loss get logits: the prompt's last row (it predicts block position
    // 0) and the segments. Row r of `logp` is packed row prompt_len - 1 + r.
    let rows = 1 + segments.len() * n;
    let logp = log_softmax(&model.logits(&hidden.narrow(0, packed.prompt_len - 1, rows)?)?)?;
    let row = |seg: usize, j: usize| (packed.row(seg, j) + 1 - packed.prompt_len) as u32;

    // AR: the prompt's last row predicts fixed_point[0]; fixed-point row j predicts j + 1.
    let ar_rows: Vec<u32> = std::iter::once(0)
        .chain((0..n - 1).map(|j| row(1, j)))
        .collect();
    let ar_logp = logp.index_select(&Tensor::new(ar_rows.as_slice(), dev)?, 0)?;
    let labels = Tensor::new(s.fixed_point, dev)?.unsqueeze(1)?;
    let nll = ar_logp.gather(&labels, 1)?.mean_all()?.neg()?;
    let uniform = ar_logp.mean_all()?.neg()?;
    let ar = ((nll * (1.0 - w.label_smoothing))? + (uniform * w.label_smoothing)?)?;

    // Consistency: positions from the first wrong token of the state to n - 2 (the last
    // position's prediction lies outside the block; the reference drops it too).
    let first_wrong = (0..n)
        .find(|&j| s.state[j] != s.fixed_point[j])
        .unwrap_or(n);
    let positions: Vec<usize> = (first_wrong..n.saturating_sub(1)).collect();
    let consistency = if positions.is_empty() {
        Tensor::zeros((), candle_core::DType::F32, dev)?
    } else {
        let q_rows: Vec<u32> = positions.iter().map(|&j| row(0, j)).collect();
        let t_rows: Vec<u32> = positions.iter().map(|&j| row(target_seg, j)).collect();
        let q = logp.index_select(&Tensor::new(q_rows.as_slice(), dev)?, 0)?;
        let p = logp
            .index_select(&Tensor::new(t_rows.as_slice(), dev)?, 0)?
            .exp()?
            .detach();
        (p * q)?.sum(D::Minus1)?.mean_all()?.neg()?
    };
    let total = ((&ar * w.ar)? + &consistency)?;
    Ok(Losses {
        ar: ar.to_scalar::<f32>()?,
        consistency: consistency.to_scalar::<f32>()?,
        total,
        tokens: packed.tokens.len(),
    })
}
