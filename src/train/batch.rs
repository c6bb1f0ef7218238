//! Packs one prompt and several n-token continuations of it into a single sequence, so one
//! forward pass serves them all:
//!
//! ```text
//! tokens    [ prompt (P) | segment 0 (n) | segment 1 (n) | ... ]
//! positions [ 0 .. P     | P .. P+n      | P .. P+n      | ... ]
//! ```
//!
//! Each segment attends to the prompt and causally to itself, never to another segment, so its
//! outputs equal those of `prompt + segment` run alone, while the prompt is computed (and
//! back-propagated) once. A consistency step needs the model on prompt + state and on prompt +
//! fixed point: packed, that is P + 2n tokens instead of 2(P + n).

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Packed {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// (t, t) additive mask.
    pub mask: Tensor,
    pub prompt_len: usize,
    pub block: usize,
}

impl Packed {
    /// Row of the packed sequence holding position `j` of segment `s`.
    pub fn row(&self, segment: usize, j: usize) -> usize {
        self.prompt_len + segment * self.block + j
    }
}

pub fn pack(prompt: &[u32], segments: &[&[u32]], device: &Device) -> Result<Packed> {
    let n = segments.first().map_or(0, |s| s.len());
    if prompt.is_empty() || n == 0 || segments.iter().any(|s| s.len() != n) {
        return Err(Error::BadConfig(
            "a packed sequence needs a prompt and segments of one non-zero length".into(),
        ));
    }
    let p = prompt.len();
    let t = p + segments.len() * n;
    let mut tokens = prompt.to_vec();
    let mut positions: Vec<u32> = (0..p as u32).collect();
    for s in segments {
        tokens.extend_from_slice(s);
        positions.extend((p..p + n).map(|x| x as u32));
    }
    // Segment of each row: None for the prompt.
    let seg = |i: usize| (i >= p).then(|| (i - p) / n);
    let mut mask = vec![f32::NEG_INFINITY; t * t];
    for i in 0..t {
        for j in 0..=i {
            if seg(j).is_none() || seg(j) == seg(i) {
                mask[i * t + j] = 0.0;
            }
        }
    }
    Ok(Packed {
        tokens,
        positions,
        mask: Tensor::from_vec(mask, (t, t), device)?,
        prompt_len: p,
        block: n,
    })
}

/// The ordinary causal mask, (t, t).
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TinySpec;
    use crate::train::llama::TrainLlama;

    /// A packed segment's logits equal those of prompt + segment run alone.
    #[test]
    fn segments_do_not_see_each_other() {
        let spec = TinySpec::default();
        let model =
            TrainLlama::new(spec.config(), spec.random_tensors().unwrap(), &Device::Cpu).unwrap();
        let prompt = [5u32, 9, 40, 41, 42];
        let (a, b) = ([7u32, 8, 9, 10], [100u32, 101, 102, 103]);
        let packed = pack(&prompt, &[&a, &b], &Device::Cpu).unwrap();
        let all = model
            .logits(
                &model
                    .hidden(&packed.tokens, &packed.positions, &packed.mask)
                    .unwrap(),
            )
            .unwrap();
        for (s, seg) in [a, b].iter().enumerate() {
            let alone: Vec<u32> = prompt.iter().chain(seg.iter()).copied().collect();
            let t = alone.len();
            let pos: Vec<u32> = (0..t as u32).collect();
            let want = model
                .logits(
                    &model
                        .hidden(&alone, &pos, &causal_mask(t, &Device::Cpu).unwrap())
                        .unwrap(),
                )
                .unwrap()
                .narrow(0, prompt.len(), 4)
                .unwrap();
            let got = all.narrow(0, packed.row(s, 0), 4).unwrap();
            let diff = (want - got)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "segment {s}: {diff}");
        }
    }
}
