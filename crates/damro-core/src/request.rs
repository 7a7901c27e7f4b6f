//! What a caller asks for: an image and a prompt ([`Request`]).

use std::path::PathBuf;

use damro_llm::PromptTemplate;
use damro_vision::preprocess::{ImageInput, ImageProcessor};
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
                let size = t.size();
                if size.len() != 4 || size[0] != 1 || size[1] != 3 {
                    return Err(Error::invalid(
                        "pixel values",
                        format!("expected [1, 3, H, W], got {size:?}"),
                    ));
                }
                if !t.is_floating_point() {
                    return Err(Error::invalid(
                        "pixel values",
                        format!("expected a float tensor, got {:?}", t.kind()),
                    ));
                }
                t.shallow_clone()
            }
        };
        Ok(pixels.f_to_device_(device, kind, false, false)?)
    }
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
