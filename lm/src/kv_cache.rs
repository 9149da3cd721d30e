//! The key/value cache: one [slots, kv_heads, capacity, head_dim] tensor pair per layer.
//! Each slot is one generation row; rows may hold different numbers of tokens.

use tch::{Device, Kind, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    capacity: i64,
}

impl KvCache {
    pub fn new(
        layers: usize,
        slots: i64,
        kv_heads: i64,
        head_dim: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let capacity = 64;
        let make = || Tensor::zeros([slots, kv_heads, capacity, head_dim], (kind, device));
        Self {
            keys: (0..layers).map(|_| make()).collect(),
            values: (0..layers).map(|_| make()).collect(),
            capacity,
        }
    }

    pub fn slots(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Grows the time axis (doubling) so that `len` positions fit.
    pub fn ensure_capacity(&mut self, len: i64) {
        if len <= self.capacity {
            return;
        }
        let mut cap = self.capacity.max(1);
        while cap < len {
            cap *= 2;
        }
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut size = t.size();
            size[2] = cap - self.capacity;
            let pad = Tensor::zeros(&size[..], (t.kind(), t.device()));
            *t = Tensor::cat(&[&*t, &pad], 2);
        }
        self.capacity = cap;
    }

    /// Keeps only the slots in `keep` (in that order): finished rows stop costing memory.
    pub fn retain(&mut self, keep: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, keep);
        }
    }

    /// Writes k, v [R, kvH, S, D] of `rows` at per-token `positions` [R, S].
    pub fn write(
        &mut self,
        layer: usize,
        rows: &Tensor,
        positions: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) {
        let idx = [
            Some(rows.unsqueeze(1)),
            None,
            Some(positions.shallow_clone()),
        ];
        // Advanced indexing with a slice in between puts the indexed dims first: [R, S, kvH, D].
        let _ = self.keys[layer].index_put_(&idx, &k.transpose(1, 2), false);
        let _ = self.values[layer].index_put_(&idx, &v.transpose(1, 2), false);
    }

    /// The first `len` positions of `rows`: ([R, kvH, len, D], same).
    pub fn read(&self, layer: usize, rows: &Tensor, all_rows: bool, len: i64) -> (Tensor, Tensor) {
        let pick = |t: &Tensor| {
            let t = t.narrow(2, 0, len);
            if all_rows {
                t
            } else {
                t.index_select(0, rows)
            }
        };
        (pick(&self.keys[layer]), pick(&self.values[layer]))
    }
}

impl KvCache {
    /// Copies the first `len` positions of slot `from` into slot `to`.
    pub fn copy_slot(&mut self, from: i64, to: i64, len: i64) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let src = t.narrow(0, from, 1).narrow(2, 0, len);
            t.narrow(0, to, 1).narrow(2, 0, len).copy_(&src);
        }
    }

    /// Appends `n` empty slots.
    pub fn add_slots(&mut self, n: i64) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut size = t.size();
            size[0] = n;
            let extra = Tensor::zeros(&size[..], (t.kind(), t.device()));
            *t = Tensor::cat(&[&*t, &extra], 0);
        }
    }
}
