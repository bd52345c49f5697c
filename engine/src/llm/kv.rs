//! The key/value cache of one conversation: for every layer, the keys and values of every
//! position seen so far, so that a new token attends to them without recomputing them.
//!
//! A cache holds positions `0..len()`, at most [`KvCache::capacity`] of them (the context a
//! session allows, never more than the model's). Layer `l`'s keys of position `p` are one
//! row of `kv_heads × head_dim` values (heads side by side), and so are its values. Storage is
//! [`KvPrecision::F32`] or [`KvPrecision::F16`] (half the memory, as llama.cpp's default; a key
//! or value loses ~3 decimal digits, far less than the 8-bit activations of the projections
//! lose); reads always give f32.
//!
//! Memory grows with the positions written, not with the capacity: [`KvCache::bytes`] is what
//! is allocated now, [`KvCache::bytes_per_position`] what each further position costs. Storage
//! doubles as it grows but never past the capacity, so a full cache is at most
//! `capacity × bytes_per_position` (what `walle.llm.load` checks against a task's budget).
//!
//! Writing is two steps, so a forward pass that fails half-way leaves nothing half-written:
//! each layer [`KvCache::write`]s the rows of the positions being computed (from `len()` on),
//! and [`KvCache::commit`] makes them part of the cache once every layer has; a write not
//! committed is overwritten by the next.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    /// 32-bit floats: exactly what the projections computed.
    F32,
    /// IEEE half floats: half the memory (llama.cpp's default).
    #[default]
    F16,
}

impl KvPrecision {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F32 => 4,
            KvPrecision::F16 => 2,
        }
    }
}

/// Rows of values, in one precision.
#[derive(Debug, Clone)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Rows {
    fn new(precision: KvPrecision) -> Rows {
        match precision {
            KvPrecision::F32 => Rows::F32(Vec::new()),
            KvPrecision::F16 => Rows::F16(Vec::new()),
        }
    }

    /// Writes `values` at element `at`, growing the storage if needed (`at` is at most the
    /// current length: positions are written in order), never past `limit` elements unless
    /// `values` needs it: storage doubles as it grows, but stops at the cache's capacity.
    fn write(&mut self, at: usize, values: &[f32], limit: usize) {
        let end = at + values.len();
        let (len, allocated) = match self {
            Rows::F32(v) => (v.len(), v.capacity()),
            Rows::F16(v) => (v.len(), v.capacity()),
        };
        if end > allocated {
            let target = (2 * allocated).clamp(end, limit.max(end));
            match self {
                Rows::F32(v) => v.reserve_exact(target - len),
                Rows::F16(v) => v.reserve_exact(target - len),
            }
        }
        match self {
            Rows::F32(v) => {
                v.resize(at, 0.0);
                v.extend_from_slice(values);
            }
            Rows::F16(v) => {
                v.resize(at, f16::ZERO);
                v.resize(end, f16::ZERO);
                v[at..end].convert_from_f32_slice(values);
            }
        }
    }

    /// Elements `0..len` as f32: borrowed, or converted into `scratch` (in parallel, in
    /// chunks: a long context converts megabytes).
    fn read_all<'a>(&'a self, len: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        use rayon::prelude::*;
        match self {
            Rows::F32(v) => &v[..len.min(v.len())],
            Rows::F16(v) => {
                let v = &v[..len.min(v.len())];
                scratch.resize(v.len(), 0.0);
                scratch
                    .par_chunks_mut(1 << 15)
                    .zip(v.par_chunks(1 << 15))
                    .for_each(|(out, v)| v.convert_to_f32_slice(out));
                scratch
            }
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Rows::F32(v) => v.truncate(len),
            Rows::F16(v) => v.truncate(len),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity() * 4,
            Rows::F16(v) => v.capacity() * 2,
        }
    }
}

/// The keys and values of every layer for the positions of one conversation.
#[derive(Debug, Clone)]
pub struct KvCache {
    precision: KvPrecision,
    /// Values per position per layer (`kv_heads × head_dim`).
    row: usize,
    capacity: usize,
    len: usize,
    keys: Vec<Rows>,
    values: Vec<Rows>,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_heads` heads of `head_dim` values, holding
    /// at most `capacity` positions.
    pub fn new(
        precision: KvPrecision,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> KvCache {
        KvCache {
            precision,
            row: kv_heads * head_dim,
            capacity,
            len: 0,
            keys: (0..layers).map(|_| Rows::new(precision)).collect(),
            values: (0..layers).map(|_| Rows::new(precision)).collect(),
        }
    }

    /// The storage precision.
    pub fn precision(&self) -> KvPrecision {
        self.precision
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.keys.len()
    }

    /// Values per position and layer (KV heads × head dimensions).
    pub fn row(&self) -> usize {
        self.row
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the cache will hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions that can still be added.
    pub fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Bytes allocated now.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(Rows::bytes).sum()
    }

    /// Bytes each further position takes (keys and values of every layer).
    pub fn bytes_per_position(&self) -> usize {
        2 * self.keys.len() * self.row * self.precision.bytes()
    }

    /// Writes layer `layer`'s keys and values of the positions `len()..len() + n` (`keys` and
    /// `values`: `n` rows each, position after position). Callers check `n <= room()` and
    /// the row widths; the rows are not part of the cache before [`KvCache::commit`].
    pub fn write(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        let at = self.len * self.row;
        let limit = self.capacity * self.row;
        if let (Some(k), Some(v)) = (self.keys.get_mut(layer), self.values.get_mut(layer)) {
            k.write(at, keys, limit);
            v.write(at, values, limit);
        }
    }

    /// Makes the `n` positions written after `len()` part of the cache.
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.capacity);
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            for rows in self.keys.iter_mut().chain(&mut self.values) {
                rows.truncate(len * self.row);
            }
        }
    }

    /// Layer `layer`'s keys and values of positions `0..positions` (written, committed or
    /// not; fewer if fewer were written), rows of [`KvCache::row`] values position after
    /// position, as f32: borrowed when stored in f32, else converted into the scratch
    /// buffers. Attention reads a layer this way once per forward pass, however many tokens
    /// attend to it.
    pub fn layer<'a>(
        &'a self,
        layer: usize,
        positions: usize,
        scratch: &'a mut (Vec<f32>, Vec<f32>),
    ) -> (&'a [f32], &'a [f32]) {
        let len = positions.saturating_mul(self.row);
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => (
                k.read_all(len, &mut scratch.0),
                v.read_all(len, &mut scratch.1),
            ),
            _ => (&[], &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_committed_read_and_truncated() {
        for precision in [KvPrecision::F32, KvPrecision::F16] {
            let mut cache = KvCache::new(precision, 2, 2, 4, 3);
            assert_eq!(cache.bytes_per_position(), 2 * 2 * 8 * precision.bytes());
            let keys: Vec<f32> = (0..16).map(|i| i as f32).collect();
            let values: Vec<f32> = (0..16).map(|i| -(i as f32)).collect();
            for layer in 0..2 {
                cache.write(layer, &keys, &values);
            }
            cache.commit(2);
            assert_eq!((cache.len(), cache.room()), (2, 1));
            let mut rows = (Vec::new(), Vec::new());
            // Layer 1's key of position 1, head 0; layer 0's value of position 0, head 1.
            assert_eq!(
                &cache.layer(1, 2, &mut rows).0[8..12],
                &[8.0, 9.0, 10.0, 11.0]
            );
            assert_eq!(
                &cache.layer(0, 2, &mut rows).1[4..8],
                &[-4.0, -5.0, -6.0, -7.0]
            );
            // An uncommitted write is overwritten by the next.
            cache.write(0, &[1.0; 8], &[1.0; 8]);
            cache.write(0, &[2.0; 8], &[2.0; 8]);
            cache.write(1, &[2.0; 8], &[2.0; 8]);
            cache.commit(1);
            assert_eq!(&cache.layer(0, 3, &mut rows).0[20..24], &[2.0; 4]);
            assert!(cache.bytes() >= 3 * cache.bytes_per_position());
            cache.truncate(1);
            assert_eq!(cache.len(), 1);
            assert_eq!(&cache.layer(0, 1, &mut rows).0[4..8], &[4.0, 5.0, 6.0, 7.0]);
            let (k, v) = cache.layer(1, 1, &mut rows);
            assert_eq!((k, v), (&keys[..8], &values[..8]));
        }
    }

    #[test]
    fn storage_doubles_as_positions_come_but_never_past_the_capacity() {
        let mut cache = KvCache::new(KvPrecision::F16, 2, 3, 64, 600);
        let row = vec![0.5f32; 192];
        for position in 0..600 {
            for layer in 0..2 {
                cache.write(layer, &row, &row);
            }
            cache.commit(1);
            assert!(
                cache.bytes() <= 600 * cache.bytes_per_position(),
                "{} bytes after {} positions",
                cache.bytes(),
                position + 1
            );
            // Doubling: never more than twice what is held (plus the first position).
            assert!(cache.bytes() <= 2 * (position + 1) * cache.bytes_per_position());
        }
        assert_eq!(cache.bytes(), 600 * cache.bytes_per_position());
    }
}
