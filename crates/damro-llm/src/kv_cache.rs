//! The key/value cache of the decoder, passed in from outside.
//!
//! A [`KvCache`] holds a batch of rows that may have different lengths. All
//! rows share one column axis: rows are right-aligned (left padding), and a
//! padding mask records which columns of each row hold real tokens. Each row
//! keeps its own position counter, so a row's positions run contiguously
//! over its own tokens, starting at 0 at its first real token, whatever
//! padding precedes it.
//!
//! Storage is preallocated per layer as `[batch, kv_heads, capacity,
//! head_dim]`; a forward step writes its keys and values in place into the
//! next free columns (no copy of the cached part) and attention reads a view
//! of the used columns. When the capacity is exhausted it doubles (one copy).
//!
//! DAMRO runs two branches of very different lengths (LLaVA: ~600 tokens for
//! the full image, ~30 for the outlier tokens). Prefill each branch alone
//! (batch 1, no wasted work on padding), join the two caches with
//! [`KvCache::stack`], then run every decode step for both branches as one
//! batch-2 forward:
//!
//! ```no_run
//! # use damro_llm::{Llama, KvCache, LogitsAt};
//! # fn demo(model: &Llama, full: &tch::Tensor, outlier: &tch::Tensor, next: &tch::Tensor)
//! #     -> damro_llm::Result<()> {
//! let mut a = model.new_cache(1, 1024)?;
//! let mut b = model.new_cache(1, 64)?;
//! let l_full = model.forward(full, &mut a, LogitsAt::Last)?;
//! let l_outlier = model.forward(outlier, &mut b, LogitsAt::Last)?;
//! let mut both = KvCache::stack(&[&a, &b], 1024)?;
//! // `next`: [2, 1, hidden], the embedding of the chosen token for each row.
//! let logits = model.forward(next, &mut both, LogitsAt::Last)?; // [2, 1, vocab]
//! # Ok(()) }
//! ```

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// The per-layer geometry and storage type of a cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheShape {
    /// Number of decoder layers (one key and one value buffer each).
    pub num_layers: i64,
    /// Key/value heads per layer.
    pub kv_heads: i64,
    /// Size of one head.
    pub head_dim: i64,
    /// Dtype of the stored keys and values.
    pub kind: Kind,
    /// Device of the buffers.
    pub device: Device,
}

/// How one step's queries are masked, as [`KvCache::begin_step`] decides
/// from the rows' padding.
#[derive(Debug)]
#[non_exhaustive]
pub enum StepMask {
    /// Every key is visible (one new token per row, no padding).
    None,
    /// Plain causal masking from column 0 (no padding, empty cache).
    Causal,
    /// Boolean `[batch, 1, step, cached + step]`, `true` = attend.
    Explicit(Tensor),
    /// One new token per row, and each row's real keys are one run of
    /// columns `first[row]..` (left padding only): attend to that run
    /// alone, no mask. This is every decode step of left-padded rows, e.g.
    /// DAMRO's short outlier branch stacked with the full one, whose
    /// padding is then never read.
    Ranges(Vec<i64>),
}

/// What a model needs to run one step on a cache: returned by
/// [`KvCache::begin_step`], then used by every layer of the step.
#[derive(Debug)]
pub struct Step {
    /// First column written by this step (pass it to [`KvCache::write`]).
    pub start: i64,
    /// Positions of the step's tokens, `[batch, step]` int64 on the cache's
    /// device: each row's positions run on from its own real-token count
    /// (padding columns get 0).
    pub positions: Tensor,
    /// The longest row's length (real tokens) after this step.
    pub max_row_len: i64,
    /// How the step's queries must be masked against the keys
    /// `0..start + step`.
    pub mask: StepMask,
}

/// A batched key/value cache with left padding. See the module docs.
#[derive(Debug)]
pub struct KvCache {
    shape: CacheShape,
    batch: i64,
    capacity: i64,
    len: i64,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `[batch, capacity]` bool on the cache's device, `true` = real token.
    mask: Tensor,
    /// Host copy of `mask[:, ..len]`.
    valid: Vec<Vec<bool>>,
    /// Real tokens per row (= the next position of each row).
    lens: Vec<i64>,
}

impl KvCache {
    /// An empty cache of `batch` rows with room for `capacity` columns.
    pub fn new(shape: CacheShape, batch: i64, capacity: i64) -> Result<Self> {
        if batch <= 0 || capacity <= 0 || shape.num_layers <= 0 {
            return Err(Error::Cache(format!(
                "batch ({batch}), capacity ({capacity}) and layers ({}) must be positive",
                shape.num_layers
            )));
        }
        let buffer = || {
            Tensor::f_zeros(
                [batch, shape.kv_heads, capacity, shape.head_dim],
                (shape.kind, shape.device),
            )
        };
        let mut keys = Vec::with_capacity(shape.num_layers as usize);
        let mut values = Vec::with_capacity(shape.num_layers as usize);
        for _ in 0..shape.num_layers {
            keys.push(buffer()?);
            values.push(buffer()?);
        }
        Ok(Self {
            shape,
            batch,
            capacity,
            len: 0,
            keys,
            values,
            mask: Tensor::f_zeros([batch, capacity], (Kind::Bool, shape.device))?,
            valid: vec![Vec::new(); batch as usize],
            lens: vec![0; batch as usize],
        })
    }

    /// The cache's geometry.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// Number of rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Columns in use (the longest row plus the padding of shorter rows).
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no column is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Columns allocated.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Real tokens per row; also each row's next position.
    pub fn row_lens(&self) -> &[i64] {
        &self.lens
    }

    /// Whether column `col` of `row` holds a real token (host-side copy of
    /// [`KvCache::padding_mask`]).
    pub fn is_real(&self, row: usize, col: usize) -> bool {
        self.valid
            .get(row)
            .and_then(|r| r.get(col))
            .copied()
            .unwrap_or(false)
    }

    /// The padding mask of the used columns, `true` = real token.
    ///
    /// # Shapes
    /// → `[batch, len]` bool
    pub fn padding_mask(&self) -> Result<Tensor> {
        Ok(self.mask.f_narrow(1, 0, self.len)?)
    }

    /// The cached keys and values of one layer, used columns only (views).
    ///
    /// # Shapes
    /// → `[batch, kv_heads, len, head_dim]` each
    pub fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = self.buffers(layer)?;
        Ok((k.f_narrow(2, 0, self.len)?, v.f_narrow(2, 0, self.len)?))
    }

    /// A deep copy with the same capacity (e.g. to branch a prompt).
    pub fn fork(&self) -> Result<Self> {
        let mut out = Self::new(self.shape, self.batch, self.capacity)?;
        out.copy_columns_from(self, 0, 0, self.len)?;
        out.len = self.len;
        out.valid = self.valid.clone();
        out.lens = self.lens.clone();
        Ok(out)
    }

    /// Drops every column from `len` on (all rows), keeping the capacity.
    pub fn truncate(&mut self, len: i64) -> Result<()> {
        if len < 0 || len > self.len {
            return Err(Error::Cache(format!(
                "cannot truncate to {len} columns: {} in use",
                self.len
            )));
        }
        self.len = len;
        for (row, n) in self.valid.iter_mut().zip(self.lens.iter_mut()) {
            row.truncate(len as usize);
            *n = row.iter().filter(|&&v| v).count() as i64;
        }
        Ok(())
    }

    /// Empties the cache, keeping its buffers.
    pub fn reset(&mut self) {
        self.len = 0;
        self.valid.iter_mut().for_each(Vec::clear);
        self.lens.iter_mut().for_each(|n| *n = 0);
    }

    /// Makes room for at least `capacity` columns (copies the used part
    /// once when it has to grow).
    pub fn reserve(&mut self, capacity: i64) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let mut grown = Self::new(self.shape, self.batch, capacity)?;
        grown.copy_columns_from(self, 0, 0, self.len)?;
        self.keys = grown.keys;
        self.values = grown.values;
        self.mask = grown.mask;
        self.capacity = capacity;
        Ok(())
    }

    /// Joins caches into one batch: the rows of `caches[0]` first, then
    /// those of `caches[1]`, and so on. Shorter caches are left-padded to
    /// the longest; positions continue per row. The result has room for
    /// `capacity` columns (at least the longest cache's length).
    pub fn stack(caches: &[&KvCache], capacity: i64) -> Result<Self> {
        let Some(first) = caches.first() else {
            return Err(Error::Cache("stack needs at least one cache".into()));
        };
        if let Some(other) = caches.iter().find(|c| c.shape != first.shape) {
            return Err(Error::Cache(format!(
                "cannot stack caches of different shapes: {:?} and {:?}",
                first.shape, other.shape
            )));
        }
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let batch = caches.iter().map(|c| c.batch).sum();
        let mut out = Self::new(first.shape, batch, capacity.max(len).max(1))?;
        let mut row0 = 0;
        out.valid.clear();
        out.lens.clear();
        for cache in caches {
            let pad = len - cache.len;
            for r in 0..cache.batch {
                out.copy_rows_columns(cache, r, row0 + r, pad)?;
            }
            for (valid, n) in cache.valid.iter().zip(&cache.lens) {
                let mut row = vec![false; pad as usize];
                row.extend_from_slice(valid);
                out.valid.push(row);
                out.lens.push(*n);
            }
            row0 += cache.batch;
        }
        out.len = len;
        Ok(out)
    }

    /// Bytes held by the key/value buffers.
    pub fn bytes(&self) -> usize {
        let per = self.shape.kind.elt_size_in_bytes() as i64
            * self.batch
            * self.shape.kv_heads
            * self.capacity
            * self.shape.head_dim;
        (2 * per * self.shape.num_layers) as usize
    }

    fn buffers(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::Cache(format!(
                "layer {layer} out of range ({} layers)",
                self.keys.len()
            ))),
        }
    }

    /// Copies columns `[src_col, src_col + n)` of every row of `src` to
    /// columns starting at `dst_col` (same batch).
    fn copy_columns_from(
        &mut self,
        src: &KvCache,
        src_col: i64,
        dst_col: i64,
        n: i64,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for (dst, from) in self
            .keys
            .iter()
            .chain(&self.values)
            .zip(src.keys.iter().chain(&src.values))
        {
            dst.f_narrow(2, dst_col, n)?
                .f_copy_(&from.f_narrow(2, src_col, n)?)?;
        }
        self.mask
            .f_narrow(1, dst_col, n)?
            .f_copy_(&src.mask.f_narrow(1, src_col, n)?)?;
        Ok(())
    }

    /// Copies the used columns of row `src_row` of `src` into row
    /// `dst_row`, starting at column `dst_col`.
    fn copy_rows_columns(
        &mut self,
        src: &KvCache,
        src_row: i64,
        dst_row: i64,
        dst_col: i64,
    ) -> Result<()> {
        let n = src.len;
        if n == 0 {
            return Ok(());
        }
        for (dst, from) in self
            .keys
            .iter()
            .chain(&self.values)
            .zip(src.keys.iter().chain(&src.values))
        {
            dst.f_narrow(0, dst_row, 1)?
                .f_narrow(2, dst_col, n)?
                .f_copy_(&from.f_narrow(0, src_row, 1)?.f_narrow(2, 0, n)?)?;
        }
        self.mask
            .f_narrow(0, dst_row, 1)?
            .f_narrow(1, dst_col, n)?
            .f_copy_(&src.mask.f_narrow(0, src_row, 1)?.f_narrow(1, 0, n)?)?;
        Ok(())
    }

    /// Reserves `step` columns for a forward step: `row_lengths[b]` of them
    /// (the last ones) are real tokens of row `b`, the rest left padding;
    /// `None` means all are real. Updates the padding mask and positions and
    /// returns what the attention layers need. The keys and values of the
    /// step are then written by [`KvCache::write`], once per layer.
    ///
    /// This is the cache's whole write contract, for any decoder (not only
    /// [`crate::Llama`]): call `begin_step` once per forward, compute each
    /// layer's keys and values for the step's columns (using
    /// [`Step::positions`] for position embeddings), call [`KvCache::write`]
    /// for each layer with [`Step::start`], and attend the step's queries to
    /// the keys and values it returns under [`Step::mask`]. On an error
    /// half-way, [`KvCache::truncate`] to the length before the step keeps
    /// the cache usable.
    pub fn begin_step(&mut self, step: i64, row_lengths: Option<&[i64]>) -> Result<Step> {
        if step <= 0 {
            return Err(Error::Cache("a step needs at least one column".into()));
        }
        if let Some(rl) = row_lengths {
            if rl.len() as i64 != self.batch {
                return Err(Error::Cache(format!(
                    "{} row lengths for a batch of {}",
                    rl.len(),
                    self.batch
                )));
            }
            if let Some(bad) = rl.iter().find(|&&n| n < 1 || n > step) {
                return Err(Error::Cache(format!(
                    "row length {bad} outside 1..={step} (every row needs its last column real)"
                )));
            }
        }
        let start = self.len;
        if start + step > self.capacity {
            self.reserve((2 * self.capacity).max(start + step))?;
        }
        let mut positions = Vec::with_capacity((self.batch * step) as usize);
        let mut chunk_real = Vec::with_capacity((self.batch * step) as usize);
        for b in 0..self.batch as usize {
            let real = row_lengths.map_or(step, |rl| rl[b]);
            let pad = step - real;
            for i in 0..step {
                let is_real = i >= pad;
                chunk_real.push(is_real);
                positions.push(if is_real { self.lens[b] + i - pad } else { 0 });
                self.valid[b].push(is_real);
            }
            self.lens[b] += real;
        }
        self.len = start + step;
        let device = self.shape.device;
        let mut cols = self.mask.f_narrow(1, start, step)?;
        if row_lengths.is_some() {
            let chunk = Tensor::f_from_slice(&chunk_real)?
                .f_view([self.batch, step])?
                .f_to_device(device)?;
            cols.f_copy_(&chunk)?;
        } else {
            let _filled = cols.f_fill_(1)?;
        }
        let positions = Tensor::f_from_slice(&positions)?
            .f_view([self.batch, step])?
            .f_to_device(device)?;
        let padded = self.valid.iter().any(|row| row.iter().any(|&v| !v));
        let mask = if !padded && step == 1 {
            StepMask::None
        } else if let Some(first) = self.real_runs().filter(|_| step == 1) {
            StepMask::Ranges(first)
        } else if !padded && start == 0 {
            StepMask::Causal
        } else {
            StepMask::Explicit(self.step_mask(start, step)?)
        };
        Ok(Step {
            start,
            positions,
            max_row_len: self.lens.iter().copied().max().unwrap_or(0),
            mask,
        })
    }

    /// The boolean attention mask of a step begun by
    /// [`KvCache::begin_step`] (`true` = attend), for a decoder whose
    /// attention takes one explicit mask whatever the padding: `None` when
    /// every key is visible to every query of the step.
    ///
    /// # Shapes
    /// → `[batch, 1, step, start + step]` bool
    pub fn attention_mask(&self, step: &Step) -> Result<Option<Tensor>> {
        match &step.mask {
            StepMask::None => Ok(None),
            StepMask::Explicit(mask) => Ok(Some(mask.shallow_clone())),
            StepMask::Causal | StepMask::Ranges(_) => {
                Ok(Some(self.step_mask(step.start, self.len - step.start)?))
            }
        }
    }

    /// Per row, the first real column, when every row's real columns form
    /// one run to the end (padding on the left only).
    fn real_runs(&self) -> Option<Vec<i64>> {
        self.valid
            .iter()
            .map(|row| {
                let first = row.iter().position(|&v| v)?;
                row[first..].iter().all(|&v| v).then_some(first as i64)
            })
            .collect()
    }

    /// `[batch, 1, step, start + step]`: a query at column `c` sees real
    /// keys at columns `<= c`, and always itself (so padding queries see
    /// one key and stay finite).
    fn step_mask(&self, start: i64, step: i64) -> Result<Tensor> {
        let total = start + step;
        let device = self.shape.device;
        let key_cols = Tensor::f_arange(total, (Kind::Int64, device))?.f_view([1, total])?;
        let query_cols =
            Tensor::f_arange_start(start, total, (Kind::Int64, device))?.f_view([step, 1])?;
        let causal = key_cols.f_le_tensor(&query_cols)?;
        let itself = key_cols.f_eq_tensor(&query_cols)?;
        let real = self
            .mask
            .f_narrow(1, 0, total)?
            .f_view([self.batch, 1, 1, total])?;
        Ok(real.f_logical_and(&causal)?.f_logical_or(&itself)?)
    }

    /// Writes one layer's keys and values for the step that began at
    /// column `start` and returns that layer's keys and values up to the end
    /// of the step (views into the buffers).
    ///
    /// # Shapes
    /// k, v `[batch, kv_heads, step, head_dim]` → `[batch, kv_heads, start + step, head_dim]`
    pub fn write(
        &mut self,
        layer: usize,
        start: i64,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let step = k.size().get(2).copied().unwrap_or(0);
        let expected = [self.batch, self.shape.kv_heads, step, self.shape.head_dim];
        for (what, t) in [("cached keys", k), ("cached values", v)] {
            if t.size() != expected || start + step > self.len {
                return Err(Error::shape(what, format!("{expected:?}"), t.size()));
            }
        }
        let (kb, vb) = self.buffers(layer)?;
        kb.f_narrow(2, start, step)?.f_copy_(k)?;
        vb.f_narrow(2, start, step)?.f_copy_(v)?;
        Ok((
            kb.f_narrow(2, 0, start + step)?,
            vb.f_narrow(2, 0, start + step)?,
        ))
    }
}

/// Left-pads rows of different lengths into one batch.
///
/// Returns the batch and each row's length, ready for
/// [`crate::Input::left_padded`]. Padding entries are zeros.
///
/// # Shapes
/// rows `[len_i, dim]` → `[rows, max len_i, dim]`
pub fn left_pad(rows: &[&Tensor]) -> Result<(Tensor, Vec<i64>)> {
    let Some(first) = rows.first() else {
        return Err(Error::Cache("left_pad needs at least one row".into()));
    };
    let dim = match first.size()[..] {
        [_, d] => d,
        ref other => return Err(Error::shape("left_pad row", "[len, dim]", other)),
    };
    let mut lens = Vec::with_capacity(rows.len());
    for row in rows {
        match row.size()[..] {
            [n, d] if d == dim && n > 0 => lens.push(n),
            ref other => {
                return Err(Error::shape(
                    "left_pad row",
                    format!("[len > 0, {dim}]"),
                    other,
                ));
            }
        }
    }
    let max = lens.iter().copied().max().unwrap_or(0);
    let out = Tensor::f_zeros(
        [rows.len() as i64, max, dim],
        (first.kind(), first.device()),
    )?;
    for (i, (row, n)) in rows.iter().zip(&lens).enumerate() {
        out.f_select(0, i as i64)?
            .f_narrow(0, max - n, *n)?
            .f_copy_(row)?;
    }
    Ok((out, lens))
}

#[cfg(test)]
mod tests;
