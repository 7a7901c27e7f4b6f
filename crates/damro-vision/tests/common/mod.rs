//! Shared helpers of the parity tests: the fixtures of `tests/fixtures/`
//! (see its README) and tensor comparisons.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Kind, Tensor};

/// How close an output must be to its reference: the workspace's one
/// parity bound ([`damro_nn::testing`]), relative to the reference's scale.
pub use damro_nn::testing::Tolerance as Tol;

/// The parity bound: 1e-4 x max(1, max|ref|). Relative, because the same
/// f32 code sums in different orders on different CPU families (AVX2 vs
/// AVX-512/AMX kernels), and projector outputs reach ~80 in magnitude.
pub const TOL: Tol = damro_nn::testing::PARITY;

/// The same bound for the fused attention kernel (libtorch's CPU flash
/// kernel sums in another order than HF's eager attention, ~1e-6
/// relative).
pub const TOL_FUSED: Tol = damro_nn::testing::PARITY;

/// `tests/fixtures/<family>`.
pub fn family_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(family)
}

/// One family's `reference.safetensors` and `reference.json`.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
    pub dir: PathBuf,
}

impl Reference {
    pub fn load(family: &str) -> Self {
        let dir = family_dir(family);
        let tensors = Tensor::read_safetensors(dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Self { tensors, json, dir }
    }

    /// A reference tensor by name.
    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
    }

    /// The directory of a model variant.
    pub fn model_dir(&self, variant: &str) -> PathBuf {
        let dir = self.json["models"][variant]["dir"].as_str().unwrap();
        self.dir.join(dir)
    }

    /// Names of the fixture images.
    pub fn images(&self) -> Vec<String> {
        let mut names: Vec<String> = self.json["images"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The recorded top-k outlier indices of an image under a variant.
    pub fn outliers(&self, image: &str, variant: &str) -> Vec<i64> {
        ids(&self.json["images"][image]["outliers"][variant]["indices"])
    }

    /// The PIL-backend pixel values of an image.
    pub fn pixels(&self, image: &str) -> &Tensor {
        self.tensor(&format!("pixel_values/pil/{image}"))
    }

    /// The `cases` array.
    pub fn cases(&self) -> &Vec<serde_json::Value> {
        self.json["cases"].as_array().unwrap()
    }
}

/// A JSON array of integers.
pub fn ids(value: &serde_json::Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// Max |a - b| in f64; panics on a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Asserts `actual` is within `tol` of `expected`; returns the max abs
/// error over the reference's scale.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: Tol) -> f64 {
    damro_nn::testing::assert_close(what, actual, expected, tol)
}

/// Indices of the `k` largest values of a `[1, n]` row, descending.
pub fn topk(row: &Tensor, k: i64) -> Vec<i64> {
    let (_, idx) = row.topk(k, -1, true, true);
    Vec::<i64>::try_from(idx.flatten(0, -1)).unwrap()
}
