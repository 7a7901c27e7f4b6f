//! What a caller asks for: an image and a prompt ([`Request`]).

use std::path::PathBuf;

use damro_llm::PromptTemplate;
use damro_vision::preprocess::{AnyResPixels, ImageInput, ImageProcessor, LlavaNextImageProcessor};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Where a request's image comes from.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImageSource {
    /// An image file (PNG or JPEG), preprocessed by the model's processor.
    File(PathBuf),
    /// A decoded image, preprocessed by the model's processor.
    Image(image::DynamicImage),
    /// Already-preprocessed pixel values, in the layout the model's
    /// processor produces (`[1, 3, H, W]` for single-image models; any
    /// device and float dtype, moved to the model's).
    Pixels(Tensor),
    /// Already-preprocessed tiles of a tiling ("anyres") model such as
    /// LLaVA-NeXT, with the original image size its packing needs (what
    /// [`LlavaNextImageProcessor`] returns; see `From<AnyResPixels>`).
    Tiles {
        /// `[tiles, 3, H, W]`, the base tile first, then the grid tiles row
        /// by row; any device and float dtype, moved to the model's.
        pixel_values: Tensor,
        /// The original `(height, width)` in pixels (HF `image_sizes`).
        image_size: (u32, u32),
    },
}

impl From<AnyResPixels> for ImageSource {
    fn from(pixels: AnyResPixels) -> Self {
        ImageSource::Tiles {
            pixel_values: pixels.pixel_values,
            image_size: pixels.image_size,
        }
    }
}

/// Checks that `t` is a float tensor `[n, 3, H, W]` with `n` allowed by
/// `single` (exactly 1) or any positive count.
fn check_pixels(t: &Tensor, single: bool) -> Result<()> {
    let size = t.size();
    let expected = if single {
        "[1, 3, H, W]"
    } else {
        "[tiles, 3, H, W]"
    };
    let count_ok = size
        .first()
        .is_some_and(|&n| if single { n == 1 } else { n >= 1 });
    if size.len() != 4 || !count_ok || size[1] != 3 {
        return Err(Error::invalid(
            "pixel values",
            format!("expected {expected}, got {size:?}"),
        ));
    }
    if !t.is_floating_point() {
        return Err(Error::invalid(
            "pixel values",
            format!("expected a float tensor, got {:?}", t.kind()),
        ));
    }
    Ok(())
}

impl ImageSource {
    /// Pixel values `[1, 3, H, W]` of a single-image model: a file or
    /// decoded image run through `processor`, or given pixel values checked
    /// for that shape; on `device` in `kind`.
    ///
    /// # Shapes
    /// → `[1, 3, H, W]`
    ///
    /// # Errors
    /// Preprocessing errors (unreadable or oversized image) and
    /// [`Error::Invalid`] for pixel values of another shape.
    pub fn pixel_values(
        &self,
        processor: &ImageProcessor,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let pixels = match self {
            ImageSource::File(path) => processor.preprocess(ImageInput::Path(path))?,
            ImageSource::Image(img) => processor.preprocess(ImageInput::Image(img))?,
            ImageSource::Pixels(t) => {
                check_pixels(t, true)?;
                t.shallow_clone()
            }
            ImageSource::Tiles { .. } => {
                return Err(Error::invalid(
                    "image source",
                    "preprocessed tiles are the input of a tiling model such as LLaVA-NeXT; this model takes one image: a file, a decoded image or pixel values [1, 3, H, W]",
                ));
            }
        };
        Ok(pixels.f_to_device_(device, kind, false, false)?)
    }

    /// Tile pixel values `[tiles, 3, H, W]` and the original
    /// `(height, width)` of a tiling model: a file or decoded image run
    /// through `processor`, or given tiles checked for that layout; on
    /// `device` in `kind`.
    ///
    /// # Shapes
    /// → `[tiles, 3, H, W]`, the base tile first
    ///
    /// # Errors
    /// Preprocessing errors (unreadable or oversized image);
    /// [`Error::Invalid`] for tiles of another shape, and for
    /// [`ImageSource::Pixels`], which lacks the original image size.
    pub fn tile_pixel_values(
        &self,
        processor: &LlavaNextImageProcessor,
        kind: Kind,
        device: Device,
    ) -> Result<(Tensor, (u32, u32))> {
        let (pixels, size) = match self {
            ImageSource::File(path) => split(processor.preprocess(ImageInput::Path(path))?),
            ImageSource::Image(img) => split(processor.preprocess(ImageInput::Image(img))?),
            ImageSource::Tiles {
                pixel_values,
                image_size,
            } => {
                check_pixels(pixel_values, false)?;
                (pixel_values.shallow_clone(), *image_size)
            }
            ImageSource::Pixels(_) => {
                return Err(Error::invalid(
                    "image source",
                    "a tiling model such as LLaVA-NeXT needs the original image size with its preprocessed tiles: use ImageSource::Tiles (or a file or decoded image)",
                ));
            }
        };
        Ok((pixels.f_to_device_(device, kind, false, false)?, size))
    }
}

fn split(pixels: AnyResPixels) -> (Tensor, (u32, u32)) {
    (pixels.pixel_values, pixels.image_size)
}

/// One prompt about one image.
#[derive(Debug)]
#[non_exhaustive]
pub struct Request {
    /// The image.
    pub image: ImageSource,
    /// The question (or full text, with [`PromptTemplate::Raw`]).
    pub question: String,
    /// How the question becomes the model's prompt.
    pub template: PromptTemplate,
}

impl Request {
    /// A request about `image`.
    pub fn new(image: ImageSource, question: impl Into<String>, template: PromptTemplate) -> Self {
        Self {
            image,
            question: question.into(),
            template,
        }
    }
}
