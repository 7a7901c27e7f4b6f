//! Gathering the outlier tokens' features for the contrastive branch.
//!
//! Which feature rows the patch indices address depends on the model and on
//! whether the \[CLS\] token is still in the features; [`TokenIndexing`] names
//! every case so the caller states which input it passes.

use crate::{Error, Outliers, Result};
use tch::Tensor;

/// How patch indices map to rows of the features tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIndexing {
    /// `features` hold the patch tokens only, in raster order, \[CLS\]
    /// dropped: LLaVA-1.5's projector input (`hidden_states[-2][:, 1:]`) or
    /// the projector's output. Row = patch index.
    PatchFeatures,
    /// `features` still hold \[CLS\] at row 0 (InstructBLIP's final vision
    /// output, `image_embeds`), gathered as the reference does:
    /// `features[:, idx]`, i.e. the token one position before each outlier
    /// patch (patch 0 maps to \[CLS\]). Reproduces the published numbers.
    ClsFirstReference,
    /// `features` still hold \[CLS\] at row 0, gathered at `idx + 1`: the
    /// outlier patches themselves (the corrected indexing).
    ClsFirstCorrected,
}

impl TokenIndexing {
    /// Rows the features must have for `num_patches` patches.
    pub fn feature_rows(self, num_patches: i64) -> i64 {
        match self {
            TokenIndexing::PatchFeatures => num_patches,
            TokenIndexing::ClsFirstReference | TokenIndexing::ClsFirstCorrected => num_patches + 1,
        }
    }
}

/// The rows of `features` for the selected outliers, in the outliers' order.
///
/// One `gather` kernel (plus an add for the corrected indexing), on the
/// features' device.
///
/// # Shapes
/// `features`: `[batch, rows, hidden]` with `rows = patches`
/// ([`TokenIndexing::PatchFeatures`]) or `rows = 1 + patches` (the
/// `ClsFirst*` variants); outlier indices `[batch, k]`; result
/// `[batch, k, hidden]`.
///
/// # Errors
/// [`Error::Shape`] when the features' batch or row count does not match,
/// [`Error::Device`] when the indices live elsewhere.
pub fn gather_tokens(
    features: &Tensor,
    outliers: &Outliers,
    indexing: TokenIndexing,
) -> Result<Tensor> {
    let rows = indexing.feature_rows(outliers.num_patches());
    let hidden = match features.size()[..] {
        [batch, r, hidden] if batch == outliers.batch() && r == rows => hidden,
        _ => {
            return Err(Error::Shape {
                what: "features",
                shape: features.size(),
                expected: format!(
                    "[{}, {rows}, hidden] ({indexing:?} over {} patches)",
                    outliers.batch(),
                    outliers.num_patches()
                ),
            });
        }
    };
    let indices = outliers.indices();
    if indices.device() != features.device() {
        return Err(Error::Device {
            what: "outlier indices",
            found: indices.device(),
            expected: features.device(),
        });
    }
    let feature_rows = match indexing {
        TokenIndexing::PatchFeatures | TokenIndexing::ClsFirstReference => indices.shallow_clone(),
        TokenIndexing::ClsFirstCorrected => indices.f_add_scalar(1)?,
    };
    let index = feature_rows
        .f_unsqueeze(-1)?
        .f_expand([outliers.batch(), outliers.k(), hidden], false)?;
    Ok(features.f_gather(1, &index, false)?)
}

/// DAMRO's outlier tokens in one call: the top-`k` patches of
/// `patch_scores` ([`crate::select_outliers`]) gathered from `features`
/// ([`gather_tokens`]). Returns the gathered rows and the patch indices of
/// the first batch row, in selection order.
///
/// # Shapes
/// `features` as [`gather_tokens`]; `patch_scores` `[batch, patches]` →
/// `[batch, k, hidden]`
///
/// # Errors
/// As [`crate::select_outliers`] and [`gather_tokens`].
pub fn outlier_tokens(
    features: &Tensor,
    patch_scores: &Tensor,
    k: usize,
    order: crate::OutlierOrder,
    indexing: TokenIndexing,
) -> Result<(Tensor, Vec<i64>)> {
    let outliers = crate::select_outliers(patch_scores, k, order)?;
    let gathered = gather_tokens(features, &outliers, indexing)?;
    let indices = outliers.to_vec()?.into_iter().next().unwrap_or_default();
    Ok((gathered, indices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutlierOrder, select_outliers};
    use tch::Kind;

    /// features[b, r, h] = 100 b + r (+ 0.5 h)
    fn features(batch: i64, rows: i64) -> Tensor {
        let b = Tensor::arange(batch, (Kind::Float, tch::Device::Cpu)).view([batch, 1, 1]) * 100.0;
        let r = Tensor::arange(rows, (Kind::Float, tch::Device::Cpu)).view([1, rows, 1]);
        let h = Tensor::arange(2, (Kind::Float, tch::Device::Cpu)).view([1, 1, 2]) * 0.5;
        b + r + h
    }

    fn row_ids(t: &Tensor) -> Vec<Vec<i64>> {
        Vec::<Vec<f32>>::try_from(&t.select(2, 0))
            .unwrap()
            .into_iter()
            .map(|row| row.into_iter().map(|v| (v as i64) % 100).collect())
            .collect()
    }

    #[test]
    fn each_indexing_addresses_its_rows() {
        let scores =
            Tensor::from_slice(&[0.1f32, 0.7, 0.3, 0.9, 0.2, 0.0, 0.5, 0.6, 0.8, 0.4]).view([2, 5]);
        let out = select_outliers(&scores, 2, OutlierOrder::ByScore).unwrap();
        assert_eq!(out.to_vec().unwrap(), [[3, 1], [3, 2]]);
        let patch = gather_tokens(&features(2, 5), &out, TokenIndexing::PatchFeatures).unwrap();
        assert_eq!(patch.size(), [2, 2, 2]);
        assert_eq!(row_ids(&patch), [[3, 1], [3, 2]]);
        let with_cls = features(2, 6);
        let reference = gather_tokens(&with_cls, &out, TokenIndexing::ClsFirstReference).unwrap();
        assert_eq!(row_ids(&reference), [[3, 1], [3, 2]]);
        let corrected = gather_tokens(&with_cls, &out, TokenIndexing::ClsFirstCorrected).unwrap();
        assert_eq!(row_ids(&corrected), [[4, 2], [4, 3]]);
        // batch offsets: row 1 really comes from batch item 1.
        assert_eq!(corrected.double_value(&[1, 0, 0]), 104.0);
    }

    #[test]
    fn the_row_count_must_match_the_indexing() {
        let scores = Tensor::zeros([1, 5], tch::kind::FLOAT_CPU);
        let out = select_outliers(&scores, 2, OutlierOrder::ByScore).unwrap();
        assert!(matches!(
            gather_tokens(&features(1, 5), &out, TokenIndexing::ClsFirstReference),
            Err(Error::Shape {
                what: "features",
                ..
            })
        ));
        assert!(matches!(
            gather_tokens(&features(1, 6), &out, TokenIndexing::PatchFeatures),
            Err(Error::Shape { .. })
        ));
    }
}
