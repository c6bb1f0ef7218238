//! Loading models from GGUF and Hugging Face folders: every supported tensor type, the RoPE
//! row permutation, saving and reloading, and the truncatable KV cache.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use fixpoint::model::weights::{permute_rows, rope_row_permutation};
use fixpoint::model::{Logits, RawTensor};
use fixpoint::testing::{tiny_tokenizer, write_gguf, TinySpec};
use fixpoint::{Engine, LoadOptions, WeightPolicy};

const IDS: [u32; 12] = [1, 80, 77, 70, 90, 65, 100, 3, 150, 200, 2, 45];

fn logits(engine: &Engine, ids: &[u32]) -> Tensor {
    let model = engine.model();
    let mut cache = model.new_cache();
    model.forward(ids, &mut cache, Logits::All).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap()) / max_abs(a)
}

fn exact() -> LoadOptions {
    LoadOptions {
        weights: WeightPolicy::Exact,
        ..Default::default()
    }
}

fn reference(spec: &TinySpec) -> (Engine, HashMap<String, Tensor>) {
    let tensors = spec.random_tensors().unwrap();
    let model = TinySpec::from_tensors(spec.config(), tensors.clone(), &Device::Cpu).unwrap();
    (
        Engine::from_parts(model, tiny_tokenizer(), "ref".as_ref()),
        tensors,
    )
}

#[test]
fn gguf_of_every_supported_type_matches_the_float_model() {
    // K-quants need rows of 256.
    let spec = TinySpec {
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        intermediate: 512,
        ..Default::default()
    };
    let (float, tensors) = reference(&spec);
    let want = logits(&float, &IDS);
    let dir = tempfile::tempdir().unwrap();
    for (dtype, tol) in [
        (GgmlDType::F32, 1e-4),
        (GgmlDType::F16, 1e-2),
        (GgmlDType::Q8_0, 0.05),
        (GgmlDType::Q4_0, 0.3),
        (GgmlDType::Q4_1, 0.3),
        (GgmlDType::Q4K, 0.3),
        (GgmlDType::Q6K, 0.1),
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        write_gguf(&path, &spec.config(), &tensors, dtype, |_| {}).unwrap();
        for policy in [WeightPolicy::Exact, WeightPolicy::Fast] {
            let engine = Engine::load(
                &path,
                &LoadOptions {
                    weights: policy,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(engine.model().config(), &spec.config());
            let got = logits(&engine, &IDS);
            let d = max_rel_diff(&want, &got);
            // Fast requantizes float and slow formats to Q8_0 (activations too).
            let tol = if policy == WeightPolicy::Fast {
                f32::max(tol, 0.05)
            } else {
                tol
            };
            assert!(
                d < tol,
                "{dtype:?} {policy:?}: relative logit difference {d}"
            );
        }
    }
}

#[test]
fn f32_gguf_is_exact_so_the_rope_permutation_is_right() {
    let spec = TinySpec::default();
    let (float, tensors) = reference(&spec);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&path, &spec.config(), &tensors, GgmlDType::F32, |_| {}).unwrap();
    let engine = Engine::load(&path, &exact()).unwrap();
    assert!(max_rel_diff(&logits(&float, &IDS), &logits(&engine, &IDS)) < 1e-5);
}

#[test]
fn rope_permutation_round_trips_for_float_and_quantized_rows() {
    let (heads, hd) = (3, 8);
    let to = rope_row_permutation(heads, hd, true);
    let back = rope_row_permutation(heads, hd, false);
    let t = Tensor::arange(0f32, (heads * hd * 32) as f32, &Device::Cpu)
        .unwrap()
        .reshape((heads * hd, 32))
        .unwrap();
    let RawTensor::Float(p) = permute_rows(RawTensor::Float(t.clone()), &to).unwrap() else {
        panic!()
    };
    assert_ne!(p.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    let RawTensor::Float(r) = permute_rows(RawTensor::Float(p), &back).unwrap() else {
        panic!()
    };
    assert_eq!(r.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    let q = candle_core::quantized::QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let want = q.dequantize(&Device::Cpu).unwrap();
    let p = permute_rows(RawTensor::Quantized(q), &to).unwrap();
    let RawTensor::Quantized(r) = permute_rows(p, &back).unwrap() else {
        panic!()
    };
    assert_eq!(
        r.dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        want.to_vec2::<f32>().unwrap()
    );
}

#[test]
fn a_model_saved_as_a_folder_gives_the_logits_of_the_gguf_it_came_from() {
    let spec = TinySpec {
        tie_embeddings: false,
        ..Default::default()
    };
    let (_, tensors) = reference(&spec);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    write_gguf(&gguf, &spec.config(), &tensors, GgmlDType::Q8_0, |_| {}).unwrap();
    for policy in [WeightPolicy::Exact, WeightPolicy::Fast] {
        let opts = LoadOptions {
            weights: policy,
            ..Default::default()
        };
        let from_gguf = Engine::load(&gguf, &opts).unwrap();
        let folder = dir.path().join(format!("hf-{policy:?}"));
        from_gguf.save_hf(&folder).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(folder.join(f).exists(), "{f} written");
        }
        let from_folder = Engine::load(&folder, &opts).unwrap();
        let (a, b) = (logits(&from_gguf, &IDS), logits(&from_folder, &IDS));
        let d = max_rel_diff(&a, &b);
        // Fast requantizes the saved f32 weights to the same Q8_0 blocks: identical logits.
        // Exact runs them as floats, without the int8 activations of the quantized matmul.
        let tol = if policy == WeightPolicy::Fast {
            1e-5
        } else {
            0.05
        };
        assert!(d < tol, "{policy:?}: {d}");
        // Same tokenizer and template too.
        let text = "<|im_start|>user\nthe 42<|im_end|>";
        assert_eq!(
            from_gguf.tokenizer().encode(text).unwrap(),
            from_folder.tokenizer().encode(text).unwrap()
        );
    }
}

#[test]
fn truncating_the_cache_equals_recomputing() {
    let engine = reference(&TinySpec::default()).0;
    let model = engine.model();
    // Run 12 tokens, roll back to 7, run 3 different ones: same as running the 10 directly.
    let mut cache = model.new_cache();
    model.forward(&IDS, &mut cache, Logits::All).unwrap();
    cache.truncate(7);
    let alt = [5u32, 6, 7];
    let a = model.forward(&alt, &mut cache, Logits::All).unwrap();
    let mut fresh = model.new_cache();
    let mut seq = IDS[..7].to_vec();
    seq.extend_from_slice(&alt);
    let b = model
        .forward(&seq, &mut fresh, Logits::All)
        .unwrap()
        .narrow(0, 7, 3)
        .unwrap();
    assert!(max_rel_diff(&b, &a) < 1e-5);
    assert_eq!(cache.len(), 10);
}

#[test]
fn last_position_logits_equal_the_last_row_of_all() {
    let engine = reference(&TinySpec::default()).0;
    let model = engine.model();
    let all = model
        .forward(&IDS, &mut model.new_cache(), Logits::All)
        .unwrap();
    let last = model
        .forward(&IDS, &mut model.new_cache(), Logits::Last)
        .unwrap();
    assert!(max_rel_diff(&all.narrow(0, IDS.len() - 1, 1).unwrap(), &last) < 1e-6);
}
