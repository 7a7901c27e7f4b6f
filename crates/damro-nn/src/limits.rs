//! The one place where the sizes a config states are checked before a model
//! is built.
//!
//! A `config.json` is only text: its `hidden_size`, `num_hidden_layers` or
//! `image_size` decide how much memory a loader asks for and how long it
//! loops, so a wrong or hostile value would otherwise become a
//! multi-terabyte allocation (a libtorch exception) or a loop over a
//! billion layers. A [`SizeCheck`] checks every such size, before anything
//! is allocated, in two ways:
//!
//! - against a fixed bound ([`MAX_WIDTH`], [`MAX_LAYERS`], ...), far above
//!   every released model but small enough that derived sizes (`image_size /
//!   patch_size` squared, `heads × head_dim`) cannot overflow;
//! - against the tensors the checkpoint actually holds: a width must equal
//!   the matching dimension of a weight that carries it, and a layer count
//!   the number of layers on disk.
//!
//! The model code states its claims (each config type lists which tensor
//! dimension carries which field) and [`SizeCheck::finish`] reports every
//! problem of the file at once, naming the file, the field and the tensor.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::PathBuf;

use crate::{Error, Result, Weights};

/// Largest hidden, intermediate or head width a config may state (the
/// largest released LLaMA has 16384 / 53248).
pub const MAX_WIDTH: i64 = 1 << 17;
/// Largest number of layers in one stack (released models: at most 126).
pub const MAX_LAYERS: i64 = 1024;
/// Largest number of attention heads.
pub const MAX_HEADS: i64 = 4096;
/// Largest vocabulary (released models: at most 256k).
pub const MAX_VOCAB: i64 = 1 << 22;
/// Largest context a config may state (`max_position_embeddings`).
pub const MAX_POSITIONS: i64 = 1 << 24;
/// Largest image side a vision config may state, in pixels.
pub const MAX_IMAGE_SIDE: i64 = 1 << 14;
/// Largest number of input channels of a patch embedding.
pub const MAX_CHANNELS: i64 = 16;
/// Largest number of learned query or image tokens.
pub const MAX_TOKENS: i64 = 1 << 16;

/// `section.name`, or `name` when the section is empty.
pub fn field_name(section: &str, name: &str) -> String {
    if section.is_empty() {
        name.to_string()
    } else {
        format!("{section}.{name}")
    }
}

/// The size checks of one config file against one checkpoint; see the
/// [module docs](self).
#[derive(Debug)]
pub struct SizeCheck {
    file: PathBuf,
    problems: Vec<String>,
}

impl SizeCheck {
    /// Checks of the config `file` (named in the error).
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            problems: Vec::new(),
        }
    }

    /// Whether a problem was recorded. Derived sizes should only be
    /// computed and compared once the fields they come from were found in
    /// bounds.
    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// Records a problem found by model code.
    pub fn report(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// `field` = `value` must lie in `1..=max`; returns whether it did.
    pub fn bounded(&mut self, field: &str, value: i64, max: i64) -> bool {
        if (1..=max).contains(&value) {
            return true;
        }
        self.problems.push(if value < 1 {
            format!("`{field}` = {value} must be positive")
        } else {
            format!("`{field}` = {value} exceeds the limit of {max}")
        });
        false
    }

    /// Dimension `axis` of the tensor `name` (relative to `w`) must equal
    /// `value`, which `claim` describes (e.g. "`hidden_size` = 4096").
    ///
    /// A tensor that is absent is not a problem here: the model's loader
    /// reports it with every other missing tensor.
    pub fn dim(&mut self, w: &Weights, name: &str, axis: usize, claim: impl Display, value: i64) {
        let Some(shape) = w.shape_of(name) else {
            return;
        };
        match shape.get(axis) {
            Some(&found) if found == value => {}
            Some(&found) => self.problems.push(format!(
                "{claim} does not match tensor {} {shape:?} (dimension {axis} is {found})",
                w.path(name)
            )),
            None => self.problems.push(format!(
                "{claim}: tensor {} {shape:?} has no dimension {axis}",
                w.path(name)
            )),
        }
    }

    /// The layers stored under `w` as `w.pp(0)`, `w.pp(1)`, ... must be
    /// numbered `0..n` without gaps, with `needed <= n <= value`, where
    /// `value` is the config's `field` and `needed` the number of layers
    /// the model loads (`value` itself, or fewer for a tower read from an
    /// inner layer).
    pub fn layers(&mut self, w: &Weights, field: &str, value: i64, needed: i64) {
        let present: BTreeSet<u64> = w.child_indices();
        let count = present.len() as i64;
        let contiguous = present.iter().copied().eq(0..present.len() as u64);
        let where_ = w.path("");
        let where_ = where_.trim_end_matches('.');
        if !contiguous {
            self.problems.push(format!(
                "the checkpoint's layers under {where_} are not numbered from 0 without gaps: {present:?}"
            ));
        } else if count > value || count < needed {
            self.problems.push(format!(
                "`{field}` = {value} does not match the checkpoint, which holds {count} layer(s) under {where_}"
            ));
        }
    }

    /// Ends the checks: every recorded problem in one
    /// [`Error::ConfigSizes`], or `Ok`.
    pub fn finish(self) -> Result<()> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::ConfigSizes {
                file: self.file,
                problems: self.problems,
            })
        }
    }
}
