//! Outlier heatmaps like the paper's Figure 1: the \[CLS\] attention of each
//! patch, colour-mapped over the (preprocessed or original) image, with the
//! selected outlier patches outlined, written as PNG.
//!
//! Rendering runs on the host (`image` crate); the scores are a few hundred
//! values. Files are written atomically ([`save_png_atomic`]).

use crate::image_io::save_png_atomic;
use crate::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// The patch grid the scores are laid out on, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGrid {
    rows: u32,
    cols: u32,
}

impl PatchGrid {
    /// A `rows x cols` grid.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if either side is zero.
    pub fn new(rows: u32, cols: u32) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(Error::InvalidParameter {
                name: "grid",
                value: format!("{rows}x{cols}"),
                expected: "at least 1x1",
            });
        }
        Ok(Self { rows, cols })
    }

    /// The square grid with `patches` cells (24x24 for 576, 16x16 for 256).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `patches` is not a positive square.
    pub fn square(patches: usize) -> Result<Self> {
        let side = (1..=patches).find(|s| s * s >= patches).unwrap_or(0);
        match u32::try_from(side) {
            Ok(side) if side > 0 && (side as usize) * (side as usize) == patches => {
                Self::new(side, side)
            }
            _ => Err(Error::InvalidParameter {
                name: "patches",
                value: patches.to_string(),
                expected: "a positive square number (e.g. 576 or 256)",
            }),
        }
    }

    /// Rows of patches.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Columns of patches.
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// Never true (a grid has at least one cell).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Colour map from a normalised score in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Blue - cyan - yellow - red, as common attention figures use.
    #[default]
    Jet,
    /// Black - purple - orange - pale yellow (perceptually ordered).
    Inferno,
}

impl Colormap {
    /// The colour of `t` (clamped to `[0, 1]`).
    pub fn color(self, t: f32) -> [f32; 3] {
        let t = t.clamp(0.0, 1.0);
        match self {
            Colormap::Jet => [
                (1.5 - (4.0 * t - 3.0).abs()).clamp(0.0, 1.0) * 255.0,
                (1.5 - (4.0 * t - 2.0).abs()).clamp(0.0, 1.0) * 255.0,
                (1.5 - (4.0 * t - 1.0).abs()).clamp(0.0, 1.0) * 255.0,
            ],
            Colormap::Inferno => {
                const STOPS: [[f32; 3]; 5] = [
                    [0.0, 0.0, 4.0],
                    [87.0, 16.0, 110.0],
                    [188.0, 55.0, 84.0],
                    [249.0, 142.0, 9.0],
                    [252.0, 255.0, 164.0],
                ];
                let x = t * 4.0;
                let i = (x.floor() as usize).min(3);
                let f = x - i as f32;
                let (a, b) = (STOPS[i], STOPS[i + 1]);
                [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * f)
            }
        }
    }
}

/// How scores are normalised to `[0, 1]` before colour mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreScale {
    /// Min-max of the scores: the outliers dominate, the rest is dark.
    #[default]
    Linear,
    /// Min-max of `ln(score)` (scores must be positive): shows the
    /// structure below the outliers too.
    Log,
}

/// How the patch scores are spread over the image's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upsample {
    /// Each patch is a flat cell: the grid stays visible.
    #[default]
    Nearest,
    /// Bilinear between patch centres.
    Bilinear,
}

/// Where the patch grid lies on the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridPlacement {
    /// Over the whole image: the preprocessed input of either model, or an
    /// original image for InstructBLIP (its processor resizes straight to
    /// 224x224).
    #[default]
    Stretch,
    /// Over the central square of side `min(width, height)`: an original
    /// image for LLaVA-1.5, whose CLIP processor resizes the shortest edge
    /// and centre-crops (exact up to the processor's integer rounding).
    /// Pixels outside the square, which the model never saw, are dimmed.
    CenterSquare,
}

/// The look and placement of a heatmap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapOptions {
    /// Where the grid lies on the image.
    pub placement: GridPlacement,
    /// The colour map.
    pub colormap: Colormap,
    /// Score normalisation.
    pub scale: ScoreScale,
    /// Upsampling of the grid to the image.
    pub upsample: Upsample,
    /// Weight of the heat colour over the image, in `[0, 1]`.
    pub opacity: f32,
    /// Colour of the outlier outlines.
    pub outline: [u8; 3],
    /// Outline width in pixels (0 draws none).
    pub outline_width: u32,
}

impl Default for HeatmapOptions {
    fn default() -> Self {
        Self {
            placement: GridPlacement::Stretch,
            colormap: Colormap::Jet,
            scale: ScoreScale::Linear,
            upsample: Upsample::Nearest,
            opacity: 0.5,
            outline: [255, 255, 255],
            outline_width: 2,
        }
    }
}

/// Blends the colour-mapped `scores` over `image` and outlines `outliers`.
///
/// The grid covers the region chosen by [`GridPlacement`]: in a region of
/// `W x H` pixels patch `(r, c)` spans `[c W / cols, (c+1) W / cols) x
/// [r H / rows, (r+1) H / rows)`, which is exact for the preprocessed
/// 336x336 / 224x224 input.
///
/// # Errors
/// [`Error::Shape`] if `scores` does not have one value per grid cell,
/// [`Error::NonFinite`] for NaN/infinite scores (or non-positive ones with
/// [`ScoreScale::Log`]), [`Error::IndexOutOfRange`] for an outlier outside
/// the grid, [`Error::InvalidParameter`] for an opacity outside `[0, 1]`.
pub fn render_heatmap(
    image: &RgbImage,
    scores: &[f32],
    grid: PatchGrid,
    outliers: &[i64],
    options: &HeatmapOptions,
) -> Result<RgbImage> {
    if scores.len() != grid.len() {
        return Err(Error::Shape {
            what: "scores",
            shape: vec![scores.len() as i64],
            expected: format!("[{}] ({}x{} grid)", grid.len(), grid.rows, grid.cols),
        });
    }
    if !(0.0..=1.0).contains(&options.opacity) {
        return Err(Error::InvalidParameter {
            name: "opacity",
            value: options.opacity.to_string(),
            expected: "a number in [0, 1]",
        });
    }
    let cells = grid.len() as i64;
    if let Some(&index) = outliers.iter().find(|&&i| !(0..cells).contains(&i)) {
        return Err(Error::IndexOutOfRange {
            index,
            patches: cells,
        });
    }
    let heat = normalise(scores, options.scale)?;
    let region = Region::of(image, options.placement);
    let (rows, cols) = (grid.rows as usize, grid.cols as usize);
    let mut out = image.clone();
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let Some((rx, ry)) = region.local(x, y) else {
            pixel.0 = pixel.0.map(|v| v / 2);
            continue;
        };
        let t = match options.upsample {
            Upsample::Nearest => {
                let c = (rx as usize * cols) / region.width as usize;
                let r = (ry as usize * rows) / region.height as usize;
                heat[r * cols + c]
            }
            Upsample::Bilinear => bilinear(&heat, (rows, cols), (rx, ry), &region),
        };
        let color = options.colormap.color(t);
        let base = pixel.0;
        *pixel = Rgb([0, 1, 2].map(|c| {
            let v = f32::from(base[c]) * (1.0 - options.opacity) + color[c] * options.opacity;
            v.round().clamp(0.0, 255.0) as u8
        }));
    }
    for &patch in outliers {
        outline_cell(&mut out, &region, grid, patch as usize, options);
    }
    Ok(out)
}

/// The pixel rectangle the grid covers.
struct Region {
    x0: u32,
    y0: u32,
    width: u32,
    height: u32,
}

impl Region {
    fn of(image: &RgbImage, placement: GridPlacement) -> Self {
        let (width, height) = image.dimensions();
        match placement {
            GridPlacement::Stretch => Self {
                x0: 0,
                y0: 0,
                width,
                height,
            },
            GridPlacement::CenterSquare => {
                let side = width.min(height);
                Self {
                    x0: (width - side) / 2,
                    y0: (height - side) / 2,
                    width: side,
                    height: side,
                }
            }
        }
    }

    /// Coordinates inside the region, if the pixel is in it.
    fn local(&self, x: u32, y: u32) -> Option<(u32, u32)> {
        let (rx, ry) = (x.checked_sub(self.x0)?, y.checked_sub(self.y0)?);
        (rx < self.width && ry < self.height).then_some((rx, ry))
    }
}

/// Renders with [`render_heatmap`] and writes the PNG atomically
/// ([`save_png_atomic`]).
///
/// # Errors
/// As [`render_heatmap`] and [`save_png_atomic`].
pub fn write_heatmap(
    path: &Path,
    image: &RgbImage,
    scores: &[f32],
    grid: PatchGrid,
    outliers: &[i64],
    options: &HeatmapOptions,
) -> Result<()> {
    save_png_atomic(
        &render_heatmap(image, scores, grid, outliers, options)?,
        path,
    )
}

/// Places `panels` left to right, top-aligned, `gap` white pixels apart,
/// on a white canvas as tall as the tallest panel (e.g. a decoder
/// attention map beside the ViT's \[CLS\] map, as in the paper's Figures 2
/// and 3).
///
/// # Errors
/// [`Error::InvalidParameter`] without panels or for a canvas wider or
/// taller than `u32::MAX` pixels.
pub fn side_by_side(panels: &[RgbImage], gap: u32) -> Result<RgbImage> {
    let too_big = || Error::InvalidParameter {
        name: "panels",
        value: format!("{} panels", panels.len()),
        expected: "at least one panel, at most u32::MAX pixels wide in all",
    };
    if panels.is_empty() {
        return Err(too_big());
    }
    let gaps = u64::from(gap) * (panels.len() as u64 - 1);
    let width = panels.iter().map(|p| u64::from(p.width())).sum::<u64>() + gaps;
    let width = u32::try_from(width).map_err(|_| too_big())?;
    let height = panels.iter().map(RgbImage::height).max().unwrap_or(0);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut x0 = 0u32;
    for panel in panels {
        for (x, y, pixel) in panel.enumerate_pixels() {
            canvas.put_pixel(x0 + x, y, *pixel);
        }
        x0 = x0.saturating_add(panel.width()).saturating_add(gap);
    }
    Ok(canvas)
}

fn normalise(scores: &[f32], scale: ScoreScale) -> Result<Vec<f32>> {
    let values: Vec<f32> = match scale {
        ScoreScale::Linear => scores.to_vec(),
        ScoreScale::Log => scores.iter().map(|s| s.ln()).collect(),
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "scores" });
    }
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = max - min;
    Ok(values
        .iter()
        .map(|v| if range > 0.0 { (v - min) / range } else { 0.0 })
        .collect())
}

fn bilinear(
    heat: &[f32],
    (rows, cols): (usize, usize),
    (x, y): (u32, u32),
    region: &Region,
) -> f32 {
    let axis = |p: u32, size: u32, n: usize| {
        let pos = ((p as f32 + 0.5) * n as f32 / size as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let lo = pos.floor() as usize;
        (lo, (lo + 1).min(n - 1), pos - lo as f32)
    };
    let (c0, c1, fx) = axis(x, region.width, cols);
    let (r0, r1, fy) = axis(y, region.height, rows);
    let at = |r: usize, c: usize| heat[r * cols + c];
    let top = at(r0, c0) * (1.0 - fx) + at(r0, c1) * fx;
    let bottom = at(r1, c0) * (1.0 - fx) + at(r1, c1) * fx;
    top * (1.0 - fy) + bottom * fy
}

fn outline_cell(
    out: &mut RgbImage,
    region: &Region,
    grid: PatchGrid,
    patch: usize,
    options: &HeatmapOptions,
) {
    let (width, height) = (region.width as usize, region.height as usize);
    let (rows, cols) = (grid.rows as usize, grid.cols as usize);
    let (r, c) = (patch / cols, patch % cols);
    let (x0, x1) = (c * width / cols, (c + 1) * width / cols);
    let (y0, y1) = (r * height / rows, (r + 1) * height / rows);
    let line = options.outline_width as usize;
    for y in y0..y1 {
        for x in x0..x1 {
            let edge = x < x0 + line || x + line >= x1 || y < y0 + line || y + line >= y1;
            if edge {
                let (px, py) = (region.x0 as usize + x, region.y0 as usize + y);
                out.put_pixel(px as u32, py as u32, Rgb(options.outline));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_grids() {
        assert_eq!(
            PatchGrid::square(576).unwrap(),
            PatchGrid::new(24, 24).unwrap()
        );
        assert_eq!(
            PatchGrid::square(256).unwrap(),
            PatchGrid::new(16, 16).unwrap()
        );
        assert!(PatchGrid::square(575).is_err());
        assert!(PatchGrid::square(0).is_err());
    }

    #[test]
    fn cells_and_outlines_land_on_their_patch() {
        let image = RgbImage::from_pixel(8, 8, Rgb([0, 0, 0]));
        let grid = PatchGrid::new(2, 2).unwrap();
        let options = HeatmapOptions {
            opacity: 1.0,
            outline: [0, 255, 0],
            outline_width: 1,
            ..HeatmapOptions::default()
        };
        let out = render_heatmap(&image, &[0.0, 1.0, 0.0, 0.0], grid, &[1], &options).unwrap();
        // patch 1 is the top-right cell: hot (red) inside, outlined in green.
        assert_eq!(out.get_pixel(5, 1).0, [128, 0, 0]);
        assert_eq!(out.get_pixel(4, 0).0, [0, 255, 0]);
        assert_eq!(out.get_pixel(7, 3).0, [0, 255, 0]);
        // patch 2 (bottom-left) is cold (dark blue), no outline.
        assert_eq!(out.get_pixel(0, 7).0, [0, 0, 128]);
    }

    #[test]
    fn center_square_placement_dims_the_cropped_sides() {
        let image = RgbImage::from_pixel(6, 4, Rgb([200, 200, 200]));
        let options = HeatmapOptions {
            placement: GridPlacement::CenterSquare,
            opacity: 1.0,
            outline_width: 0,
            ..HeatmapOptions::default()
        };
        let grid = PatchGrid::new(1, 1).unwrap();
        let out = render_heatmap(&image, &[1.0], grid, &[], &options).unwrap();
        // Columns 0 and 5 are outside the central 4x4 square.
        assert_eq!(out.get_pixel(0, 0).0, [100, 100, 100]);
        assert_eq!(out.get_pixel(5, 3).0, [100, 100, 100]);
        // Equal scores normalise to 0: dark blue inside.
        assert_eq!(out.get_pixel(1, 0).0, [0, 0, 128]);
    }

    #[test]
    fn panels_sit_side_by_side_top_aligned() {
        let red = RgbImage::from_pixel(2, 2, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(3, 1, Rgb([0, 0, 255]));
        let out = side_by_side(&[red, blue], 1).unwrap();
        assert_eq!(out.dimensions(), (6, 2));
        assert_eq!(out.get_pixel(1, 1).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(2, 0).0, [255, 255, 255]); // the gap
        assert_eq!(out.get_pixel(3, 0).0, [0, 0, 255]);
        assert_eq!(out.get_pixel(5, 0).0, [0, 0, 255]);
        assert_eq!(out.get_pixel(4, 1).0, [255, 255, 255]); // below the short panel
        assert!(side_by_side(&[], 4).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let image = RgbImage::new(4, 4);
        let grid = PatchGrid::new(2, 2).unwrap();
        let options = HeatmapOptions::default();
        assert!(matches!(
            render_heatmap(&image, &[0.0; 3], grid, &[], &options),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            render_heatmap(&image, &[0.0; 4], grid, &[4], &options),
            Err(Error::IndexOutOfRange { index: 4, .. })
        ));
        assert!(matches!(
            render_heatmap(&image, &[0.0, f32::NAN, 0.0, 0.0], grid, &[], &options),
            Err(Error::NonFinite { .. })
        ));
    }
}
