//! Times the batched quantized matmul alone for SmolLM2-135M's shapes (all layers' matrices of
//! one forward), per m. `cargo run --release --example kernel_timing`
use fixpoint::kernels::{matmul, QuantActs, QuantMatrix};
use std::time::Instant;

fn main() {
    let shapes = [
        (576 + 2 * 192, 576),
        (576, 576),
        (2 * 1536, 576),
        (576, 1536),
    ];
    let mats: Vec<QuantMatrix> = shapes
        .iter()
        .map(|&(n, k)| {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 5000.0)
                .collect();
            QuantMatrix::quantize_q8(n, k, &w)
        })
        .map(|q| match q {
            QuantMatrix::Q8 { n, k, qs, d } => QuantMatrix::Q4 {
                n,
                k,
                qs: qs.iter().take(n * k / 2).map(|&x| x as u8).collect(),
                m: d.clone(),
                d,
            },
            other => other,
        })
        .collect();
    let head = QuantMatrix::quantize_q8(49152, 576, &vec![0.01; 49152 * 576]);
    for m in [1, 2, 4, 8, 16, 32] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _layer in 0..30 {
                for (w, &(n, k)) in mats.iter().zip(&shapes) {
                    let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 - 8.0).collect();
                    let mut a = QuantActs::default();
                    a.quantize(&x, m, k);
                    let mut out = vec![0f32; m * n];
                    matmul(w, &a, &mut out);
                }
            }
            let x: Vec<f32> = vec![0.5; m * 576];
            let mut a = QuantActs::default();
            a.quantize(&x, m, 576);
            let mut out = vec![0f32; m * 49152];
            matmul(&head, &a, &mut out);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("m={m:>2}: {best:.2} ms");
    }
}
