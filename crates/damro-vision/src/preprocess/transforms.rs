//! The geometric and numeric steps around the resize, each written to
//! match one HF transformers 5.23 backend exactly (`image_transforms.py`,
//! `image_processing_backends.py`, the LLaVA processors).

use image::RgbImage;

use super::config::{Normalize, ResizeTarget};
use super::{PreprocessError, Resampler, Result};

/// The `(height, width)` the resize step produces for an input of
/// `height x width`: HF's `get_resize_output_image_size` for a shortest
/// edge (the long side `int(size * long / short)`, truncated), its
/// `get_size_with_aspect_ratio` when a longest edge is also set.
pub fn resize_output_size(height: u32, width: u32, target: ResizeTarget) -> (u32, u32) {
    match target {
        ResizeTarget::Exact { height, width } => (height, width),
        ResizeTarget::ShortestEdge {
            shortest,
            longest: None,
        } => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            // Python's `int * int / int` divides exactly-held integers:
            // one correctly rounded f64 division, then `int()` truncates.
            let new_long = (u64::from(shortest) * u64::from(long)) as f64 / f64::from(short);
            let new_long = new_long as u32;
            if width <= height {
                (new_long, shortest)
            } else {
                (shortest, new_long)
            }
        }
        ResizeTarget::ShortestEdge {
            shortest,
            longest: Some(max_size),
        } => size_with_aspect_ratio(height, width, shortest, max_size),
    }
}

/// HF's `get_size_with_aspect_ratio`, in the same order of operations.
fn size_with_aspect_ratio(height: u32, width: u32, size: u32, max_size: u32) -> (u32, u32) {
    let (h, w) = (f64::from(height), f64::from(width));
    let min_orig = h.min(w);
    let max_orig = h.max(w);
    let mut size = size;
    let mut raw_size = None;
    if max_orig / min_orig * f64::from(size) > f64::from(max_size) {
        let raw = f64::from(max_size) * min_orig / max_orig;
        raw_size = Some(raw);
        size = raw.round_ties_even() as u32;
    }
    if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else if width < height {
        let oh = match raw_size {
            Some(raw) => raw * h / w,
            None => (u64::from(size) * u64::from(height)) as f64 / w,
        };
        (oh as u32, size)
    } else {
        let ow = match raw_size {
            Some(raw) => raw * w / h,
            None => (u64::from(size) * u64::from(width)) as f64 / h,
        };
        (size, ow as u32)
    }
}

/// The colour LLaVA pads with: `tuple(int(x * 255) for x in image_mean)`.
///
/// # Errors
/// [`PreprocessError::InvalidConfig`] when a channel falls outside
/// `0..=255`.
pub fn pad_colour(mean: [f64; 3]) -> Result<[u8; 3]> {
    let mut out = [0u8; 3];
    for (o, m) in out.iter_mut().zip(mean) {
        let v = (m * 255.0).trunc();
        if !(0.0..=255.0).contains(&v) {
            return Err(PreprocessError::InvalidConfig {
                field: "image_mean",
                message: format!("pad colour {v} from mean {m} is outside 0..=255"),
            });
        }
        *o = v as u8;
    }
    Ok(out)
}

/// Pads to a square of side `max(height, width)`, the image centred with
/// the offset `(side - short) // 2` (LLaVA's `expand2square`; HF's
/// `pad_to_square` in both backends).
pub fn pad_to_square(image: &RgbImage, colour: [u8; 3]) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == h {
        return image.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, image::Rgb(colour));
    let (ox, oy) = ((side - w) / 2, (side - h) / 2);
    for (x, y, p) in image.enumerate_pixels() {
        out.put_pixel(x + ox, y + oy, *p);
    }
    out
}

/// Output pixel `(x, y)` is source pixel `(x + ox, y + oy)`, or black where
/// that falls outside the source.
fn window(image: &RgbImage, oy: i64, ox: i64, height: u32, width: u32) -> RgbImage {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) + ox, i64::from(y) + oy);
        if (0..w).contains(&sx) && (0..h).contains(&sy) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// Centre crop to `height x width`, padding with black where the image is
/// smaller; the offsets are those of the chosen backend (they differ only
/// when padding: numpy's `center_crop` puts the extra row/column of an odd
/// padding before the image, torchvision's after).
///
/// # Errors
/// [`PreprocessError::EmptyImage`] for a zero-sized crop.
pub fn center_crop(
    image: &RgbImage,
    height: u32,
    width: u32,
    backend: Resampler,
) -> Result<RgbImage> {
    if height == 0 || width == 0 {
        return Err(PreprocessError::EmptyImage { width, height });
    }
    let (ih, iw) = (i64::from(image.height()), i64::from(image.width()));
    let (ch, cw) = (i64::from(height), i64::from(width));
    let (oy, ox) = match backend {
        Resampler::Pil => (numpy_crop_offset(ih, ch), numpy_crop_offset(iw, cw)),
        Resampler::Torchvision => (
            torchvision_crop_offset(ih, ch),
            torchvision_crop_offset(iw, cw),
        ),
    };
    if (oy, ox) == (0, 0) && (ih, iw) == (ch, cw) {
        return Ok(image.clone());
    }
    Ok(window(image, oy, ox, height, width))
}

/// numpy `center_crop` along one axis: `top = (size - crop) // 2` (floor),
/// and when padding, `ceil((max(crop, size) - size) / 2)` rows of padding
/// before the image. Returns the source index of output index 0.
fn numpy_crop_offset(size: i64, crop: i64) -> i64 {
    let top = (size - crop).div_euclid(2);
    let new_size = crop.max(size);
    let pad = (new_size - size + 1) / 2;
    (top + pad).max(0) - pad
}

/// torchvision-backend `center_crop` along one axis: pad
/// `(crop - size) // 2` before, then crop at `int((padded - crop) / 2)`.
fn torchvision_crop_offset(size: i64, crop: i64) -> i64 {
    if crop > size {
        let before = (crop - size) / 2;
        let after = (crop - size + 1) / 2;
        let padded = size + before + after;
        (padded - crop) / 2 - before
    } else {
        (size - crop) / 2
    }
}

/// Rescale and normalise to channel-first `f32`, in each backend's
/// arithmetic:
/// - PIL backend: `f32(f64(v) * rescale_factor)`, then
///   `(x - f32(mean)) / f32(std)` in `f32` (numpy);
/// - torchvision backend, both steps on: the fused
///   `(v - f32(mean) * f32(1 / rescale_factor)) / (f32(std) * f32(1 /
///   rescale_factor))` in `f32`; rescale alone: `v * f32(rescale_factor)`.
///
/// # Shapes
/// `image` is `H x W` RGB; the result is `[3, H, W]` flattened.
pub fn to_chw_f32(
    image: &RgbImage,
    rescale: Option<f64>,
    normalize: Option<Normalize>,
    backend: Resampler,
) -> Vec<f32> {
    let plane = image.width() as usize * image.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        let f = channel_fn(c, rescale, normalize, backend);
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, px) in dst.iter_mut().zip(image.pixels()) {
            *d = f(px.0[c]);
        }
    }
    out
}

/// The per-value map of channel `c` (see [`to_chw_f32`]).
fn channel_fn(
    c: usize,
    rescale: Option<f64>,
    normalize: Option<Normalize>,
    backend: Resampler,
) -> impl Fn(u8) -> f32 {
    let mean = normalize.map(|n| n.mean[c] as f32);
    let std = normalize.map(|n| n.std[c] as f32);
    let (mean, std, rescale) = match (backend, rescale, mean, std) {
        (Resampler::Torchvision, Some(f), Some(m), Some(s)) => {
            let inv = (1.0 / f) as f32;
            (Some(m * inv), Some(s * inv), None)
        }
        _ => (mean, std, rescale),
    };
    move |v: u8| {
        let x = match (rescale, backend) {
            (Some(f), Resampler::Pil) => (f64::from(v) * f) as f32,
            (Some(f), Resampler::Torchvision) => f32::from(v) * f as f32,
            (None, _) => f32::from(v),
        };
        match (mean, std) {
            (Some(m), Some(s)) => (x - m) / s,
            _ => x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_like_python() {
        let t = ResizeTarget::ShortestEdge {
            shortest: 336,
            longest: None,
        };
        // int(336 * 640 / 480) = int(448.0) ; int(336 * 500 / 333) = 504
        assert_eq!(resize_output_size(480, 640, t), (336, 448));
        assert_eq!(resize_output_size(500, 333, t), (504, 336));
        assert_eq!(resize_output_size(333, 500, t), (336, 504));
        assert_eq!(resize_output_size(100, 100, t), (336, 336));
        // 336 * 1001 / 1000 = 336.336 -> 336
        assert_eq!(resize_output_size(1000, 1001, t), (336, 336));
    }

    #[test]
    fn crop_offsets_match_both_backends() {
        // numpy: odd padding goes before; torchvision: after.
        assert_eq!(numpy_crop_offset(3, 4), -1);
        assert_eq!(torchvision_crop_offset(3, 4), 0);
        assert_eq!(numpy_crop_offset(2, 5), -2);
        assert_eq!(torchvision_crop_offset(2, 5), -1);
        for (size, crop) in [(10, 4), (11, 4), (448, 336), (337, 336)] {
            assert_eq!(numpy_crop_offset(size, crop), (size - crop) / 2);
            assert_eq!(torchvision_crop_offset(size, crop), (size - crop) / 2);
        }
    }

    #[test]
    fn pad_colour_of_clip_mean() {
        let c = pad_colour([0.48145466, 0.4578275, 0.40821073]).unwrap();
        assert_eq!(c, [122, 116, 104]);
        assert!(pad_colour([-0.1, 0.0, 0.0]).is_err());
    }

    #[test]
    fn pad_to_square_centres() {
        let img = RgbImage::from_pixel(4, 1, image::Rgb([9, 9, 9]));
        let out = pad_to_square(&img, [1, 2, 3]);
        assert_eq!(out.dimensions(), (4, 4));
        assert_eq!(out.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(out.get_pixel(0, 1).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(0, 2).0, [1, 2, 3]);
    }
}
