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
//! - [`render_heatmap`], [`write_heatmap`]: PNG heatmaps like Figure 1.

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
    write_heatmap,
};
/// The `image` crate this one renders with, for loading images and saving
/// [`image::RgbImage`]s of the same version.
pub use image;
pub use image_io::{CLIP_MEAN, CLIP_STD, image_from_pixel_values, save_png_atomic};
pub use metrics::{outlier_influence, overlap_curve, overlap_rate};
pub use select::{OutlierOrder, Outliers, drop_cls_column, select_outliers};
