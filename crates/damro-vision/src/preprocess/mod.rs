//! Image preprocessing equal to the HF processors of LLaVA-1.5 (CLIP) and
//! InstructBLIP (BLIP), driven by `preprocessor_config.json`.
//!
//! Tiny pixel differences flip model outputs, so every step reproduces a
//! reference exactly rather than approximately:
//! - [`pil_bicubic`]: a port of Pillow's bicubic `ImagingResample`
//!   (`Resample.c`), bit for bit on 8-bit RGB;
//! - [`convert`]: RGB conversion of RGBA / LA / grey / palette / 16-bit
//!   input as PIL and HF transformers 5.23's `convert_to_rgb` do it;
//! - [`transforms`]: HF's output-size rule, pad-to-square, centre crop,
//!   and the rescale/normalise arithmetic of both HF backends;
//! - [`config`]: the config file and its validated form;
//! - [`processor`]: [`ImageProcessor`], the pipeline and its entry points;
//! - [`anyres`]: LLaVA-NeXT's tiling processor (transformers 4.43).
//!
//! ```no_run
//! use damro_vision::preprocess::{ImageProcessor, PreprocessorConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let processor = ImageProcessor::new(PreprocessorConfig::llava_1_5());
//! let pixel_values = processor.preprocess_path("cat.png")?; // [1, 3, 336, 336]
//! # Ok(()) }
//! ```

use std::path::PathBuf;

pub mod anyres;
pub mod config;
pub mod convert;
pub mod pil_bicubic;
pub mod processor;
pub mod transforms;

pub use anyres::{AnyResPixels, LlavaNextImageProcessor, LlavaNextPreprocessorConfig};
pub use config::{
    CropSize, Normalize, PreprocessorConfig, PreprocessorConfigFile, ProcessorKind, ResizeTarget,
};
pub use convert::{AlphaMode, PngHeader, to_rgb8};
pub use pil_bicubic::{PillowVersion, resize_bicubic, resize_bicubic_as};
pub use processor::{
    ImageInput, ImageProcessor, PadToSquare, PixelValues, ProcessorOptions, Resampler,
    resize_torchvision,
};

/// Errors of the preprocessing module.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's error, or what was looked for.
        message: String,
    },
    /// An image could not be decoded.
    #[error("cannot decode image {what}: {source}")]
    Decode {
        /// The image: its path, or `<memory>` for encoded bytes.
        what: String,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// The path is not a regular file (a directory, a device such as
    /// `/dev/zero`, a pipe).
    #[error("cannot read {path} as an image: it is not a regular file")]
    NotAFile {
        /// The path given as an image.
        path: PathBuf,
    },
    /// The file is larger than any image this crate reads.
    #[error("{path} is {bytes} bytes, more than the {limit}-byte limit for an image file")]
    FileTooLarge {
        /// The image file.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
        /// The largest size read ([`processor::MAX_IMAGE_FILE_BYTES`]).
        limit: u64,
    },
    /// The image's header claims more pixels than the decompression-bomb
    /// limit (checked before decoding).
    #[error(
        "image {what} claims {width}x{height} pixels, more than the limit of {limit} (Pillow's decompression-bomb threshold)"
    )]
    DecompressionBomb {
        /// The image: its path, or `<memory>` for encoded bytes.
        what: String,
        /// Width its header claims.
        width: u32,
        /// Height its header claims.
        height: u32,
        /// The most pixels decoded ([`processor::MAX_DECODED_PIXELS`]).
        limit: u64,
    },
    /// An image or a requested size with a zero side.
    #[error("image size {width}x{height} has a zero side")]
    EmptyImage {
        /// The width asked for or found.
        width: u32,
        /// The height asked for or found.
        height: u32,
    },
    /// A step would produce more than [`processor::MAX_PIXELS`] pixels.
    #[error("image size {width}x{height} is too large")]
    TooLarge {
        /// The width the step would produce.
        width: u32,
        /// The height the step would produce.
        height: u32,
    },
    /// A pixel format PIL never produces from an image file.
    #[error("unsupported pixel format {0}")]
    UnsupportedPixelFormat(String),
    /// `do_convert_rgb` is off and the image is not 8-bit RGB.
    #[error("do_convert_rgb is false but the image is {0}, not 8-bit RGB")]
    NotRgb(String),
    /// A raw RGB buffer of the wrong length.
    #[error("RGB buffer for {width}x{height} needs {expected} bytes, got {actual}")]
    RgbBufferSize {
        /// The width given with the buffer.
        width: u32,
        /// The height given with the buffer.
        height: u32,
        /// `width * height * 3`.
        expected: usize,
        /// The buffer's length in bytes.
        actual: usize,
    },
    /// One image of a batch failed.
    #[error("batch image {index}: {source}")]
    InBatch {
        /// The failing image's position in the batch (from 0).
        index: usize,
        /// Why it failed.
        #[source]
        source: Box<PreprocessError>,
    },
    /// Batch images that come out at different sizes.
    #[error("batch image {index} is {actual:?} (height, width) but image 0 is {expected:?}")]
    BatchSizeMismatch {
        /// The image's position in the batch (from 0).
        index: usize,
        /// `(height, width)` of image 0.
        expected: (usize, usize),
        /// `(height, width)` of this image.
        actual: (usize, usize),
    },
    /// A batch with no images.
    #[error("empty batch")]
    EmptyBatch,
    /// The config file is not valid JSON of the expected shape.
    #[error("cannot parse preprocessor config: {0}")]
    ConfigParse(String),
    /// A config field with a bad value.
    #[error("preprocessor config field `{field}`: {message}")]
    InvalidConfig {
        /// The key in `preprocessor_config.json`.
        field: &'static str,
        /// What is wrong with its value and what was expected.
        message: String,
    },
    /// A problem in a config file, with the file named.
    #[error("{}: {error}", path.display())]
    InConfigFile {
        /// The config file.
        path: PathBuf,
        /// What is wrong in it.
        error: Box<PreprocessError>,
    },
    /// An `image_processor_type` other than CLIP, LLaVA or BLIP.
    #[error("unsupported image_processor_type {0}")]
    UnsupportedProcessor(String),
    /// A `resample` other than bicubic (3).
    #[error("unsupported resample {0}: only bicubic (3) is implemented")]
    UnsupportedResample(u32),
    /// libtorch failed (torchvision-mode resize, tensor creation).
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result of the preprocessing module.
pub type Result<T> = std::result::Result<T, PreprocessError>;
