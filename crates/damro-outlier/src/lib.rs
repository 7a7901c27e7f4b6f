//! DAMRO's outlier tokens: selection from the ViT's \[CLS\] attention,
//! gathering their features for the contrastive branch, the paper's
//! analysis metrics, and heatmaps of the attention with the outliers marked.
//!
//! DAMRO (Gong et al., EMNLP 2024, arXiv 2410.04514, Sec. 3.2) observes that
//! the ViT's \[CLS\] token attends strongly to a few high-norm background
//! patches, and that the LLM decoder attends to the same ones. It takes the
//! top-k patches by the \[CLS\] attention of the ViT's penultimate layer as
//! outliers and builds a second, outlier-only image input for contrastive
//! decoding (`damro-sampler`).
//!
//! - [`select_outliers`]: `[batch, patches]` scores to [`Outliers`] in the
//!   reference's order (descending score, ties to the lower index) or in
//!   raster order; `1 <= k <= patches` is checked.
//! - [`gather_tokens`]: the outliers' feature rows, on device; the
//!   [`TokenIndexing`] names which features are passed (LLaVA's
//!   \[CLS\]-dropped features, or InstructBLIP's \[CLS\]-first output with the
//!   reference's off-by-one indexing or the corrected one).
//! - [`overlap_curve`], [`overlap_rate`], [`outlier_influence`]: the
//!   paper's `H_i` and `F`.
//! - [`render_heatmap`], [`write_heatmap`]: PNG heatmaps like Figure 1;
//!   [`side_by_side`] puts several next to each other (Figures 2 and 3).
//!
//! Neighbours: works on plain `tch` tensors. The scores come from the
//! vision towers of `damro-vision`; `damro-core` builds the outlier branch
//! from the selection and `damro-sampler` contrasts the two branches;
//! `damro-models` does this for LLaVA-1.5, LLaVA-NeXT and InstructBLIP, and
//! the `damro` facade re-exports them all. The examples' `outliers` command
//! draws the heatmaps.
//!
//! ```
//! use damro_outlier::{OutlierOrder, TokenIndexing, gather_tokens, select_outliers};
//! use tch::{Device, Kind, Tensor};
//! # fn main() -> damro_outlier::Result<()> {
//! // [CLS] attention over the 4 patches of one image, and their features.
//! let scores = Tensor::from_slice(&[0.1f32, 0.6, 0.05, 0.25]).view([1, 4]);
//! let features = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([1, 4, 2]);
//! let outliers = select_outliers(&scores, 2, OutlierOrder::ByScore)?;
//! assert_eq!(outliers.to_vec()?, vec![vec![1, 3]]);
//! let tokens = gather_tokens(&features, &outliers, TokenIndexing::PatchFeatures)?;
//! assert_eq!(tokens.size(), [1, 2, 2]); // patches 1 and 3: [[2, 3], [6, 7]]
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
pub mod gather;
pub mod heatmap;
pub mod image_io;
pub mod metrics;
pub mod select;

pub use error::{Error, Result};
pub use gather::{TokenIndexing, gather_tokens, outlier_tokens};
pub use heatmap::{
    Colormap, GridPlacement, HeatmapOptions, PatchGrid, ScoreScale, Upsample, render_heatmap,
    side_by_side, write_heatmap,
};
/// The `image` crate this one renders with, for loading images and saving
/// [`image::RgbImage`]s of the same version.
pub use image;
pub use image_io::{CLIP_MEAN, CLIP_STD, image_from_pixel_values, save_png_atomic};
pub use metrics::{outlier_influence, overlap_curve, overlap_rate};
pub use select::{OutlierOrder, Outliers, drop_cls_column, select_outliers};
