//! Conversion of decoded images to 8-bit RGB, equal to what PIL and the HF
//! processors do with the same file.
//!
//! HF transformers 5.23's `convert_to_rgb` (`image_transforms.py`), used by
//! both processor backends for PIL input: an image with an alpha band or a
//! `transparency` entry is converted to `RGBA` and alpha-composited onto
//! opaque white (`PIL.Image.alpha_composite`), anything else goes through
//! `Image.convert("RGB")`. transformers 4.43 (the DAMRO authors' version)
//! and the original LLaVA code call `convert("RGB")` directly, which drops
//! alpha: [`AlphaMode::Discard`].
//!
//! How PIL opens PNG files, which decides the values (checked on Pillow 13):
//! - 16-bit RGB / RGBA / grey+alpha files keep the high byte of each
//!   sample (grey+alpha opens as `RGBA`);
//! - 16-bit greyscale opens as `I;16`, and `convert("RGB")` clamps each
//!   value to 255 (it does not scale);
//! - a `tRNS` chunk becomes `info["transparency"]`, compared with the
//!   pixel values PIL holds: for 16-bit RGB with the 8-bit high bytes, for
//!   2- and 4-bit greyscale with the values scaled to 8 bits (so only a
//!   transparent 0 ever matches), otherwise as the PNG decoder does.
//!
//! The `image` crate applies `tRNS` the PNG way, so for the two odd cases
//! the file's header is read with [`PngHeader::sniff`] and PIL's rule is
//! applied instead.

use image::{DynamicImage, RgbImage};

use super::{PreprocessError, Result};

/// What happens to transparent pixels when an image becomes RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaMode {
    /// Composite onto opaque white, as HF transformers 5.x's
    /// `convert_to_rgb` does.
    CompositeOnWhite,
    /// Drop the alpha band, as `PIL.Image.convert("RGB")` does: what
    /// transformers 4.43's `convert_to_rgb` (the DAMRO authors' version) and
    /// the original LLaVA code do. The default.
    #[default]
    Discard,
}

/// The parts of a PNG header that change how PIL reads the pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngHeader {
    /// Bits per sample (1, 2, 4, 8 or 16).
    pub bit_depth: u8,
    /// PNG colour type: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA.
    pub color_type: u8,
    /// The raw `tRNS` chunk, if any.
    pub trns: Option<Vec<u8>>,
}

impl PngHeader {
    /// Reads the header chunks of a PNG file (up to the first `IDAT`).
    /// Returns `None` for anything that is not a well-formed PNG start; the
    /// decoder then reports the real error, if any.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        let mut rest = bytes.strip_prefix(SIGNATURE)?;
        let mut header: Option<Self> = None;
        while rest.len() >= 12 {
            let len = u32::from_be_bytes(rest[0..4].try_into().ok()?) as usize;
            let kind = &rest[4..8];
            let body = rest.get(8..8usize.checked_add(len)?)?;
            match kind {
                b"IHDR" if body.len() >= 13 => {
                    header = Some(Self {
                        bit_depth: body[8],
                        color_type: body[9],
                        trns: None,
                    });
                }
                b"tRNS" => header.as_mut()?.trns = Some(body.to_vec()),
                b"IDAT" | b"IEND" => break,
                _ => {}
            }
            rest = rest.get(12 + len..)?;
        }
        header
    }

    /// The `tRNS` value of a greyscale file.
    fn grey_key(&self) -> Option<u16> {
        let t = self.trns.as_deref()?;
        Some(u16::from_be_bytes([*t.first()?, *t.get(1)?]))
    }

    /// The `tRNS` colour of an RGB file.
    fn rgb_key(&self) -> Option<[u16; 3]> {
        let t = self.trns.as_deref()?;
        if t.len() < 6 {
            return None;
        }
        Some([
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
            u16::from_be_bytes([t[4], t[5]]),
        ])
    }
}

/// PIL's `alpha_composite` of one 8-bit sample with alpha `a` over opaque
/// white (Pillow's integer formula reduces to this exactly; checked on all
/// 65536 sample/alpha pairs).
fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    let w = c * a + 255 * (255 - a) + 128;
    ((w + (w >> 8)) >> 8) as u8
}

fn hi(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Builds the RGB image from per-pixel `[r, g, b, a]` samples.
fn from_rgba(
    width: u32,
    height: u32,
    mode: AlphaMode,
    pixels: impl Iterator<Item = [u8; 4]>,
) -> Result<RgbImage> {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for [r, g, b, a] in pixels {
        match mode {
            AlphaMode::CompositeOnWhite => {
                data.extend([over_white(r, a), over_white(g, a), over_white(b, a)])
            }
            AlphaMode::Discard => data.extend([r, g, b]),
        }
    }
    RgbImage::from_raw(width, height, data).ok_or(PreprocessError::EmptyImage { width, height })
}

/// Converts a decoded image to 8-bit RGB the way the HF processors (or,
/// with [`AlphaMode::Discard`], `PIL.Image.convert("RGB")`) would from the
/// same file opened with PIL. `png` is the file's header when the image was
/// decoded from PNG bytes; without it, 16-bit grey+alpha is read as a
/// grey+alpha file and transparency keys are taken as decoded.
///
/// # Errors
/// [`PreprocessError::UnsupportedPixelFormat`] for floating-point images
/// (PIL opens no PNG or JPEG as those).
pub fn to_rgb8(image: &DynamicImage, png: Option<&PngHeader>, mode: AlphaMode) -> Result<RgbImage> {
    let (w, h) = (image.width(), image.height());
    let color_type = png.map(|p| p.color_type);
    match image {
        DynamicImage::ImageRgb8(im) => Ok(im.clone()),
        DynamicImage::ImageRgba8(im) => from_rgba(w, h, mode, im.pixels().map(|p| p.0)),
        DynamicImage::ImageLuma8(im) => from_rgba(
            w,
            h,
            mode,
            im.pixels().map(|p| [p.0[0], p.0[0], p.0[0], 255]),
        ),
        DynamicImage::ImageLumaA8(im) => {
            // 2/4-bit grey with tRNS: PIL compares the raw key with the
            // pixel values scaled to 8 bits.
            let low_bit_key = match png {
                Some(p) if p.color_type == 0 && matches!(p.bit_depth, 2 | 4) => p.grey_key(),
                _ => None,
            };
            from_rgba(
                w,
                h,
                mode,
                im.pixels().map(|p| {
                    let [l, a] = p.0;
                    let a = match low_bit_key {
                        Some(key) => {
                            if u16::from(l) == key {
                                0
                            } else {
                                255
                            }
                        }
                        None => a,
                    };
                    [l, l, l, a]
                }),
            )
        }
        DynamicImage::ImageLuma16(im) => from_rgba(
            w,
            h,
            mode,
            im.pixels().map(|p| {
                let l = p.0[0].min(255) as u8;
                [l, l, l, 255]
            }),
        ),
        DynamicImage::ImageLumaA16(im) => {
            // Grey16 with tRNS opens as `I;16` (values clamped, key
            // compared on the 16-bit values, as decoded); a real grey+alpha
            // file opens as `RGBA` from the high bytes.
            let i16_mode = color_type == Some(0);
            from_rgba(
                w,
                h,
                mode,
                im.pixels().map(|p| {
                    let [l, a] = p.0;
                    if i16_mode {
                        let l = l.min(255) as u8;
                        [l, l, l, if a == 0 { 0 } else { 255 }]
                    } else {
                        [hi(l), hi(l), hi(l), hi(a)]
                    }
                }),
            )
        }
        DynamicImage::ImageRgb16(im) => from_rgba(
            w,
            h,
            mode,
            im.pixels()
                .map(|p| [hi(p.0[0]), hi(p.0[1]), hi(p.0[2]), 255]),
        ),
        DynamicImage::ImageRgba16(im) => {
            // RGB16 with tRNS: PIL compares the 16-bit key with the 8-bit
            // high bytes it keeps.
            let key = match png {
                Some(p) if p.color_type == 2 => p.rgb_key(),
                _ => None,
            };
            from_rgba(
                w,
                h,
                mode,
                im.pixels().map(|p| {
                    let [r, g, b, a] = p.0;
                    let rgb = [hi(r), hi(g), hi(b)];
                    let a = match key {
                        Some(k) => {
                            if k == rgb.map(u16::from) {
                                0
                            } else {
                                255
                            }
                        }
                        None => hi(a),
                    };
                    [rgb[0], rgb[1], rgb[2], a]
                }),
            )
        }
        other => Err(PreprocessError::UnsupportedPixelFormat(format!(
            "{:?}",
            other.color()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_white_edges() {
        assert_eq!(over_white(17, 0), 255);
        assert_eq!(over_white(17, 255), 17);
        // Pillow: (0, 128) over white gives 127.
        assert_eq!(over_white(0, 128), 127);
    }

    #[test]
    fn sniff_reads_ihdr_and_trns() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let chunk = |kind: &[u8], body: &[u8]| {
            let mut c = (body.len() as u32).to_be_bytes().to_vec();
            c.extend_from_slice(kind);
            c.extend_from_slice(body);
            c.extend_from_slice(&[0, 0, 0, 0]);
            c
        };
        png.extend(chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0]));
        png.extend(chunk(b"tRNS", &[0, 3]));
        png.extend(chunk(b"IDAT", &[]));
        let h = PngHeader::sniff(&png).unwrap();
        assert_eq!((h.bit_depth, h.color_type, h.grey_key()), (4, 0, Some(3)));
        assert_eq!(PngHeader::sniff(b"GIF89a"), None);
        assert_eq!(PngHeader::sniff(&png[..20]), None);
    }
}
