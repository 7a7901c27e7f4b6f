//! The paper's analysis metrics (Sec. 2.3, Fig. 4 and 5).
//!
//! - Overlap rate `H_i = |S_v(i) ∩ S_l(i)| / i`: `S_v(i)` are the top-i
//!   image tokens by the ViT's \[CLS\] attention, `S_l(i)` the top-i image
//!   tokens by the LLM decoder's attention.
//! - Influence `F = Σ_{j=1..3} ATT(L_v(j)) / Σ_i ATT(i)`: the share of the
//!   decoder's attention on image tokens that falls on the ViT's top-3
//!   outliers.
//!
//! Both take per-patch scores in the same patch order (LLaVA's image tokens
//! follow the patch raster order). The decoder scores are whatever
//! aggregation the analysis uses (e.g. the last query's attention on the
//! image positions, averaged over heads and layers). Top-i sets use the
//! same order as outlier selection (descending, ties to the lower index).
//! These are analysis functions: they copy small results to the host.

use crate::select::check_scores;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// `H_i` for `i = 1..=max_i`, per row: `curve[b][i - 1] = H_i`.
///
/// # Shapes
/// `vit_scores`, `decoder_scores`: `[batch, patches]`.
///
/// # Errors
/// [`Error::InvalidParameter`] unless `1 <= max_i <= patches`;
/// [`Error::Shape`], [`Error::Kind`] or [`Error::Device`] for mismatched inputs.
pub fn overlap_curve(
    vit_scores: &Tensor,
    decoder_scores: &Tensor,
    max_i: usize,
) -> Result<Vec<Vec<f64>>> {
    let patches = check_pair(vit_scores, decoder_scores)?;
    let max_i_i64 = i64::try_from(max_i).unwrap_or(i64::MAX);
    if max_i == 0 || max_i_i64 > patches {
        return Err(Error::InvalidParameter {
            name: "i",
            value: max_i.to_string(),
            expected: "1 <= i <= number of patches",
        });
    }
    // A patch is in both top-i sets exactly when the larger of its two
    // ranks is below i; counting those ranks gives every H_i at once.
    let joint_rank = ranks(vit_scores)?.f_maximum(&ranks(decoder_scores)?)?;
    let joint_rank = Vec::<Vec<i64>>::try_from(&joint_rank)?;
    Ok(joint_rank
        .into_iter()
        .map(|row| {
            let mut counts = vec![0usize; max_i];
            for rank in row {
                if let Some(c) = usize::try_from(rank).ok().and_then(|r| counts.get_mut(r)) {
                    *c += 1;
                }
            }
            let mut both = 0usize;
            counts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    both += c;
                    both as f64 / (i + 1) as f64
                })
                .collect()
        })
        .collect())
}

/// `H_i` for one `i`, per row.
///
/// # Shapes
/// As [`overlap_curve`].
///
/// # Errors
/// As [`overlap_curve`].
pub fn overlap_rate(vit_scores: &Tensor, decoder_scores: &Tensor, i: usize) -> Result<Vec<f64>> {
    Ok(overlap_curve(vit_scores, decoder_scores, i)?
        .into_iter()
        .map(|curve| curve.last().copied().unwrap_or(0.0))
        .collect())
}

/// The influence `F` of the ViT's top-`n` outliers (the paper uses
/// `n = 3`) on the decoder's image attention, per row.
///
/// # Shapes
/// `vit_scores`, `decoder_attention`: `[batch, patches]`; the decoder
/// attention must be non-negative.
///
/// # Errors
/// [`Error::InvalidParameter`] unless `1 <= n <= patches`;
/// [`Error::Shape`], [`Error::Kind`] or [`Error::Device`] for mismatched inputs.
pub fn outlier_influence(
    vit_scores: &Tensor,
    decoder_attention: &Tensor,
    n: usize,
) -> Result<Vec<f64>> {
    let patches = check_pair(vit_scores, decoder_attention)?;
    let n_i64 = i64::try_from(n).unwrap_or(i64::MAX);
    if n == 0 || n_i64 > patches {
        return Err(Error::InvalidParameter {
            name: "n",
            value: n.to_string(),
            expected: "1 <= n <= number of patches",
        });
    }
    let (_, order) = vit_scores.f_sort_stable(true, -1, true)?;
    let top = order.f_narrow(-1, 0, n_i64)?;
    let attention = decoder_attention.f_to_kind(Kind::Double)?;
    let on_outliers =
        attention
            .f_gather(-1, &top, false)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?;
    let total = attention.f_sum_dim_intlist(-1, false, None::<Kind>)?;
    Ok(Vec::<f64>::try_from(&on_outliers.f_div(&total)?)?)
}

/// `rank[b][p]`: the position of patch `p` in row `b`'s descending order.
fn ranks(scores: &Tensor) -> Result<Tensor> {
    let (_, order) = scores.f_sort_stable(true, -1, true)?;
    Ok(order.f_argsort_stable(true, -1, false)?)
}

fn check_pair(vit: &Tensor, decoder: &Tensor) -> Result<i64> {
    let patches = check_scores("vit_scores", vit)?;
    check_scores("decoder_scores", decoder)?;
    if vit.size() != decoder.size() {
        return Err(Error::Shape {
            what: "decoder_scores",
            shape: decoder.size(),
            expected: format!("the ViT scores' shape {:?}", vit.size()),
        });
    }
    if vit.device() != decoder.device() {
        return Err(Error::Device {
            what: "decoder_scores",
            found: decoder.device(),
            expected: vit.device(),
        });
    }
    Ok(patches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([1, -1])
    }

    #[test]
    fn overlap_counts_shared_top_tokens() {
        // ViT order: 0, 1, 2, 3, 4; decoder order: 1, 4, 0, 2, 3.
        let vit = scores(&[0.9, 0.8, 0.7, 0.6, 0.5]);
        let dec = scores(&[0.3, 0.9, 0.2, 0.1, 0.5]);
        let curve = overlap_curve(&vit, &dec, 5).unwrap();
        // i=1: {0}∩{1}=0; i=2: {0,1}∩{1,4}=1; i=3: {0,1,2}∩{1,4,0}=2;
        // i=4: {0..3}∩{1,4,0,2}=3; i=5: 5.
        assert_eq!(curve, [vec![0.0, 0.5, 2.0 / 3.0, 0.75, 1.0]]);
        assert_eq!(overlap_rate(&vit, &dec, 3).unwrap(), [2.0 / 3.0]);
        assert!(overlap_rate(&vit, &dec, 6).is_err());
    }

    #[test]
    fn influence_is_the_share_on_the_top_outliers() {
        let vit = scores(&[0.1, 0.9, 0.0, 0.8, 0.7, 0.2]);
        let dec = scores(&[1.0, 2.0, 3.0, 4.0, 5.0, 5.0]);
        // top-3 by ViT: 1, 3, 4 -> (2 + 4 + 5) / 20
        let f = outlier_influence(&vit, &dec, 3).unwrap();
        assert!((f[0] - 11.0 / 20.0).abs() < 1e-12);
        assert!(outlier_influence(&vit, &dec, 0).is_err());
    }
}
