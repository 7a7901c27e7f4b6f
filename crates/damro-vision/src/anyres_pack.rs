//! Packing LLaVA-NeXT's per-tile tokens into the full branch's image tokens
//! (HF `LlavaNextForConditionalGeneration.pack_image_features`,
//! transformers 4.43, as the DAMRO authors ran it).
//!
//! The base tile's tokens come first, with no newline. The grid tiles'
//! tokens are laid out as one feature map, cropped back to the image's
//! aspect ratio ([`unpadded_window`], 4.43's float32 arithmetic) and read row
//! by row with `image_newline` after every row.
//!
//! Transformers 4.43 reads the grid shape the wrong way round: with `R` rows
//! and `C` columns of tiles it lays the raster-ordered tiles out as `C` rows
//! of `R` tiles ([`GridLayout::Transformers443`], the default, since the
//! authors' numbers come from it). 4.44 fixed it ([`GridLayout::Corrected`]).
//! Both agree on square grids.
//!
//! A [`PackPlan`] is the whole packing as an index map, so the tokens are
//! gathered in one `index_select`.

use tch::{Kind, Tensor};

use crate::{Error, Result};

/// How the grid tiles are laid out in the feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GridLayout {
    /// transformers 4.43: rows and columns of tiles swapped for non-square
    /// grids (`view(C, R, …)`). What the DAMRO authors ran.
    #[default]
    Transformers443,
    /// transformers 4.44 and later: `view(R, C, …)`.
    Corrected,
}

/// A window of a feature map: rows `top..top + rows`, columns
/// `left..left + cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First row of the window.
    pub top: i64,
    /// First column of the window.
    pub left: i64,
    /// Number of rows.
    pub rows: i64,
    /// Number of columns.
    pub cols: i64,
}

/// 4.43's `unpad_image` on a feature map of `map = (height, width)` for an
/// image of `image = (height, width)`: the part of the map the image (not
/// its black padding) covers.
///
/// The image size arrives as int64 tensors, so: the aspect ratios compare
/// in float32 (`f32(w) / f32(h)` against the map's float64 ratio rounded to
/// float32); the scale is torch's `__rtruediv__`, `reciprocal(f32(orig)) *
/// cur`; the new side is `int(f32(orig_other) * scale)` (truncated); and
/// the crop `[pad : cur - pad]` with `pad = (cur - new) // 2` keeps one
/// extra row or column when `cur - new` is odd.
pub fn unpadded_window(image: (u32, u32), map: (i64, i64)) -> Window {
    let (oh, ow) = (image.0 as f32, image.1 as f32);
    let (ch, cw) = map;
    let full = Window {
        top: 0,
        left: 0,
        rows: ch,
        cols: cw,
    };
    if ow / oh > (cw as f64 / ch as f64) as f32 {
        let scale = (1.0f32 / ow) * cw as f32;
        let new = (oh * scale) as i64;
        let (start, len) = python_slice(ch, (ch - new).div_euclid(2));
        Window {
            top: start,
            rows: len,
            ..full
        }
    } else {
        let scale = (1.0f32 / oh) * ch as f32;
        let new = (ow * scale) as i64;
        let (start, len) = python_slice(cw, (cw - new).div_euclid(2));
        Window {
            left: start,
            cols: len,
            ..full
        }
    }
}

/// `range(n)[pad : n - pad]` as (start, length), with Python's rules for
/// negative and out-of-range bounds.
fn python_slice(n: i64, pad: i64) -> (i64, i64) {
    let clamp = |i: i64| if i < 0 { (i + n).max(0) } else { i.min(n) };
    let (start, stop) = (clamp(pad), clamp(n - pad));
    (start, (stop - start).max(0))
}

/// The full branch's image tokens of one image, as indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackPlan {
    /// Tiles per side of the grid, `(rows, cols)` (the intended reading).
    pub grid: (i64, i64),
    /// Patches per tile side (24 for CLIP ViT-L/14 at 336).
    pub side: i64,
    /// The layout used.
    pub layout: GridLayout,
    /// The feature map's `(height, width)` in patches, after the layout.
    pub map: (i64, i64),
    /// The part of the map that is kept.
    pub window: Window,
}

impl PackPlan {
    /// The plan for an image of `image = (height, width)` whose grid has
    /// `grid = (rows, cols)` tiles of `side x side` patches.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty image or grid, or a zero side.
    pub fn new(image: (u32, u32), grid: (u32, u32), side: i64, layout: GridLayout) -> Result<Self> {
        if image.0 == 0 || image.1 == 0 || grid.0 == 0 || grid.1 == 0 || side <= 0 {
            return Err(Error::input(
                "LLaVA-NeXT pack plan",
                "a non-empty image, grid and tile",
                (image, grid, side),
            ));
        }
        let (rows, cols) = (i64::from(grid.0), i64::from(grid.1));
        let (map_rows, map_cols) = match layout {
            GridLayout::Transformers443 => (cols, rows),
            GridLayout::Corrected => (rows, cols),
        };
        let map = (map_rows * side, map_cols * side);
        Ok(Self {
            grid: (rows, cols),
            side,
            layout,
            map,
            window: unpadded_window(image, map),
        })
    }

    /// Tiles the plan reads: the base tile and the grid.
    pub fn num_tiles(&self) -> i64 {
        1 + self.grid.0 * self.grid.1
    }

    /// Tokens per tile (`side²`).
    pub fn tokens_per_tile(&self) -> i64 {
        self.side * self.side
    }

    /// Image tokens of the full branch: the base tile's, then each kept
    /// row and its newline.
    pub fn num_tokens(&self) -> i64 {
        self.tokens_per_tile() + self.window.rows * (self.window.cols + 1)
    }

    /// Entry `i` is `tile * side² + patch` for a tile token (tile 0 is the
    /// base tile, patches row-major) or `-1` for `image_newline`.
    pub fn token_index(&self) -> Vec<i64> {
        let per_tile = self.tokens_per_tile();
        let tiles_per_map_row = self.map.1 / self.side;
        let mut out = Vec::with_capacity(self.num_tokens() as usize);
        out.extend(0..per_tile);
        let w = self.window;
        for y in w.top..w.top + w.rows {
            for x in w.left..w.left + w.cols {
                let tile = 1 + (y / self.side) * tiles_per_map_row + x / self.side;
                out.push(tile * per_tile + (y % self.side) * self.side + x % self.side);
            }
            out.push(-1);
        }
        out
    }

    /// Packs per-tile tokens with `newline` after every kept row.
    ///
    /// # Shapes
    /// tokens `[tiles, side², hidden]`, newline `[hidden]` → `[tokens, hidden]`
    ///
    /// # Errors
    /// [`Error::Input`] when the tile count or tokens per tile do not match
    /// the plan, or the widths differ.
    pub fn pack(&self, tokens: &Tensor, newline: &Tensor) -> Result<Tensor> {
        let (tiles, per_tile, hidden) = tokens.size3()?;
        if tiles != self.num_tiles() || per_tile != self.tokens_per_tile() {
            return Err(Error::input(
                "LLaVA-NeXT tile tokens",
                format!(
                    "[{}, {}, hidden] for a {}x{} grid",
                    self.num_tiles(),
                    self.tokens_per_tile(),
                    self.grid.0,
                    self.grid.1
                ),
                tokens.size(),
            ));
        }
        if newline.size() != [hidden] {
            return Err(Error::input(
                "image_newline",
                format!("[{hidden}]"),
                newline.size(),
            ));
        }
        let newline_row = tiles * per_tile;
        let index: Vec<i64> = self
            .token_index()
            .into_iter()
            .map(|i| if i < 0 { newline_row } else { i })
            .collect();
        let table = Tensor::f_cat(
            &[
                tokens.f_reshape([newline_row, hidden])?,
                newline.f_to_kind(tokens.kind())?.f_unsqueeze(0)?,
            ],
            0,
        )?;
        let index = Tensor::f_from_slice(&index)?
            .f_to_kind(Kind::Int64)?
            .f_to_device(tokens.device())?;
        Ok(table.f_index_select(0, &index)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_image_in_both_layouts() {
        // 500x333 (w x h), one row of two tiles of 24x24 patches.
        let old = PackPlan::new((333, 500), (1, 2), 24, GridLayout::Transformers443).unwrap();
        assert_eq!(old.map, (48, 24));
        // new height int(333 * 24/500) = 15, pad 16: 16 rows kept (one extra)
        assert_eq!(
            old.window,
            Window {
                top: 16,
                left: 0,
                rows: 16,
                cols: 24
            }
        );
        assert_eq!(old.num_tokens(), 576 + 16 * 25);
        let new = PackPlan::new((333, 500), (1, 2), 24, GridLayout::Corrected).unwrap();
        assert_eq!((new.window.left, new.window.cols), (6, 36));
        assert_eq!(new.num_tokens(), 576 + 24 * 37);
        // first kept token of the corrected map: row 0, column 6 of tile 1
        let index = new.token_index();
        assert_eq!(index[576], 576 + 6);
        assert_eq!(index[576 + 36], -1);
        // 4.43: map row 16 is row 16 of the first map-row tile (tile 1)
        assert_eq!(old.token_index()[576], 576 + 16 * 24);
    }

    #[test]
    fn python_slices() {
        assert_eq!(python_slice(48, 16), (16, 16));
        assert_eq!(python_slice(24, 0), (0, 24));
        assert_eq!(python_slice(24, 12), (12, 0));
        // range(4)[-1:5] == [3]
        assert_eq!(python_slice(4, -1), (3, 1));
    }

    #[test]
    fn pack_checks_shapes() {
        let plan = PackPlan::new((10, 10), (1, 1), 2, GridLayout::default()).unwrap();
        let tokens = Tensor::arange(2 * 4 * 3, (Kind::Float, tch::Device::Cpu)).view([2, 4, 3]);
        let newline = Tensor::from_slice(&[-1f32, -2.0, -3.0]);
        let packed = plan.pack(&tokens, &newline).unwrap();
        assert_eq!(packed.size(), [4 + 2 * 3, 3]);
        assert_eq!(f64::try_from(packed.get(6).get(0)).unwrap(), -1.0);
        assert!(plan.pack(&tokens.narrow(0, 0, 1), &newline).is_err());
        assert!(plan.pack(&tokens, &newline.narrow(0, 0, 2)).is_err());
        assert!(PackPlan::new((0, 10), (1, 1), 2, GridLayout::default()).is_err());
    }
}
