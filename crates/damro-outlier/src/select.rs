//! Top-k outlier selection from the ViT's \[CLS\] attention.
//!
//! DAMRO (paper Sec. 3.2) takes, in the ViT's penultimate layer, the
//! attention of the \[CLS\] query over the patch tokens (the \[CLS\] column
//! dropped) and keeps the `k` patches with the highest scores. The
//! reference keeps `torch.topk`'s order: descending score. Ties go to the
//! lower patch index here (a stable sort); `torch.topk` does not specify its
//! tie order, so only exactly equal scores can make the two differ.

use crate::{Error, Result};
use tch::{Kind, Tensor};

/// The order of the selected patches in [`Outliers::indices`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutlierOrder {
    /// Descending score, ties to the lower index: the reference's order,
    /// which is also the order the outlier branch's image tokens take.
    #[default]
    ByScore,
    /// Ascending patch index (raster order: row by row over the grid).
    Raster,
}

/// The selected outlier patches of a batch.
///
/// Indices are patch indices, `0..num_patches`, counted without the \[CLS\]
/// token. Which feature rows they address is decided when gathering
/// ([`crate::gather_tokens`]).
#[derive(Debug)]
pub struct Outliers {
    indices: Tensor,
    num_patches: i64,
    order: OutlierOrder,
}

impl Outliers {
    /// Wraps indices computed elsewhere (e.g. read from a file), checking
    /// the shape and, with one host transfer, that every index is in range.
    ///
    /// # Shapes
    /// `indices`: `[batch, k]` int64.
    ///
    /// # Errors
    /// [`Error::Shape`], [`Error::Kind`], [`Error::InvalidK`] or
    /// [`Error::IndexOutOfRange`].
    pub fn from_indices(indices: Tensor, num_patches: usize, order: OutlierOrder) -> Result<Self> {
        let patches = i64::try_from(num_patches).unwrap_or(i64::MAX);
        let k = match indices.size()[..] {
            [_, k] => k,
            _ => {
                return Err(Error::Shape {
                    what: "indices",
                    shape: indices.size(),
                    expected: "[batch, k]".into(),
                });
            }
        };
        if indices.kind() != Kind::Int64 {
            return Err(Error::Kind {
                what: "indices",
                kind: indices.kind(),
                expected: "int64",
            });
        }
        if k < 1 || k > patches {
            return Err(Error::InvalidK {
                k: usize::try_from(k).unwrap_or(0),
                patches,
            });
        }
        if indices.numel() > 0 {
            let (min, max) = (
                indices.f_min()?.f_int64_value(&[])?,
                indices.f_max()?.f_int64_value(&[])?,
            );
            for index in [min, max] {
                if !(0..patches).contains(&index) {
                    return Err(Error::IndexOutOfRange { index, patches });
                }
            }
        }
        Ok(Self {
            indices,
            num_patches: patches,
            order,
        })
    }

    /// The patch indices, on the scores' device.
    ///
    /// # Shapes
    /// `[batch, k]` int64.
    pub fn indices(&self) -> &Tensor {
        &self.indices
    }

    /// The number of selected patches per row.
    pub fn k(&self) -> i64 {
        self.indices.size()[1]
    }

    /// The batch size.
    pub fn batch(&self) -> i64 {
        self.indices.size()[0]
    }

    /// The number of patches the indices refer to (576 for CLIP ViT-L/14 at
    /// 336 px, 256 for EVA ViT-g/14 at 224 px).
    pub fn num_patches(&self) -> i64 {
        self.num_patches
    }

    /// The order of the indices.
    pub fn order(&self) -> OutlierOrder {
        self.order
    }

    /// Copies the indices to the host, one `Vec` per row.
    ///
    /// # Errors
    /// libtorch's error if the copy fails.
    pub fn to_vec(&self) -> Result<Vec<Vec<i64>>> {
        Ok(Vec::<Vec<i64>>::try_from(&self.indices)?)
    }
}

/// Drops the \[CLS\] column of \[CLS\]-query attention rows.
///
/// # Shapes
/// `cls_row`: `[batch, 1 + patches]`; result `[batch, patches]` (a view).
///
/// # Errors
/// [`Error::Shape`] unless 2-D with at least two columns.
pub fn drop_cls_column(cls_row: &Tensor) -> Result<Tensor> {
    match cls_row.size()[..] {
        [_, tokens] if tokens >= 2 => Ok(cls_row.f_narrow(1, 1, tokens - 1)?),
        _ => Err(Error::Shape {
            what: "cls_row",
            shape: cls_row.size(),
            expected: "[batch, 1 + patches] with at least one patch".into(),
        }),
    }
}

/// The `k` highest-scoring patches of each row.
///
/// One stable descending sort per row (cheap at 576 or 256 patches) keeps
/// ties in index order; nothing leaves the device.
///
/// # Shapes
/// `patch_scores`: `[batch, patches]` floating point, \[CLS\] column already
/// dropped ([`drop_cls_column`]); the result holds `[batch, k]` int64.
///
/// # Errors
/// [`Error::InvalidK`] unless `1 <= k <= patches`; [`Error::Shape`] or
/// [`Error::Kind`] for other inputs.
pub fn select_outliers(patch_scores: &Tensor, k: usize, order: OutlierOrder) -> Result<Outliers> {
    let patches = check_scores("patch_scores", patch_scores)?;
    let k_i64 = i64::try_from(k).unwrap_or(i64::MAX);
    if k == 0 || k_i64 > patches {
        return Err(Error::InvalidK { k, patches });
    }
    let (_, ranked) = patch_scores.f_sort_stable(true, -1, true)?;
    let mut indices = ranked.f_narrow(-1, 0, k_i64)?;
    if order == OutlierOrder::Raster {
        indices = indices.f_sort(-1, false)?.0;
    }
    Ok(Outliers {
        indices,
        num_patches: patches,
        order,
    })
}

/// Checks `[batch, patches]` floating scores and returns `patches`.
pub(crate) fn check_scores(what: &'static str, scores: &Tensor) -> Result<i64> {
    if !matches!(
        scores.kind(),
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    ) {
        return Err(Error::Kind {
            what,
            kind: scores.kind(),
            expected: "f16, bf16, f32 or f64",
        });
    }
    match scores.size()[..] {
        [_, patches] if patches > 0 => Ok(patches),
        _ => Err(Error::Shape {
            what,
            shape: scores.size(),
            expected: "[batch, patches] with patches > 0".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([1, -1])
    }

    #[test]
    fn descending_with_ties_to_the_lower_index() {
        let s = scores(&[0.1, 0.5, 0.2, 0.5, 0.9, 0.5]);
        let out = select_outliers(&s, 4, OutlierOrder::ByScore).unwrap();
        assert_eq!(out.to_vec().unwrap(), [[4, 1, 3, 5]]);
        let out = select_outliers(&s, 4, OutlierOrder::Raster).unwrap();
        assert_eq!(out.to_vec().unwrap(), [[1, 3, 4, 5]]);
    }

    #[test]
    fn all_equal_scores_give_the_first_k() {
        let s = Tensor::zeros([2, 576], tch::kind::FLOAT_CPU);
        let out = select_outliers(&s, 10, OutlierOrder::ByScore).unwrap();
        let expected: Vec<i64> = (0..10).collect();
        assert_eq!(out.to_vec().unwrap(), [expected.clone(), expected]);
    }

    #[test]
    fn k_is_validated() {
        let s = Tensor::zeros([1, 256], tch::kind::FLOAT_CPU);
        for k in [0, 257] {
            match select_outliers(&s, k, OutlierOrder::ByScore) {
                Err(Error::InvalidK {
                    k: got,
                    patches: 256,
                }) => assert_eq!(got, k),
                other => panic!("k = {k}: {other:?}"),
            }
        }
        assert_eq!(
            select_outliers(&s, 256, OutlierOrder::ByScore).unwrap().k(),
            256
        );
    }

    #[test]
    fn drops_the_cls_column() {
        let row = scores(&[0.9, 0.1, 0.0]);
        let s = drop_cls_column(&row).unwrap();
        assert_eq!(s.size(), [1, 2]);
        assert!(drop_cls_column(&scores(&[1.0])).is_err());
    }

    #[test]
    fn from_indices_checks_the_range() {
        let idx = Tensor::from_slice(&[3i64, 9]).view([1, 2]);
        assert!(matches!(
            Outliers::from_indices(idx, 9, OutlierOrder::ByScore),
            Err(Error::IndexOutOfRange {
                index: 9,
                patches: 9
            })
        ));
    }
}
