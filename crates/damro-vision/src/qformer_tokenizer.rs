//! The Q-Former's BERT tokenizer (`qformer_tokenizer/tokenizer.json` of an
//! InstructBLIP model directory), producing the instruction-text input of
//! [`crate::QFormer`] as HF's `InstructBlipProcessor` does: `[CLS] … [SEP]`
//! with the file's post-processor, no truncation, batches right-padded with
//! `[PAD]` and a 0/1 attention mask.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Token ids and attention mask of the Q-Former's instruction text.
#[derive(Debug)]
pub struct QFormerInput {
    /// `[batch, tokens]` int64.
    pub input_ids: Tensor,
    /// `[batch, tokens]` int64, 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

impl QFormerInput {
    /// Builds the input from id rows (right-padded with `pad_id` to the
    /// longest row).
    ///
    /// # Shapes
    /// `rows.len()` rows → `[rows, longest]`
    pub fn from_ids(rows: &[Vec<i64>], pad_id: i64, device: Device) -> Result<Self> {
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() {
            return Err(Error::input("Q-Former text batch", "at least one row", 0));
        }
        let mut ids = Vec::with_capacity(rows.len() * longest);
        let mut mask = Vec::with_capacity(rows.len() * longest);
        for row in rows {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(pad_id, longest - row.len()));
            mask.extend(std::iter::repeat_n(1i64, row.len()));
            mask.extend(std::iter::repeat_n(0i64, longest - row.len()));
        }
        let shape = [rows.len() as i64, longest as i64];
        let to = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?
                .f_view(shape)?
                .f_to_device(device)?)
        };
        Ok(Self {
            input_ids: to(&ids)?,
            attention_mask: to(&mask)?,
        })
    }

    /// Number of rows.
    pub fn batch_size(&self) -> i64 {
        self.input_ids.size()[0]
    }

    /// Moves both tensors to `device`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        Ok(Self {
            input_ids: self.input_ids.f_to_device(device)?,
            attention_mask: self.attention_mask.f_to_device(device)?,
        })
    }
}

/// The Q-Former's WordPiece tokenizer.
#[derive(Debug, Clone)]
pub struct QFormerTokenizer {
    tokenizer: Tokenizer,
    pad_id: i64,
    path: PathBuf,
}

impl QFormerTokenizer {
    /// Reads `dir/qformer_tokenizer/tokenizer.json`.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(
            dir.as_ref()
                .join("qformer_tokenizer")
                .join("tokenizer.json"),
        )
    }

    /// Reads a `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let fail = |reason: String| Error::Tokenizer {
            path: path.clone(),
            reason,
        };
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| fail(e.to_string()))?;
        // The processor neither truncates nor pads a single text; padding of
        // batches is done here, to the longest row.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| fail(e.to_string()))?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .ok_or_else(|| fail("the vocabulary has no [PAD] token".to_string()))?;
        Ok(Self {
            tokenizer,
            pad_id: i64::from(pad_id),
            path,
        })
    }

    /// The id of `[PAD]`.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Token ids of one text, with the special tokens (`[CLS] … [SEP]`).
    pub fn ids(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Encodes one text.
    ///
    /// # Shapes
    /// → `[1, tokens]`
    pub fn encode(&self, text: &str, device: Device) -> Result<QFormerInput> {
        self.encode_batch(&[text], device)
    }

    /// Encodes a batch, right-padded to the longest text.
    ///
    /// # Shapes
    /// `texts.len()` texts → `[texts, longest]`
    pub fn encode_batch(&self, texts: &[&str], device: Device) -> Result<QFormerInput> {
        let rows = texts
            .iter()
            .map(|t| self.ids(t))
            .collect::<Result<Vec<_>>>()?;
        QFormerInput::from_ids(&rows, self.pad_id, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn rows_are_right_padded() {
        let input = QFormerInput::from_ids(&[vec![2, 5, 3], vec![2, 3]], 0, Device::Cpu).unwrap();
        assert_eq!(input.input_ids.size(), [2, 3]);
        let ids: Vec<i64> = input.input_ids.flatten(0, -1).try_into().unwrap();
        let mask: Vec<i64> = input.attention_mask.flatten(0, -1).try_into().unwrap();
        assert_eq!(ids, [2, 5, 3, 2, 3, 0]);
        assert_eq!(mask, [1, 1, 1, 1, 1, 0]);
        assert_eq!(input.input_ids.kind(), Kind::Int64);
    }
}
