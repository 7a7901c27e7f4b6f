//! PIL's bicubic resampling of 8-bit images, reproduced bit for bit.
//!
//! Follows `ImagingResample` in Pillow's `src/libImaging/Resample.c` (the
//! path `Image.resize(size, Image.BICUBIC)` takes for modes `L` and `RGB`):
//!
//! - one filter coefficient table per axis, computed in `f64` from the
//!   bicubic kernel with `a = -0.5`, its support widened by the shrink
//!   factor when downscaling (that is PIL's antialiasing), and normalised so
//!   each output pixel's weights sum to one;
//! - the weights turned into fixed point with 22 fractional bits
//!   (`32 - 8 - 2`), rounding half away from zero;
//! - two passes through an 8-bit intermediate image (each rounded with a
//!   bias of one half and clamped to `0..=255`): the horizontal pass first,
//!   over only the source rows the vertical pass reads, then the vertical
//!   one; except that Pillow 13 runs the vertical pass first when the
//!   height shrinks much more than the width ([`PillowVersion`]);
//! - a pass is skipped when its axis keeps its size.
//!
//! The `image` and `fast_image_resize` crates differ from this (vertical
//! pass first, other precision) by up to 20 levels on noisy images.

use image::RgbImage;

use super::{PreprocessError, Result};

/// Fractional bits of the fixed-point weights (PIL's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Support radius of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// The bicubic convolution kernel with `a = -0.5` (Keys), as PIL writes it.
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter weights of one axis.
///
/// Output pixel `i` reads `count[i]` source pixels starting at `first[i]`,
/// with the weights `weights[i * ksize .. i * ksize + count[i]]`.
#[derive(Debug, Clone)]
struct AxisWeights {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl AxisWeights {
    /// PIL's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the
    /// source span `in0..in1` (PIL keeps the box in `f32`) of an axis of
    /// `in_size` pixels resampled to `out_size` pixels.
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize) -> Self {
        // PIL subtracts in `float`, then divides in `double`.
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filter_scale = if scale < 1.0 { 1.0 } else { scale };
        let support = BICUBIC_SUPPORT * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;

        let mut first = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut row = vec![0f64; ksize];
        for (i, out_row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = f64::from(in0) + (i as f64 + 0.5) * scale;
            // `(int)` in C truncates toward zero, as `as` does.
            let lo = ((center - support + 0.5) as i64).max(0);
            let hi = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (hi - lo).max(0) as usize;
            let n = n.min(ksize);
            let mut total = 0.0;
            for (j, w) in row.iter_mut().enumerate().take(n) {
                let x = ((j as i64 + lo) as f64 - center + 0.5) * inv_filter_scale;
                *w = bicubic_kernel(x);
                total += *w;
            }
            for (w, fixed) in row.iter().zip(out_row.iter_mut()).take(n) {
                let w = if total != 0.0 { *w / total } else { *w };
                *fixed = to_fixed(w);
            }
            first.push(lo as usize);
            count.push(n);
        }
        Self {
            ksize,
            first,
            count,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let start = i * self.ksize;
        (self.first[i], &self.weights[start..start + self.count[i]])
    }
}

/// A normalised `f64` weight in fixed point, rounded half away from zero.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Rounds a fixed-point accumulator (which already holds the one-half
/// bias) to 8 bits, clamping like PIL's `clip8`.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bias added to every accumulator so that the final shift rounds.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// An interleaved 8-bit image: `height` rows of `width * channels` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interleaved<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

/// Resamples rows `row0 .. row0 + rows` of `src` horizontally to `out_width`.
fn horizontal(src: &Interleaved<'_>, row0: usize, rows: usize, w: &AxisWeights) -> Vec<u8> {
    let c = src.channels;
    let out_width = w.first.len();
    let mut out = vec![0u8; rows * out_width * c];
    let src_stride = src.width * c;
    for (y, out_row) in out.chunks_exact_mut(out_width * c).enumerate() {
        let in_row = &src.data[(row0 + y) * src_stride..(row0 + y + 1) * src_stride];
        for (x, px) in out_row.chunks_exact_mut(c).enumerate() {
            let (first, taps) = w.taps(x);
            for (ch, value) in px.iter_mut().enumerate() {
                let mut acc = HALF;
                for (k, &weight) in taps.iter().enumerate() {
                    acc += i64::from(in_row[(first + k) * c + ch]) * i64::from(weight);
                }
                *value = clip8(acc);
            }
        }
    }
    out
}

/// Resamples `src` vertically; output row `i` reads source rows starting
/// at `w.first[i] - row_shift`.
fn vertical(src: &Interleaved<'_>, row_shift: usize, w: &AxisWeights) -> Vec<u8> {
    let stride = src.width * src.channels;
    let out_height = w.first.len();
    let mut out = vec![0u8; out_height * stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (first, taps) = w.taps(y);
        let first = first - row_shift;
        for (i, value) in out_row.iter_mut().enumerate() {
            let mut acc = HALF;
            for (k, &weight) in taps.iter().enumerate() {
                acc += i64::from(src.data[(first + k) * stride + i]) * i64::from(weight);
            }
            *value = clip8(acc);
        }
    }
    out
}

/// Which Pillow's order of passes to follow.
///
/// Pillow 13 runs the vertical pass first when the height shrinks by more
/// than twice as many pixels as the width (`in_h - out_h > 0` and
/// `in_h - out_h > 2 * (in_w - out_w)`); earlier versions always run the
/// horizontal pass first. The two orders round the 8-bit intermediate
/// differently, so the results differ by a level here and there (e.g. a
/// 240x400 image resized to 224x224, as BLIP does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PillowVersion {
    /// Pillow 13.x (what the transformers 5.23 test fixtures were made
    /// with).
    Pillow13,
    /// Pillow 12.x and earlier, the default: the DAMRO authors ran
    /// transformers 4.43 with a Pillow of that era; horizontal pass always
    /// first.
    #[default]
    Pre13,
}

/// PIL's `ImagingResample` with the bicubic filter and the full-image box,
/// on any number of interleaved 8-bit channels (PIL resamples each channel
/// of `L` and `RGB` images alike).
///
/// The caller guarantees `data.len() == width * height * channels` and
/// non-zero sizes.
pub(crate) fn resample(
    src: &Interleaved<'_>,
    out_width: usize,
    out_height: usize,
    version: PillowVersion,
) -> Vec<u8> {
    let need_horizontal = out_width != src.width;
    let need_vertical = out_height != src.height;
    let shrink_h = src.height as i64 - out_height as i64;
    let shrink_w = src.width as i64 - out_width as i64;
    let horizontal_first = match version {
        PillowVersion::Pre13 => true,
        PillowVersion::Pillow13 => !(shrink_h > 0 && shrink_h > shrink_w * 2),
    };
    let vert = AxisWeights::new(src.height, 0.0, src.height as f32, out_height);
    let horiz = || AxisWeights::new(src.width, 0.0, src.width as f32, out_width);

    match (need_horizontal, need_vertical) {
        (false, false) => src.data.to_vec(),
        (false, true) => vertical(src, 0, &vert),
        (true, false) => horizontal(src, 0, src.height, &horiz()),
        (true, true) if horizontal_first => {
            // Only the source rows the vertical pass reads.
            let last = out_height - 1;
            let (row0, row1) = (vert.first[0], vert.first[last] + vert.count[last]);
            let temp = horizontal(src, row0, row1 - row0, &horiz());
            let temp = Interleaved {
                data: &temp,
                width: out_width,
                height: row1 - row0,
                channels: src.channels,
            };
            vertical(&temp, row0, &vert)
        }
        (true, true) => {
            let temp = vertical(src, 0, &vert);
            let temp = Interleaved {
                data: &temp,
                width: src.width,
                height: out_height,
                channels: src.channels,
            };
            horizontal(&temp, 0, out_height, &horiz())
        }
    }
}

/// Resizes an 8-bit RGB image with PIL's bicubic filter, bit for bit equal
/// to Pillow 13's `Image.resize((width, height), Image.BICUBIC)` on a mode
/// `RGB` image (see [`resize_bicubic_as`] for older Pillows).
///
/// # Errors
/// [`PreprocessError::EmptyImage`] when the source or the requested size
/// has a zero side.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    resize_bicubic_as(src, width, height, PillowVersion::Pillow13)
}

/// [`resize_bicubic`] with the pass order of the given Pillow version.
///
/// # Errors
/// [`PreprocessError::EmptyImage`] when the source or the requested size
/// has a zero side, [`PreprocessError::TooLarge`] beyond
/// [`super::processor::MAX_PIXELS`].
pub fn resize_bicubic_as(
    src: &RgbImage,
    width: u32,
    height: u32,
    version: PillowVersion,
) -> Result<RgbImage> {
    if src.width() == 0 || src.height() == 0 {
        return Err(PreprocessError::EmptyImage {
            width: src.width(),
            height: src.height(),
        });
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyImage { width, height });
    }
    super::processor::check_size(width, height)?;
    let view = Interleaved {
        data: src.as_raw(),
        width: src.width() as usize,
        height: src.height() as usize,
        channels: 3,
    };
    let out = resample(&view, width as usize, height as usize, version);
    RgbImage::from_raw(width, height, out).ok_or(PreprocessError::EmptyImage { width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (inp, out) in [(7, 3), (3, 7), (640, 336), (336, 336), (1, 5), (5, 1)] {
            let w = AxisWeights::new(inp, 0.0, inp as f32, out);
            for i in 0..out {
                let (_, taps) = w.taps(i);
                let sum: i64 = taps.iter().map(|&t| i64::from(t)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= taps.len() as i64,
                    "{inp}->{out}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(13, 9, image::Rgb([17, 200, 255]));
        for (w, h) in [(5, 4), (30, 21), (13, 20), (4, 9), (1, 1)] {
            let out = resize_bicubic(&src, w, h).unwrap();
            assert!(out.pixels().all(|p| p.0 == [17, 200, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn same_size_is_a_copy_and_zero_size_is_an_error() {
        let src = RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8, y as u8, 9]));
        assert_eq!(resize_bicubic(&src, 4, 3).unwrap(), src);
        assert!(matches!(
            resize_bicubic(&src, 0, 3),
            Err(PreprocessError::EmptyImage { .. })
        ));
    }
}
