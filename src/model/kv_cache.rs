//! Per-layer key/value cache that grows in place and can be truncated to any length, which is
//! what Jacobi decoding needs to drop the entries of rejected block positions. It also keeps the
//! token ids it holds, so that a later prompt that starts the same (a chat's next turn) can
//! reuse the entries (see `decode::generate_in` and the engine's kept caches).

use candle_core::{Result, Tensor};
use half::f16;

#[derive(Debug, Clone)]
struct LayerCache {
    /// (1, kv_heads, capacity, head_dim)
    k: Tensor,
    v: Tensor,
}

#[derive(Debug, Clone)]
pub struct KvCache {
    /// Tensors, for the candle forward.
    layers: Vec<Option<LayerCache>>,
    /// Plain buffers, (kv_heads, cpu_capacity, head_dim) per layer, for the CPU forward. Kept
    /// as f16 (as llama.cpp does): a one-token forward reads the whole cache, and at long
    /// contexts that read outweighs the weights.
    cpu: Vec<(Vec<f16>, Vec<f16>)>,
    cpu_capacity: usize,
    /// (kv_heads, head_dim) of the CPU buffers, once they exist.
    cpu_shape: (usize, usize),
    /// The CPU forward's working buffers, kept between forwards (see [`super::cpu::Buffers`]).
    pub(crate) buffers: super::cpu::Buffers,
    len: usize,
    max_len: usize,
    /// The token at each position `0..len`, as [`KvCache::record`] was told; shorter than `len`
    /// if a forward bypassed it (then [`KvCache::tokens`] knows nothing).
    tokens: Vec<u32>,
}

impl KvCache {
    pub fn new(num_layers: usize, max_len: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            cpu: vec![(Vec::new(), Vec::new()); num_layers],
            cpu_capacity: 0,
            cpu_shape: (0, 0),
            buffers: Default::default(),
            len: 0,
            max_len,
            tokens: Vec::new(),
        }
    }

    /// Number of positions held (the offset of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every position at or after `len`.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.tokens.truncate(self.len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// The token ids at positions `0..len`, if every forward into this cache recorded them.
    pub fn tokens(&self) -> Option<&[u32]> {
        (self.tokens.len() == self.len).then_some(&self.tokens[..])
    }

    /// A new cache holding this one's first `len` positions (the CPU forward's entries; a cache
    /// of the candle forward gives an empty one), with room for only as many as it needs: for
    /// continuing from a shared start while this cache stays as it is.
    pub fn copy_prefix(&self, len: usize) -> KvCache {
        let mut copy = KvCache::new(self.cpu.len(), self.max_len);
        let (kv_heads, head_dim) = self.cpu_shape;
        let len = len.min(self.len);
        if self.cpu_capacity == 0 || len == 0 || self.tokens().is_none() {
            return copy;
        }
        let cap = copy.reserve_cpu(len, kv_heads, head_dim);
        let (old, rows) = (self.cpu_capacity * head_dim, len * head_dim);
        for ((k, v), (ck, cv)) in self.cpu.iter().zip(&mut copy.cpu) {
            for (src, dst) in [(k, ck), (v, cv)] {
                for h in 0..kv_heads {
                    dst[h * cap * head_dim..][..rows].copy_from_slice(&src[h * old..][..rows]);
                }
            }
        }
        copy.len = len;
        copy.tokens = self.tokens[..len].to_vec();
        copy
    }

    /// Frees the CPU forward's working buffers (about 18 MB for SmolLM2 after a 512-token
    /// prefill chunk); the next forward on this cache allocates them again.
    pub fn release_buffers(&mut self) {
        self.buffers = Default::default();
    }

    /// Notes that positions `start..` now hold `tokens` (after a forward from `start`).
    pub(crate) fn record(&mut self, start: usize, tokens: &[u32]) {
        self.tokens.truncate(start);
        // Positions before `start` unknown: stay unknown.
        if self.tokens.len() == start && start + tokens.len() == self.len {
            self.tokens.extend_from_slice(tokens);
        }
    }

    /// Writes `k`, `v` (1, kv_heads, m, head_dim) at positions `len..len+m` of `layer` and returns
    /// views of positions `0..len+m`. The length advances once per forward via [`Self::advance`].
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, kvh, m, hd) = k.dims4()?;
        let needed = self.len + m;
        if needed > self.max_len {
            candle_core::bail!(
                "KV cache overflow: {needed} positions, capacity {}",
                self.max_len
            );
        }
        let slot = &mut self.layers[layer];
        let capacity = slot.as_ref().map(|c| c.k.dims()[2]).unwrap_or(0);
        if needed > capacity {
            // Grow geometrically so appends stay amortised O(m).
            let new_cap = (needed.max(256).next_power_of_two())
                .min(self.max_len)
                .max(needed);
            let k_new = Tensor::zeros((b, kvh, new_cap, hd), k.dtype(), k.device())?;
            let v_new = Tensor::zeros((b, kvh, new_cap, hd), v.dtype(), v.device())?;
            if let Some(old) = slot.as_ref() {
                if self.len > 0 {
                    k_new.slice_set(&old.k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    v_new.slice_set(&old.v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            *slot = Some(LayerCache { k: k_new, v: v_new });
        }
        let c = slot.as_ref().expect("allocated above");
        c.k.slice_set(&k.contiguous()?, 2, self.len)?;
        c.v.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((c.k.narrow(2, 0, needed)?, c.v.narrow(2, 0, needed)?))
    }

    /// Makes the CPU buffers hold at least `needed` positions; returns their capacity.
    pub(crate) fn reserve_cpu(&mut self, needed: usize, kv_heads: usize, head_dim: usize) -> usize {
        let old = self.cpu_capacity;
        self.cpu_shape = (kv_heads, head_dim);
        if needed > old {
            // Grow geometrically so appends stay amortised O(m).
            let cap = needed
                .max(256)
                .next_power_of_two()
                .min(self.max_len)
                .max(needed);
            let keep = self.len * head_dim;
            for (k, v) in &mut self.cpu {
                for buf in [k, v] {
                    let mut grown = vec![f16::ZERO; kv_heads * cap * head_dim];
                    if old > 0 {
                        for h in 0..kv_heads {
                            grown[h * cap * head_dim..][..keep]
                                .copy_from_slice(&buf[h * old * head_dim..][..keep]);
                        }
                    }
                    *buf = grown;
                }
            }
            self.cpu_capacity = cap;
        }
        self.cpu_capacity
    }

    /// The CPU key and value buffers of `layer`.
    pub(crate) fn cpu_layer(&mut self, layer: usize) -> (&mut [f16], &mut [f16]) {
        let (k, v) = &mut self.cpu[layer];
        (k, v)
    }

    /// The whole (1, kv_heads, capacity, head_dim) buffers of `layer`, once it holds anything.
    pub(crate) fn buffers(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers[layer].as_ref().map(|c| (&c.k, &c.v))
    }

    pub(crate) fn advance(&mut self, m: usize) {
        self.len += m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_forwards_and_truncation() {
        let mut c = KvCache::new(1, 16);
        assert_eq!(c.tokens(), Some(&[][..]));
        c.advance(3);
        c.record(0, &[1, 2, 3]);
        assert_eq!(c.tokens(), Some(&[1, 2, 3][..]));
        c.truncate(2);
        assert_eq!(c.tokens(), Some(&[1, 2][..]));
        c.advance(2);
        c.record(2, &[7, 8]);
        assert_eq!(c.tokens(), Some(&[1, 2, 7, 8][..]));
        // A forward that was not recorded: what follows it is unknown.
        c.advance(1);
        assert_eq!(c.tokens(), None);
        c.advance(1);
        c.record(5, &[9]);
        assert_eq!(c.tokens(), None);
        // What came before it is still known.
        c.truncate(4);
        assert_eq!(c.tokens(), Some(&[1, 2, 7, 8][..]));
        c.clear();
        assert_eq!(c.tokens(), Some(&[][..]));
    }
}
