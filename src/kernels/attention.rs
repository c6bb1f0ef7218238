//! Causal attention on the CPU over the KV cache, written so that a query's result does not
//! depend on how many queries share the forward pass: each query row reads exactly the keys at
//! or before its position, in the same order, with the same arithmetic. That is what makes a
//! Jacobi block produce bit-identical predictions to one-token autoregressive steps (candle's
//! batched matmul and softmax round differently for different shapes, which flips near-ties).

use crate::kernels::simd::{dot8, dot8x4, exp_neg, multiversion, sum8};

/// `q`: (heads, m, hd) for positions `offset..offset + m`; `k`, `v`: (kv_heads, capacity, hd)
/// cache buffers holding positions `0..offset + m`. Returns (m, heads * hd).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    m: usize,
    hd: usize,
    capacity: usize,
    offset: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    // Each head into its own (m, hd) slab; heads are independent, so they run in parallel when
    // there is enough work. Each (head, row) is computed by the same code either way.
    let mut per_head = vec![0f32; heads * m * hd];
    let rep = heads / kv_heads;
    let one = |(h, slab): (usize, &mut [f32])| {
        let mut scores = vec![0f32; offset + m];
        head(q, k, v, h, rep, m, hd, capacity, offset, &mut scores, slab);
    };
    if m * (offset + m) * heads <= 1 << 11 {
        per_head.chunks_mut(m * hd).enumerate().for_each(one);
    } else {
        per_head.par_chunks_mut(m * hd).enumerate().for_each(one);
    }
    // (heads, m, hd) -> (m, heads * hd)
    let mut out = vec![0f32; m * heads * hd];
    for h in 0..heads {
        for i in 0..m {
            out[(i * heads + h) * hd..][..hd].copy_from_slice(&per_head[(h * m + i) * hd..][..hd]);
        }
    }
    out
}

multiversion! {
    /// One head's causal attention for m queries into `out` (m, hd).
    fn head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        h: usize,
        rep: usize,
        m: usize,
        hd: usize,
        capacity: usize,
        offset: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let base = (h / rep) * capacity * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        for i in 0..m {
            let len = offset + i + 1;
            let qrow = &q[(h * m + i) * hd..][..hd];
            let scores = &mut scores[..len];
            let quads = len / 4 * 4;
            for j in (0..quads).step_by(4) {
                let key = |t: usize| &k[base + (j + t) * hd..][..hd];
                let d = dot8x4(qrow, [key(0), key(1), key(2), key(3)]);
                for t in 0..4 {
                    scores[j + t] = d[t] * scale;
                }
            }
            for j in quads..len {
                scores[j] = dot8(qrow, &k[base + j * hd..][..hd]) * scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for s in scores.iter_mut() {
                *s = exp_neg(*s - max);
            }
            let inv = 1.0 / sum8(scores);
            let o = &mut out[i * hd..(i + 1) * hd];
            o.fill(0.0);
            for (j, &s) in scores.iter().enumerate() {
                let p = s * inv;
                for (o, &x) in o.iter_mut().zip(&v[base + j * hd..][..hd]) {
                    *o += p * x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        nh: usize,
        nkv: usize,
        m: usize,
        hd: usize,
        cap: usize,
        off: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * nh * hd];
        for h in 0..nh {
            let kh = h / (nh / nkv);
            for i in 0..m {
                let len = off + i + 1;
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                q[(h * m + i) * hd + d] as f64 * k[(kh * cap + j) * hd + d] as f64
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[(i * nh + h) * hd + d] = (0..len)
                        .map(|j| e[j] / z * v[(kh * cap + j) * hd + d] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_reference_and_is_independent_of_the_block() {
        let (nh, nkv, hd, cap) = (6, 2, 20, 64);
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let k: Vec<f32> = (0..nkv * cap * hd).map(|_| rnd() * 4.0).collect();
        let v: Vec<f32> = (0..nkv * cap * hd).map(|_| rnd()).collect();
        let (m, off) = (7, 30);
        let q: Vec<f32> = (0..nh * m * hd).map(|_| rnd() * 4.0).collect();
        let got = causal_attention(&q, &k, &v, nh, nkv, m, hd, cap, off);
        let want = naive(&q, &k, &v, nh, nkv, m, hd, cap, off);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Row i of the block equals a one-query call at offset + i, bit for bit.
        for i in 0..m {
            let q1: Vec<f32> = (0..nh)
                .flat_map(|h| q[(h * m + i) * hd..][..hd].to_vec())
                .collect();
            let one = causal_attention(&q1, &k, &v, nh, nkv, 1, hd, cap, off + i);
            assert_eq!(&one[..], &got[i * nh * hd..(i + 1) * nh * hd]);
        }
    }
}
