//! Shape-checked weight lookups by path, with all problems reported at once.
//!
//! A model's `load` function walks the checkpoint with [`Weights::pp`]
//! (push a path segment) and [`Weights::get`] (take a tensor of a known
//! shape). Missing, mis-shaped and mis-typed tensors do not stop the walk:
//! they are recorded, and [`Weights::finish`] reports them together with the
//! tensors the model never asked for, so a user sees every problem of a
//! checkpoint in one error.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::rc::Rc;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::kind_of;
use crate::{Checkpoint, Error, Result};

/// The dtype and device weights are loaded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Floating-point weights are cast to this kind.
    pub kind: Kind,
    /// Weights are copied to this device.
    pub device: Device,
}

impl LoadOptions {
    /// f32 on the CPU.
    pub fn cpu_f32() -> Self {
        Self {
            kind: Kind::Float,
            device: Device::Cpu,
        }
    }

    /// Checks that `kind` is a floating-point kind models can run in.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => Ok(()),
            other => Err(Error::config(
                "dtype",
                format!("{other:?} is not a floating-point dtype (expected f32, f16 or bf16)"),
            )),
        }
    }
}

#[derive(Debug)]
struct State {
    used: BTreeSet<String>,
    ignored: Vec<String>,
    problems: Vec<String>,
}

/// A position in a checkpoint's name tree, from which weights are taken.
#[derive(Debug, Clone)]
pub struct Weights {
    checkpoint: Rc<Checkpoint>,
    state: Rc<RefCell<State>>,
    prefix: String,
    options: LoadOptions,
}

impl Weights {
    /// The root of `checkpoint`, loading to `options`.
    pub fn new(checkpoint: Checkpoint, options: LoadOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            checkpoint: Rc::new(checkpoint),
            state: Rc::new(RefCell::new(State {
                used: BTreeSet::new(),
                ignored: Vec::new(),
                problems: Vec::new(),
            })),
            prefix: String::new(),
            options,
        })
    }

    /// The position one segment further down (`w.pp("layers").pp(3)`).
    pub fn pp(&self, segment: impl Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// The full canonical name of `name` at this position.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The model directory the checkpoint was opened from.
    pub fn dir(&self) -> &std::path::Path {
        self.checkpoint.dir()
    }

    /// The load options.
    pub fn options(&self) -> LoadOptions {
        self.options
    }

    /// The device weights go to.
    pub fn device(&self) -> Device {
        self.options.device
    }

    /// The floating-point kind weights are cast to.
    pub fn kind(&self) -> Kind {
        self.options.kind
    }

    /// Whether a tensor exists at this position.
    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.info(&self.path(name)).is_some()
    }

    /// The integer segments directly below this position that hold tensors:
    /// `{0, 1, 2}` at `encoder.layers` when `encoder.layers.0.*` to
    /// `encoder.layers.2.*` exist.
    pub fn child_indices(&self) -> BTreeSet<u64> {
        let prefix = self.path("");
        self.checkpoint
            .tensors()
            .filter_map(|(name, _)| name.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.split('.').next())
            .filter_map(|segment| segment.parse::<u64>().ok())
            .collect()
    }

    /// The on-disk shape of a tensor, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<i64>> {
        self.checkpoint
            .info(&self.path(name))
            .map(|i| i.shape.iter().map(|&d| d as i64).collect())
    }

    /// A floating-point tensor of exactly `shape`, cast to the load kind and
    /// moved to the load device.
    ///
    /// A missing, mis-shaped or non-float tensor is recorded for
    /// [`Weights::finish`] and a placeholder of the expected shape is
    /// returned (one zero broadcast to that shape, so nothing of that size
    /// is allocated), so loading goes on and reports every problem at once;
    /// `finish` then fails, so the placeholder is never used.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.get_kind(name, shape, self.options.kind)
    }

    /// Like [`Weights::get`] but keeps the tensor in `kind`.
    pub fn get_kind(&self, name: &str, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let path = self.path(name);
        let problem = match self.checkpoint.info(&path) {
            None => Some(format!("missing tensor {path} (expected shape {shape:?})")),
            Some(info) => {
                let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
                let is_float = matches!(
                    kind_of(info.dtype),
                    Some(Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
                );
                if found != shape {
                    Some(format!(
                        "tensor {path} (on disk: {}) has shape {found:?}, expected {shape:?}",
                        info.disk_name
                    ))
                } else if !is_float {
                    Some(format!(
                        "tensor {path} (on disk: {}) has dtype {:?}, expected F32, F16 or BF16",
                        info.disk_name, info.dtype
                    ))
                } else {
                    None
                }
            }
        };
        let mut state = self.state.borrow_mut();
        state.used.insert(path.clone());
        if let Some(problem) = problem {
            state.problems.push(problem);
            return Ok(Tensor::f_zeros([], (kind, Device::Cpu))?.f_expand(shape, false)?);
        }
        drop(state);
        self.checkpoint.load(&path, Some(kind), self.options.device)
    }

    /// Marks every tensor under `prefix` (relative to this position) as
    /// known and deliberately unused, e.g. encoder layers past the one a
    /// model reads its features from.
    pub fn ignore(&self, prefix: &str) {
        self.state.borrow_mut().ignored.push(self.path(prefix));
    }

    /// Records a problem found by model code (e.g. an inconsistent config).
    pub fn report(&self, problem: impl Into<String>) {
        self.state.borrow_mut().problems.push(problem.into());
    }

    /// Ends loading: fails with every recorded problem plus the tensors that
    /// were never asked for, or succeeds when the checkpoint matched.
    pub fn finish(&self) -> Result<()> {
        let state = self.state.borrow();
        let mut problems = state.problems.clone();
        let unexpected: Vec<&str> = self
            .checkpoint
            .tensors()
            .map(|(name, _)| name)
            .filter(|name| !state.used.contains(*name))
            .filter(|name| {
                !state
                    .ignored
                    .iter()
                    .any(|p| *name == p || name.starts_with(&format!("{p}.")))
            })
            .collect();
        for name in unexpected {
            let disk = self
                .checkpoint
                .info(name)
                .map(|i| i.disk_name.as_str())
                .unwrap_or(name);
            problems.push(format!("unexpected tensor {name} (on disk: {disk})"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::WeightsMismatch {
                dir: self.checkpoint.dir().to_path_buf(),
                problems,
            })
        }
    }
}
