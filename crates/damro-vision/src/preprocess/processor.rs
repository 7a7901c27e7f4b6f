//! The image processor: file / image / bytes in, `pixel_values` out.
//!
//! Order of steps, as in HF transformers 5.23's `PilBackend` and
//! `TorchvisionBackend` (and `LlavaImageProcessor` for the padding):
//! convert to RGB, pad to a square (LLaVA `do_pad` / original LLaVA
//! `image_aspect_ratio: pad`), resize (bicubic), centre crop, rescale,
//! normalise.

use std::path::Path;

use image::{DynamicImage, RgbImage};
use tch::{Kind, Tensor};

use super::config::PreprocessorConfig;
use super::convert::{AlphaMode, PngHeader, to_rgb8};
use super::pil_bicubic::{PillowVersion, resize_bicubic_as};
use super::transforms::{center_crop, pad_colour, pad_to_square, resize_output_size, to_chw_f32};
use super::{PreprocessError, Result};

/// Which HF backend's resampling (and arithmetic) to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resampler {
    /// PIL's bicubic on 8-bit RGB (HF's `*ImageProcessorPil`, and the
    /// `use_fast=False` processors of transformers 4.x the DAMRO authors
    /// used). Pure Rust, bit for bit.
    #[default]
    Pil,
    /// libtorch's antialiased bicubic on `uint8` tensors, which is what
    /// transformers 5's default torchvision backend runs on CPU (`tvF.resize`
    /// with `antialias=True`), with that backend's fused rescale/normalise.
    Torchvision,
}

/// Whether to pad to a square with the mean colour before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadToSquare {
    /// As the config says (`do_pad` of `LlavaImageProcessor`; off for the
    /// llava-hf `CLIPImageProcessor` files).
    #[default]
    FromConfig,
    /// Always pad: the original LLaVA code's `image_aspect_ratio: pad`.
    Always,
    /// Never pad.
    Never,
}

/// Choices the config file does not make.
///
/// The default reproduces the DAMRO authors' processors: transformers 4.43
/// with `use_fast=False` (PIL bicubic, horizontal pass first as Pillow
/// before 13 does, alpha dropped by `convert("RGB")`).
/// [`ProcessorOptions::transformers5_pil`] reproduces transformers 5.23's
/// PIL backend with Pillow 13 (alpha composited on white), and
/// [`ProcessorOptions::transformers5_torchvision`] its default torchvision
/// backend. The three agree on opaque images except where Pillow 13's pass
/// order or the torchvision kernel round differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessorOptions {
    /// Whose resize to reproduce: PIL's (default) or torchvision's.
    pub resampler: Resampler,
    /// The Pillow whose pass order [`Resampler::Pil`] follows.
    pub pillow: PillowVersion,
    /// What becomes of transparent pixels (default: dropped, as PIL's
    /// `convert("RGB")`).
    pub alpha: AlphaMode,
    /// Whether to pad to a square before resizing (default: as the config
    /// says).
    pub pad_to_square: PadToSquare,
}

impl ProcessorOptions {
    /// transformers 5.23's PIL backend (`backend="pil"`) with Pillow 13.
    pub fn transformers5_pil() -> Self {
        Self {
            resampler: Resampler::Pil,
            pillow: PillowVersion::Pillow13,
            alpha: AlphaMode::CompositeOnWhite,
            pad_to_square: PadToSquare::FromConfig,
        }
    }

    /// transformers 5.23's default torchvision backend.
    pub fn transformers5_torchvision() -> Self {
        Self {
            resampler: Resampler::Torchvision,
            ..Self::transformers5_pil()
        }
    }
}

/// Preprocessed pixels of one image, channel-first `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// `[3, height, width]` flattened.
    pub data: Vec<f32>,
    /// Height in pixels after preprocessing.
    pub height: usize,
    /// Width in pixels after preprocessing.
    pub width: usize,
}

impl PixelValues {
    /// # Shapes
    /// Returns `[1, 3, height, width]`, `f32` on the CPU.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(&self.data)?.f_view([
            1,
            3,
            self.height as i64,
            self.width as i64,
        ])?)
    }
}

/// One image to preprocess.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// A file, decoded by format (PNG, JPEG).
    Path(&'a Path),
    /// An encoded file already in memory.
    Encoded(&'a [u8]),
    /// A decoded image.
    Image(&'a DynamicImage),
    /// Packed 8-bit RGB, row-major, `width * height * 3` bytes.
    Rgb {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// `width * height * 3` bytes, row-major, R, G, B per pixel.
        data: &'a [u8],
    },
}

/// Runs a [`PreprocessorConfig`] on images.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    config: PreprocessorConfig,
    options: ProcessorOptions,
}

impl ImageProcessor {
    /// A processor with the default [`ProcessorOptions`] (PIL resampling
    /// as Pillow before 13, alpha dropped, padding as configured).
    pub fn new(config: PreprocessorConfig) -> Self {
        Self {
            config,
            options: ProcessorOptions::default(),
        }
    }

    /// Reads the config from a HF model directory.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(PreprocessorConfig::from_model_dir(dir)?))
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: ProcessorOptions) -> Self {
        self.options = options;
        self
    }

    /// The validated `preprocessor_config.json` it runs.
    pub fn config(&self) -> &PreprocessorConfig {
        &self.config
    }

    /// The choices the config file does not make.
    pub fn options(&self) -> &ProcessorOptions {
        &self.options
    }

    fn pads(&self) -> bool {
        match self.options.pad_to_square {
            PadToSquare::FromConfig => self.config.pad_to_square,
            PadToSquare::Always => true,
            PadToSquare::Never => false,
        }
    }

    /// Decodes and converts one input to 8-bit RGB (see
    /// [`super::convert`]).
    ///
    /// # Errors
    /// Unreadable or undecodable files, a raw buffer of the wrong length,
    /// float images, or a non-RGB image when `do_convert_rgb` is off.
    pub fn to_rgb(&self, input: ImageInput<'_>) -> Result<RgbImage> {
        match input {
            ImageInput::Path(path) => {
                let bytes = read_image_file(path)?;
                self.decode(&bytes, &path.display().to_string())
            }
            ImageInput::Encoded(bytes) => self.decode(bytes, "<memory>"),
            ImageInput::Image(image) => self.convert(image, None),
            ImageInput::Rgb {
                width,
                height,
                data,
            } => {
                let expected = width as usize * height as usize * 3;
                if data.len() != expected {
                    return Err(PreprocessError::RgbBufferSize {
                        width,
                        height,
                        expected,
                        actual: data.len(),
                    });
                }
                RgbImage::from_raw(width, height, data.to_vec())
                    .ok_or(PreprocessError::EmptyImage { width, height })
            }
        }
    }

    fn decode(&self, bytes: &[u8], what: &str) -> Result<RgbImage> {
        let image = decode_bounded(bytes, what)?;
        self.convert(&image, PngHeader::sniff(bytes).as_ref())
    }

    fn convert(&self, image: &DynamicImage, png: Option<&PngHeader>) -> Result<RgbImage> {
        if !self.config.do_convert_rgb {
            return match image {
                DynamicImage::ImageRgb8(im) => Ok(im.clone()),
                other => Err(PreprocessError::NotRgb(format!("{:?}", other.color()))),
            };
        }
        to_rgb8(image, png, self.options.alpha)
    }

    /// The `(height, width)` of the pixel values for an RGB input of
    /// `height x width` (after padding, resizing and cropping).
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        let (mut h, mut w) = (height, width);
        if self.pads() {
            let side = h.max(w);
            (h, w) = (side, side);
        }
        if let Some(target) = self.config.resize {
            (h, w) = resize_output_size(h, w, target);
        }
        if let Some(crop) = self.config.center_crop {
            (h, w) = (crop.height, crop.width);
        }
        (h, w)
    }

    /// Pads, resizes, crops, rescales and normalises an RGB image.
    ///
    /// # Errors
    /// A zero-sized image or target, a step beyond [`MAX_PIXELS`], or a
    /// libtorch failure in [`Resampler::Torchvision`] mode.
    pub fn pixel_values(&self, rgb: &RgbImage) -> Result<PixelValues> {
        if rgb.width() == 0 || rgb.height() == 0 {
            return Err(PreprocessError::EmptyImage {
                width: rgb.width(),
                height: rgb.height(),
            });
        }
        let backend = self.options.resampler;
        // The resizers check their own output size.
        let (h, w) = self.output_size(rgb.height(), rgb.width());
        check_size(w, h)?;
        if self.pads() {
            let side = rgb.width().max(rgb.height());
            check_size(side, side)?;
        }
        let padded;
        let mut image = rgb;
        if self.pads() {
            padded = pad_to_square(image, pad_colour(self.config.image_mean)?);
            image = &padded;
        }
        let resized;
        if let Some(target) = self.config.resize {
            let (h, w) = resize_output_size(image.height(), image.width(), target);
            resized = match backend {
                Resampler::Pil => resize_bicubic_as(image, w, h, self.options.pillow)?,
                Resampler::Torchvision => resize_torchvision(image, w, h)?,
            };
            image = &resized;
        }
        let cropped;
        if let Some(crop) = self.config.center_crop {
            cropped = center_crop(image, crop.height, crop.width, backend)?;
            image = &cropped;
        }
        Ok(PixelValues {
            data: to_chw_f32(
                image,
                self.config.rescale_factor,
                self.config.normalize,
                backend,
            ),
            height: image.height() as usize,
            width: image.width() as usize,
        })
    }

    /// Preprocesses one image.
    ///
    /// # Shapes
    /// Returns `[1, 3, H, W]` `f32` on the CPU; cast and move it as the
    /// model needs.
    pub fn preprocess(&self, input: ImageInput<'_>) -> Result<Tensor> {
        self.pixel_values(&self.to_rgb(input)?)?.to_tensor()
    }

    /// Preprocesses an image file.
    ///
    /// # Shapes
    /// Returns `[1, 3, H, W]` `f32` on the CPU.
    pub fn preprocess_path(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.preprocess(ImageInput::Path(path.as_ref()))
    }

    /// Preprocesses a decoded image.
    ///
    /// # Shapes
    /// Returns `[1, 3, H, W]` `f32` on the CPU.
    pub fn preprocess_image(&self, image: &DynamicImage) -> Result<Tensor> {
        self.preprocess(ImageInput::Image(image))
    }

    /// Preprocesses packed 8-bit RGB bytes (`width * height * 3`).
    ///
    /// # Shapes
    /// Returns `[1, 3, H, W]` `f32` on the CPU.
    pub fn preprocess_rgb(&self, width: u32, height: u32, data: &[u8]) -> Result<Tensor> {
        self.preprocess(ImageInput::Rgb {
            width,
            height,
            data,
        })
    }

    /// Preprocesses a batch; every image must come out the same size
    /// (always so with a centre crop or an exact resize).
    ///
    /// # Shapes
    /// Returns `[N, 3, H, W]` `f32` on the CPU.
    ///
    /// # Errors
    /// An empty batch, any image's error (with its index), or images of
    /// different output sizes.
    pub fn preprocess_batch(&self, inputs: &[ImageInput<'_>]) -> Result<Tensor> {
        let mut data = Vec::new();
        let mut size = None;
        for (index, input) in inputs.iter().enumerate() {
            let pv = self
                .to_rgb(*input)
                .and_then(|rgb| self.pixel_values(&rgb))
                .map_err(|e| PreprocessError::InBatch {
                    index,
                    source: Box::new(e),
                })?;
            let this = (pv.height, pv.width);
            match size {
                None => size = Some(this),
                Some(first) if first != this => {
                    return Err(PreprocessError::BatchSizeMismatch {
                        index,
                        expected: first,
                        actual: this,
                    });
                }
                Some(_) => {}
            }
            data.extend_from_slice(&pv.data);
        }
        let (h, w) = size.ok_or(PreprocessError::EmptyBatch)?;
        Ok(Tensor::f_from_slice(&data)?.f_view([inputs.len() as i64, 3, h as i64, w as i64])?)
    }
}

/// Images whose header claims more pixels than this are refused before
/// decoding: Pillow's decompression-bomb error threshold (2 x 89,478,485).
pub const MAX_DECODED_PIXELS: u64 = 2 * 89_478_485;

/// Files larger than this are not read as images (1 GiB).
pub const MAX_IMAGE_FILE_BYTES: u64 = 1 << 30;

/// Reads an image file after checking that it is a regular file of a
/// sensible size (so `/dev/zero` or a directory is an error, not a hang).
fn read_image_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| PreprocessError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(PreprocessError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(PreprocessError::FileTooLarge {
            path: path.to_path_buf(),
            bytes: meta.len(),
            limit: MAX_IMAGE_FILE_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Decodes an encoded image after checking the size its header claims
/// against [`MAX_DECODED_PIXELS`].
fn decode_bounded(bytes: &[u8], what: &str) -> Result<DynamicImage> {
    let decode_error = |source| PreprocessError::Decode {
        what: what.to_string(),
        source,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_error(image::ImageError::IoError(e)))
    };
    let (width, height) = reader()?.into_dimensions().map_err(decode_error)?;
    if u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS {
        return Err(PreprocessError::DecompressionBomb {
            what: what.to_string(),
            width,
            height,
            limit: MAX_DECODED_PIXELS,
        });
    }
    reader()?.decode().map_err(decode_error)
}

/// Largest image any step may produce, in pixels (2^30, 3 GiB of RGB).
pub const MAX_PIXELS: u64 = 1 << 30;

pub(crate) fn check_size(width: u32, height: u32) -> Result<()> {
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(PreprocessError::TooLarge { width, height });
    }
    Ok(())
}

/// libtorch's antialiased bicubic on a `uint8` `[1, 3, H, W]` contiguous
/// tensor (`aten::_upsample_bicubic2d_aa`, `align_corners=False`, no scale
/// factors), as torchvision's `resize` calls it; an unchanged size is
/// returned as is, as torchvision does.
///
/// # Errors
/// A zero-sized target, or a libtorch error.
pub fn resize_torchvision(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyImage { width, height });
    }
    check_size(width, height)?;
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    let (w0, h0) = (i64::from(image.width()), i64::from(image.height()));
    let input = Tensor::f_from_slice(image.as_raw())?
        .f_view([1, h0, w0, 3])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?;
    let out = input.f_internal_upsample_bicubic2d_aa(
        [i64::from(height), i64::from(width)],
        false,
        None,
        None,
    )?;
    if out.kind() != Kind::Uint8 {
        return Err(PreprocessError::Torch(tch::TchError::Kind(format!(
            "upsample_bicubic2d_aa returned {:?} for uint8 input",
            out.kind()
        ))));
    }
    let hwc = out
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_flatten(0, -1)?;
    let bytes = Vec::<u8>::try_from(&hwc)?;
    RgbImage::from_raw(width, height, bytes).ok_or(PreprocessError::EmptyImage { width, height })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::config::ResizeTarget;

    fn blip() -> ImageProcessor {
        ImageProcessor::new(PreprocessorConfig::instructblip())
    }

    #[test]
    fn unreadable_and_undecodable_inputs_are_typed_errors() {
        let missing = Path::new("/nonexistent/damro/cat.png");
        assert!(matches!(
            blip().preprocess_path(missing),
            Err(PreprocessError::Io { path, .. }) if path == missing
        ));
        assert!(matches!(
            blip().preprocess(ImageInput::Encoded(b"\x89PNG\r\n\x1a\nnot really")),
            Err(PreprocessError::Decode { .. })
        ));
        assert!(matches!(
            blip().preprocess_rgb(4, 4, &[0; 47]),
            Err(PreprocessError::RgbBufferSize {
                expected: 48,
                actual: 47,
                ..
            })
        ));
        assert!(matches!(
            blip().preprocess_rgb(0, 4, &[]),
            Err(PreprocessError::EmptyImage { .. })
        ));
        let float = DynamicImage::ImageRgb32F(image::Rgb32FImage::new(2, 2));
        assert!(matches!(
            blip().preprocess_image(&float),
            Err(PreprocessError::UnsupportedPixelFormat(_))
        ));
    }

    #[test]
    fn no_rgb_conversion_rejects_grey() {
        let mut config = PreprocessorConfig::instructblip();
        config.do_convert_rgb = false;
        let grey = DynamicImage::ImageLuma8(image::GrayImage::new(3, 3));
        assert!(matches!(
            ImageProcessor::new(config).preprocess_image(&grey),
            Err(PreprocessError::NotRgb(_))
        ));
    }

    #[test]
    fn batch_errors_name_the_image() {
        assert!(matches!(
            blip().preprocess_batch(&[]),
            Err(PreprocessError::EmptyBatch)
        ));
        let ok = [7u8; 5 * 4 * 3];
        let inputs = [
            ImageInput::Rgb {
                width: 5,
                height: 4,
                data: &ok,
            },
            ImageInput::Rgb {
                width: 5,
                height: 4,
                data: &ok[1..],
            },
        ];
        assert!(matches!(
            blip().preprocess_batch(&inputs),
            Err(PreprocessError::InBatch { index: 1, .. })
        ));
        let mut config = PreprocessorConfig::llava_1_5();
        config.center_crop = None;
        config.resize = Some(ResizeTarget::ShortestEdge {
            shortest: 4,
            longest: None,
        });
        let wide = [7u8; 8 * 4 * 3];
        let inputs = [
            ImageInput::Rgb {
                width: 5,
                height: 4,
                data: &ok,
            },
            ImageInput::Rgb {
                width: 8,
                height: 4,
                data: &wide,
            },
        ];
        assert!(matches!(
            ImageProcessor::new(config).preprocess_batch(&inputs),
            Err(PreprocessError::BatchSizeMismatch { index: 1, .. })
        ));
    }

    #[test]
    fn output_size_and_torchvision_resize_agree_with_the_pipeline() {
        let p =
            ImageProcessor::new(PreprocessorConfig::llava_1_5()).with_options(ProcessorOptions {
                pad_to_square: PadToSquare::Always,
                ..Default::default()
            });
        assert_eq!(p.output_size(333, 500), (336, 336));
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 128]));
        let pv = p.pixel_values(&img).unwrap();
        assert_eq!(
            (pv.height, pv.width, pv.data.len()),
            (336, 336, 3 * 336 * 336)
        );
        let tv = resize_torchvision(&img, 3, 9).unwrap();
        assert_eq!(tv.dimensions(), (3, 9));
        assert!(resize_torchvision(&img, 0, 9).is_err());
        let mut huge = PreprocessorConfig::instructblip();
        huge.resize = Some(ResizeTarget::Exact {
            height: 1 << 20,
            width: 1 << 20,
        });
        assert!(matches!(
            ImageProcessor::new(huge).pixel_values(&img),
            Err(PreprocessError::TooLarge { .. })
        ));
    }
}
