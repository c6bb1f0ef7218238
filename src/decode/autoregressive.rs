//! One token per forward pass: the baseline every other decoder is measured against.

use std::time::Instant;

use super::events::{DecodeEvent, StopReason};
use super::output::{CancelToken, Output};
use super::sampling::Sampler;
use super::Progress;
use crate::error::Result;
use crate::model::{KvCache, Logits, Transformer};

/// Continues from `first` (the token prefill produced) until a stop condition.
pub(crate) fn decode(
    model: &Transformer,
    cache: &mut KvCache,
    first: u32,
    sampler: &mut Sampler,
    out: &mut Output,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(DecodeEvent),
) -> Result<Progress> {
    let mut progress = Progress::default();
    out.push(&[first], on_event)?;
    let mut last = first;
    let mut logits = Vec::new();
    while out.stop.is_none() {
        if cancel.is_cancelled() {
            out.stop = Some(StopReason::Cancelled);
            break;
        }
        if cache.len() + 1 > cache.max_len() {
            out.stop = Some(StopReason::ContextFull);
            break;
        }
        let t = Instant::now();
        model.forward_into(&[last], cache, Logits::Last, &mut logits)?;
        last = sampler.pick(&logits);
        progress.passes += 1;
        progress.decode_ms += t.elapsed().as_secs_f64() * 1e3;
        out.push(&[last], on_event)?;
    }
    Ok(progress)
}
