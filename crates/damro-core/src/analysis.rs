//! The paper's analysis of a generation (Sec. 2.3, Figures 4 and 5): for
//! each generated token, how much the decoder's image attention overlaps
//! with the ViT's \[CLS\] outliers.
//!
//! Generate with [`crate::GenerationConfig::attention`] set: every
//! [`crate::Generation`] then carries, per token, the full branch's
//! attention over the image tokens and, where those tokens are ViT patches
//! in patch order (LLaVA-1.5, LLaVA-NeXT's base tile), the ViT's \[CLS\]
//! attention over the same patches. [`token_metrics`] turns them into
//! `H_1..H_n` (the overlap of the top-i sets, [`damro_outlier::overlap_curve`])
//! and `F` (the share of the decoder's image attention on the ViT's top-3,
//! [`damro_outlier::outlier_influence`]).
//!
//! InstructBLIP's decoder attends to the Q-Former's query outputs, not to
//! patches: its generations carry the query-token attention but no
//! \[CLS\] scores, and [`token_metrics`] says so.

use damro_outlier::{outlier_influence, overlap_curve};
use tch::Tensor;

use crate::{Error, Generation, Result};

/// The paper's `H_i` range (Fig. 4: i = 1..10).
pub const OVERLAP_MAX_I: usize = 10;
/// The paper's `F` uses the ViT's top 3 outliers.
pub const INFLUENCE_TOP: usize = 3;

/// `H_1..H_n` and `F` of one generated token.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenMetrics {
    /// `overlap[i - 1] = H_i = |S_v(i) ∩ S_l(i)| / i`.
    pub overlap: Vec<f64>,
    /// `F`: the share of the token's image attention on the ViT's top
    /// outliers.
    pub influence: f64,
}

/// `H_1..H_max_i` and `F` (top `top` outliers) of every generated token.
///
/// # Errors
/// [`Error::Invalid`] when the generation carries no attention (generated
/// without a capture) or no \[CLS\] scores (the model's image tokens are not
/// patches), or when the sizes do not match.
pub fn token_metrics(
    generation: &Generation,
    max_i: usize,
    top: usize,
) -> Result<Vec<TokenMetrics>> {
    let Some(cls) = generation.cls_attention.as_deref() else {
        return Err(Error::invalid(
            "analysis",
            "the generation has no [CLS] scores: generate with an attention capture, on a model whose image tokens are ViT patches",
        ));
    };
    if generation.attention.len() != generation.token_ids.len() {
        return Err(Error::invalid(
            "analysis",
            format!(
                "{} attention maps for {} tokens (generate with an attention capture)",
                generation.attention.len(),
                generation.token_ids.len()
            ),
        ));
    }
    let vit = Tensor::f_from_slice(cls)?.f_unsqueeze(0)?;
    generation
        .attention
        .iter()
        .map(|map| {
            if map.len() != cls.len() {
                return Err(Error::invalid(
                    "analysis",
                    format!("{} image tokens but {} patches", map.len(), cls.len()),
                ));
            }
            let decoder = Tensor::f_from_slice(map)?.f_unsqueeze(0)?;
            let overlap = overlap_curve(&vit, &decoder, max_i)?
                .into_iter()
                .next()
                .unwrap_or_default();
            let influence = outlier_influence(&vit, &decoder, top)?
                .first()
                .copied()
                .unwrap_or(f64::NAN);
            Ok(TokenMetrics { overlap, influence })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FinishReason;

    fn generation(attention: Vec<Vec<f32>>, cls: Option<Vec<f32>>) -> Generation {
        Generation {
            prompt_ids: vec![1],
            token_ids: vec![5; attention.len()],
            text: String::new(),
            outliers: Vec::new(),
            finish: FinishReason::Length,
            attention,
            cls_attention: cls,
        }
    }

    #[test]
    fn metrics_of_each_token_by_hand() {
        // ViT order of the 5 patches: 0, 1, 2, 3, 4 (top-3: 0, 1, 2).
        let cls = vec![0.5, 0.2, 0.15, 0.1, 0.05];
        // Token 0 attends mostly to patch 4, then 1: order 4, 1, 0, 3, 2.
        // Token 1 follows the ViT exactly.
        let g = generation(
            vec![vec![0.2, 0.3, 0.0, 0.1, 0.4], vec![0.4, 0.3, 0.2, 0.1, 0.0]],
            Some(cls),
        );
        let m = token_metrics(&g, 3, 3).unwrap();
        // H_1: {0} vs {4} = 0; H_2: {0,1} vs {4,1} = 1/2; H_3: {0,1,2} vs {4,1,0} = 2/3.
        assert_eq!(m[0].overlap, [0.0, 0.5, 2.0 / 3.0]);
        // F: (0.2 + 0.3 + 0.0) / 1.0
        assert!((m[0].influence - 0.5).abs() < 1e-6);
        assert_eq!(m[1].overlap, [1.0, 1.0, 1.0]);
        assert!((m[1].influence - 0.9).abs() < 1e-6);
    }

    #[test]
    fn no_cls_scores_or_maps_is_an_error() {
        let g = generation(vec![vec![1.0; 4]], None);
        assert!(token_metrics(&g, 3, 3).is_err());
        let mut g = generation(vec![vec![1.0; 4]], Some(vec![1.0; 4]));
        g.attention.clear();
        assert!(token_metrics(&g, 3, 3).is_err());
        let g = generation(vec![vec![1.0; 3]], Some(vec![1.0; 4]));
        assert!(token_metrics(&g, 3, 3).is_err());
    }
}
