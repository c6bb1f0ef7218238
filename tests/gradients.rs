//! The training graph's gradients: every trainable tensor gets one, and they match finite
//! differences of the forward.

use candle_core::{Device, Tensor, Var};
use fixpoint::testing::TinySpec;
use fixpoint::train::batch::pack;
use fixpoint::train::llama::{log_softmax, TrainLlama};
use fixpoint::train::loss::{losses, Sample, Weights};

fn tiny(tied: bool) -> TrainLlama {
    let spec = TinySpec {
        hidden: 16,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        intermediate: 32,
        context: 64,
        tie_embeddings: tied,
        seed: 11,
    };
    TrainLlama::new(spec.config(), spec.random_tensors().unwrap(), &Device::Cpu).unwrap()
}

const PROMPT: [u32; 6] = [1, 40, 41, 42, 43, 44];
const STATE: [u32; 5] = [60, 61, 99, 98, 97];
const FIXED: [u32; 5] = [60, 61, 62, 63, 64];

#[test]
fn every_trainable_tensor_gets_a_nonzero_gradient() {
    for tied in [true, false] {
        let model = tiny(tied);
        let l = losses(
            &model,
            &Sample {
                prompt: &PROMPT,
                state: &STATE,
                target: &FIXED,
                fixed_point: &FIXED,
            },
            &Weights {
                ar: 10.0,
                label_smoothing: 0.1,
            },
        )
        .unwrap();
        assert!(l.consistency > 0.0 && l.ar > 0.0);
        let grads = l.total.backward().unwrap();
        for (name, var) in model.params() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let max = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max > 0.0, "zero gradient for {name}");
        }
    }
}

/// Cross-entropy of fixed labels over a packed prompt + two segments: every op of the forward
/// (embedding, RMS norm, RoPE at explicit positions, masked grouped-query attention, SwiGLU,
/// LM head, log-softmax), nothing detached.
fn loss(model: &TrainLlama) -> Tensor {
    let packed = pack(&PROMPT, &[&STATE, &FIXED], &Device::Cpu).unwrap();
    let h = model
        .hidden(&packed.tokens, &packed.positions, &packed.mask)
        .unwrap();
    let logp = log_softmax(&model.logits(&h).unwrap()).unwrap();
    let labels: Vec<u32> = packed.tokens.iter().map(|t| (t * 7 + 3) % 250).collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    logp.gather(&labels, 1)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

fn value(model: &TrainLlama) -> f64 {
    loss(model).to_scalar::<f32>().unwrap() as f64
}

fn nudge(var: &Var, i: usize, by: f32) {
    let shape = var.as_tensor().shape().clone();
    let mut data = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    data[i] += by;
    var.set(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap())
        .unwrap();
}

#[test]
fn gradients_match_finite_differences() {
    for tied in [false, true] {
        check_finite_differences(&tiny(tied));
    }
}

fn check_finite_differences(model: &TrainLlama) {
    let grads = loss(model).backward().unwrap();
    let h = 1e-2f32;
    for (name, var) in model.params() {
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // The entry with the largest gradient, and one in the middle.
        let top = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for i in [top, g.len() / 2] {
            nudge(var, i, h);
            let up = value(model);
            nudge(var, i, -2.0 * h);
            let down = value(model);
            nudge(var, i, h);
            let fd = (up - down) / (2.0 * h as f64);
            let an = g[i] as f64;
            assert!(
                (fd - an).abs() <= 0.05 * an.abs() + 2e-4,
                "{name}[{i}]: analytic {an:.6}, finite difference {fd:.6}"
            );
        }
    }
}
