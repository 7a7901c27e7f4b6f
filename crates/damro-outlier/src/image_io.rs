//! Image helpers for the heatmaps: the model's view of an image from its
//! normalised pixel values, and atomic PNG writing (a temporary file in the
//! target directory, then a rename, so a failure never leaves a partial PNG).

use crate::{Error, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

/// CLIP's normalisation mean (LLaVA-1.5 and InstructBLIP both use it).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Writes `image` as PNG to `path` through a temporary file in the same
/// directory and a rename: `path` either keeps its old content or gets
/// the complete new file; the temporary file is removed on failure.
///
/// # Errors
/// [`Error::Io`] or [`Error::Image`], naming the file.
pub fn save_png_atomic(image: &RgbImage, path: &Path) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |path: &Path, source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    // Errors name the destination the caller asked for, not the
    // temporary file next to it.
    let written = (|| {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err(path, e))?;
        let mut writer = BufWriter::new(file);
        PngEncoder::new(&mut writer)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                ExtendedColorType::Rgb8,
            )
            .map_err(|source| Error::Image {
                path: path.to_path_buf(),
                source,
            })?;
        writer.flush().map_err(|e| io_err(path, e))?;
        let file = writer
            .into_inner()
            .map_err(|e| io_err(path, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(path, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Undoes the processor's normalisation of `pixel_values` and returns the
/// 8-bit RGB image the model saw (e.g. LLaVA's 336x336 crop).
///
/// # Shapes
/// `pixel_values`: `[3, H, W]` or `[1, 3, H, W]`, floating point.
///
/// # Errors
/// [`Error::Shape`] or [`Error::Kind`] for other inputs.
pub fn image_from_pixel_values(
    pixel_values: &Tensor,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<RgbImage> {
    let chw = match pixel_values.size()[..] {
        [3, _, _] => pixel_values.shallow_clone(),
        [1, 3, _, _] => pixel_values.f_squeeze_dim(0)?,
        _ => {
            return Err(Error::Shape {
                what: "pixel_values",
                shape: pixel_values.size(),
                expected: "[3, H, W] or [1, 3, H, W]".into(),
            });
        }
    };
    if !matches!(
        chw.kind(),
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    ) {
        return Err(Error::Kind {
            what: "pixel_values",
            kind: chw.kind(),
            expected: "a floating-point type",
        });
    }
    let (height, width) = (chw.size()[1], chw.size()[2]);
    let hwc = chw
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?
        .f_permute([1, 2, 0])?
        .f_contiguous()?
        .f_view([-1])?;
    let values = Vec::<f32>::try_from(&hwc)?;
    let bytes: Vec<u8> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = i % 3;
            ((v * std[c] + mean[c]) * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    let (w, h) = (dim_u32(width)?, dim_u32(height)?);
    RgbImage::from_raw(w, h, bytes).ok_or_else(|| Error::Shape {
        what: "pixel_values",
        shape: pixel_values.size(),
        expected: "a size that fits in memory".into(),
    })
}

fn dim_u32(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidParameter {
        name: "image size",
        value: v.to_string(),
        expected: "a size that fits in u32",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_file_behind() {
        let dir = std::env::temp_dir().join(format!("damro-heatmap-{}", std::process::id()));
        fs::create_dir_all(dir.join("occupied").join("child")).unwrap();
        let image = RgbImage::new(3, 2);
        // Renaming a file onto a non-empty directory fails after the PNG
        // was fully written to the temporary file.
        let err = save_png_atomic(&image, &dir.join("occupied")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let good = dir.join("ok.png");
        save_png_atomic(&image, &good).unwrap();
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["occupied", "ok.png"]);
        assert_eq!(image::open(&good).unwrap().to_rgb8(), image);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pixel_values_round_trip() {
        let mean = CLIP_MEAN;
        let std = CLIP_STD;
        // Pixel (0, 0) = (255, 0, 128); the rest 0.
        let mut v = vec![0f32; 3 * 2 * 2];
        for (c, level) in [255.0f32, 0.0, 128.0].iter().enumerate() {
            for p in 0..4 {
                let level = if p == 0 { *level } else { 0.0 };
                v[c * 4 + p] = (level / 255.0 - mean[c]) / std[c];
            }
        }
        let t = Tensor::from_slice(&v).view([1, 3, 2, 2]);
        let image = image_from_pixel_values(&t, mean, std).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [255, 0, 128]);
        assert_eq!(image.get_pixel(1, 1).0, [0, 0, 0]);
    }
}
