//! Per-sequence key/value cache, sized by key/value heads x head dim (grouped-query attention
//! stores only its `n_kv_head` heads).

use super::ModelInfo;
use crate::error::Result;

/// For each layer, `k` and `v` laid out `(n_kv_head, capacity, head_dim)`, all in one block.
/// One large allocation comes from the OS as untouched zero pages, so a cache costs memory
/// only as positions fill it (thousands of small per-layer blocks would each be cleared up
/// front).
pub struct KvCache {
    data: Vec<f32>,
    per_layer: usize,
    capacity: usize,
    /// Positions filled so far.
    pub len: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions (at most the model's context), or
    /// `Error::Memory`.
    pub fn new(info: &ModelInfo, capacity: usize) -> Result<Self> {
        let capacity = capacity.min(info.context);
        let per_layer = capacity * info.n_kv_head * info.head_dim;
        Ok(Self {
            data: crate::memory::zeroed(2 * info.n_layer * per_layer, "the KV cache")?,
            per_layer,
            capacity,
            len: 0,
        })
    }

    /// Bytes of a cache for `capacity` positions (128-bit, for checks before allocating).
    pub fn bytes_for(info: &ModelInfo, capacity: usize) -> u128 {
        let capacity = capacity.min(info.context) as u128;
        2 * info.n_layer as u128 * capacity * (info.n_kv_head * info.head_dim) as u128 * 4
    }

    /// Layer `l`'s keys and values.
    pub(crate) fn layer_mut(&mut self, l: usize) -> (&mut [f32], &mut [f32]) {
        let n = self.per_layer;
        self.data[2 * l * n..2 * (l + 1) * n].split_at_mut(n)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
