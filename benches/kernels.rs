//! Micro-benchmarks of the CPU kernels at SmolLM2-135M's shapes: the quantized matmul per
//! number of activation rows m (the cost curve Jacobi decoding lives on), in cache and streamed
//! from memory, activation quantization, and attention over a 256-token cache.
//! `cargo bench --bench kernels`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fixpoint::kernels::{matmul, QuantActs, QuantMatrix};

fn weights(n: usize, k: usize, q4: bool) -> QuantMatrix {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 5000.0)
        .collect();
    let q8 = QuantMatrix::quantize_q8(n, k, &w);
    if !q4 {
        return q8;
    }
    // Q4 codes and scales taken from the Q8 ones: any values do for timing.
    let nb = k / 32;
    let d: Vec<half::f16> = (0..n * nb)
        .map(|i| half::f16::from_f32(q8.scale(i / nb, i % nb)))
        .collect();
    let m: Vec<half::f16> = d.iter().map(|&v| -v).collect();
    let qs: Vec<u8> = (0..n * k / 2).map(|i| ((i * 7919) % 256) as u8).collect();
    QuantMatrix::q4(n, k, qs, &d, &m)
}

fn acts(m: usize, k: usize) -> QuantActs {
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i % 17) as f32 - 8.0) * if i % 37 == 0 { 10.0 } else { 1.0 })
        .collect();
    let mut a = QuantActs::default();
    a.quantize(&x, m, k);
    a
}

use fixpoint::kernels::team::alone;

/// On the kernel threads, as a forward calls them.
fn matmul_rows(c: &mut Criterion) {
    // gate+up projection (Q4_1 in the default model) and the tied LM head (Q8_0).
    for (name, n, k, q4) in [
        ("gate_up_q4", 3072, 576, true),
        ("down_q4", 576, 1536, true),
        ("lm_head_q8", 49152, 576, false),
    ] {
        let w = weights(n, k, q4);
        let mut group = c.benchmark_group(format!("matmul/{name}"));
        group.sample_size(20);
        for m in [1, 2, 4, 8, 16, 32] {
            let x = acts(m, k);
            let mut out = vec![0f32; m * n];
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, _| {
                b.iter(|| matmul(&w, &x, &mut out))
            });
        }
        group.finish();
    }
}

/// One thread on weights that fit in L1 (64 rows of 576): the kernel's arithmetic throughput
/// alone, without memory or scheduling. Elements are multiply-adds.
fn matmul_in_cache(c: &mut Criterion) {
    let (n, k) = (64, 576);
    for (name, q4) in [("q4", true), ("q8", false)] {
        let w = weights(n, k, q4);
        let mut group = c.benchmark_group(format!("matmul_in_cache/{name}"));
        for m in [1, 4, 8] {
            let x = acts(m, k);
            let mut out = vec![0f32; m * n];
            group.throughput(Throughput::Elements((m * n * k) as u64));
            group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, _| {
                alone(|| b.iter(|| matmul(&w, &x, &mut out)))
            });
        }
        group.finish();
    }
}

/// gate+up at the model's size on the kernel threads, as in a forward: one matrix over and over
/// (it stays in the cores' caches) against 48 copies in turn, packed into one arena of 2 MiB
/// pages as the model's weights are (53 MB, past the L3). Equal times mean the arithmetic, not
/// the stream from memory, sets the matmul's pace. Elements are multiply-adds.
fn matmul_stream(c: &mut Criterion) {
    let (n, k) = (3072, 576);
    let mut copies: Vec<QuantMatrix> = (0..48).map(|_| weights(n, k, true)).collect();
    fixpoint::kernels::pack(copies.iter_mut().flat_map(|w| w.stores()).collect());
    let mut group = c.benchmark_group("matmul_stream/gate_up_q4");
    group.sample_size(20);
    for m in [1, 8, 16] {
        let x = acts(m, k);
        let mut out = vec![0f32; m * n];
        group.throughput(Throughput::Elements((m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new("cached", m), &m, |b, _| {
            b.iter(|| matmul(&copies[0], &x, &mut out))
        });
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("streamed", m), &m, |b, _| {
            b.iter(|| {
                next = (next + 1) % copies.len();
                matmul(&copies[next], &x, &mut out)
            })
        });
    }
    group.finish();
}

fn quantize(c: &mut Criterion) {
    let x: Vec<f32> = (0..16 * 1536).map(|i| (i % 13) as f32 - 6.0).collect();
    let mut a = QuantActs::default();
    // Split over the kernel threads, as in a forward.
    c.bench_function("quantize_acts/16x1536", |b| {
        b.iter(|| a.quantize(&x, 16, 1536))
    });
    // One thread, as between the matmuls of a forward of 8 tokens (8 x 576 is not split).
    c.bench_function("quantize_acts/8x576", |b| {
        alone(|| b.iter(|| a.quantize(&x[..8 * 576], 8, 576)))
    });
}

fn attention(c: &mut Criterion) {
    let (nh, nkv, hd) = (9, 3, 64);
    for (offset, sizes) in [(256, &[1, 8, 16][..]), (1536, &[1, 8][..])] {
        let cap = offset + 256;
        let k: Vec<half::f16> = (0..nkv * cap * hd)
            .map(|i| half::f16::from_f32(((i % 29) as f32 - 14.0) / 14.0))
            .collect();
        let v = k.clone();
        let mut group = c.benchmark_group(format!("attention/cache{offset}"));
        group.sample_size(30);
        for &m in sizes {
            let q: Vec<f32> = (0..nh * m * hd)
                .map(|i| ((i % 31) as f32 - 15.0) / 15.0)
                .collect();
            let mut out = vec![0f32; m * nh * hd];
            group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, &m| {
                b.iter(|| {
                    fixpoint::kernels::causal_attention(
                        &q, &k, &v, nh, nkv, m, hd, cap, offset, &mut out,
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group!(
    benches,
    matmul_rows,
    matmul_in_cache,
    matmul_stream,
    quantize,
    attention
);
criterion_main!(benches);
