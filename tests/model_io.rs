//! Loading models from GGUF and Hugging Face folders: every supported tensor type, the RoPE
//! row permutation, saving and reloading, and the truncatable KV cache.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use fixpoint::model::weights::{permute_rows, rope_row_permutation};
use fixpoint::model::{KvCache, Logits, RawTensor};
use fixpoint::testing::{tiny_tokenizer, write_gguf, TinySpec};
use fixpoint::{Engine, LoadOptions, WeightPolicy};

const IDS: [u32; 12] = [1, 80, 77, 70, 90, 65, 100, 3, 150, 200, 2, 45];

fn logits(engine: &Engine, ids: &[u32]) -> Tensor {
    forward(engine, &mut engine.model().new_cache(), ids, Logits::All)
}

fn forward(engine: &Engine, cache: &mut KvCache, ids: &[u32], which: Logits) -> Tensor {
    let v = engine.model().forward(ids, cache, which).unwrap();
    let vocab = engine.model().config().vocab_size;
    Tensor::from_vec(v.clone(), (v.len() / vocab, vocab), &Device::Cpu).unwrap()
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

/// The same tiny model on candle (exact f32) and on our CPU kernels (Q8 weights).
fn both_backends() -> Vec<Engine> {
    let spec = TinySpec::default();
    vec![
        reference(&spec).0,
        Engine::from_parts(
            spec.build_fast().unwrap(),
            tiny_tokenizer(),
            "fast".as_ref(),
        ),
    ]
}

#[test]
fn truncating_the_cache_equals_recomputing() {
    for engine in both_backends() {
        // Run 12 tokens, roll back to 7, run 3 different ones: same as running the 10 directly.
        let mut cache = engine.model().new_cache();
        forward(&engine, &mut cache, &IDS, Logits::All);
        cache.truncate(7);
        let alt = [5u32, 6, 7];
        let a = forward(&engine, &mut cache, &alt, Logits::All);
        let mut seq = IDS[..7].to_vec();
        seq.extend_from_slice(&alt);
        let b = logits(&engine, &seq).narrow(0, 7, 3).unwrap();
        assert!(max_rel_diff(&b, &a) < 1e-5, "{}", engine.model().backend());
        assert_eq!(cache.len(), 10);
    }
}

#[test]
fn a_cache_that_grew_equals_one_sized_up_front() {
    for engine in both_backends() {
        // 200 tokens fit the first allocation (256 positions); 100 more make it grow, copying
        // what it holds into the larger buffers.
        let ids: Vec<u32> = (0..300u32).map(|i| (i * 7919 + 13) % 250 + 3).collect();
        let mut cache = engine.model().new_cache();
        forward(&engine, &mut cache, &ids[..200], Logits::Last);
        let grown = forward(&engine, &mut cache, &ids[200..], Logits::All);
        let whole = logits(&engine, &ids).narrow(0, 200, 100).unwrap();
        assert!(
            max_rel_diff(&whole, &grown) < 1e-5,
            "{}",
            engine.model().backend()
        );
    }
}

#[test]
fn forwards_into_one_buffer_on_one_cache_equal_fresh_ones() {
    // Block sizes up and down on one cache and one logits buffer, rejected positions dropped
    // between passes, as the Jacobi decoder does: each pass's logits equal a fresh cache's.
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 7919 + 13) % 250 + 3).collect();
    for engine in both_backends() {
        let model = engine.model();
        let (mut cache, mut buf) = (model.new_cache(), Vec::new());
        model
            .forward_into(&ids[..20], &mut cache, Logits::Last, &mut buf)
            .unwrap();
        for (keep, m) in [(20, 7), (22, 2), (23, 9), (25, 1), (25, 5)] {
            cache.truncate(keep);
            let block = &ids[keep..keep + m];
            model
                .forward_into(block, &mut cache, Logits::All, &mut buf)
                .unwrap();
            let want = logits(&engine, &ids[..keep + m])
                .narrow(0, keep, m)
                .unwrap();
            let vocab = model.config().vocab_size;
            let got = Tensor::from_vec(buf.clone(), (m, vocab), &Device::Cpu).unwrap();
            assert!(
                max_rel_diff(&want, &got) < 1e-5,
                "{} at {keep}+{m}",
                model.backend()
            );
        }
    }
}

#[test]
fn last_position_logits_equal_the_last_row_of_all() {
    for engine in both_backends() {
        let all = logits(&engine, &IDS);
        let last = forward(&engine, &mut engine.model().new_cache(), &IDS, Logits::Last);
        assert!(max_rel_diff(&all.narrow(0, IDS.len() - 1, 1).unwrap(), &last) < 1e-6);
    }
}

#[test]
fn cpu_kernels_agree_with_candle_on_the_same_quantized_file() {
    let spec = TinySpec::default();
    let dir = tempfile::tempdir().unwrap();
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        write_gguf(
            &path,
            &spec.config(),
            &spec.random_tensors().unwrap(),
            dtype,
            |_| {},
        )
        .unwrap();
        let candle = Engine::load(&path, &exact()).unwrap();
        let fast = Engine::load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(candle.model().backend(), "candle");
        assert_eq!(
            fast.model().backend(),
            format!("cpu-kernels ({})", fixpoint::kernels::Isa::current().name())
        );
        // Same weights and int8 activations per 32 values; candle stores activation scales as
        // f16 (we keep f32) and sums in another order, and a code that rounds the other way
        // propagates through the layers.
        let d = max_rel_diff(&logits(&candle, &IDS), &logits(&fast, &IDS));
        assert!(d < 0.02, "{dtype:?}: {d}");
    }
}
