//! [`damro_llm::Llama`] as a [`LanguageModel`], and [`damro_llm::KvCache`]
//! as a [`BranchCache`]: what the built-in adapters use, and what an outside
//! LLaMA-family model can use as it is.

use damro_llm::{AttentionCapture, Input, KvCache, Llama, LogitsAt};
use tch::{Device, Tensor};

use crate::{BranchCache, Error, LanguageModel, Result, Rows};

impl BranchCache for KvCache {
    fn len(&self) -> i64 {
        KvCache::len(self)
    }

    fn stack(caches: &[&Self], capacity: i64) -> Result<Self> {
        Ok(KvCache::stack(caches, capacity)?)
    }
}

impl LanguageModel for Llama {
    type Cache = KvCache;
    type RowState = ();

    fn device(&self) -> Device {
        Llama::device(self)
    }

    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed(&ids.f_unsqueeze(1)?)?)
    }

    fn new_cache(&self, rows: i64, capacity: i64) -> Result<KvCache> {
        Ok(Llama::new_cache(self, rows, capacity)?)
    }

    fn forward(&self, rows: Rows<'_, ()>, cache: &mut KvCache) -> Result<Tensor> {
        let input = llama_input(&rows, cache)?;
        let logits = Llama::forward(self, input, cache, LogitsAt::Last)?;
        Ok(logits.f_squeeze_dim(1)?)
    }

    fn forward_with_attention(
        &self,
        rows: Rows<'_, ()>,
        cache: &mut KvCache,
        capture: &AttentionCapture,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let input = llama_input(&rows, cache)?;
        let (logits, captured) =
            Llama::forward_with_attention(self, input, cache, LogitsAt::Last, capture)?;
        Ok((logits.f_squeeze_dim(1)?, captured.rows))
    }
}

/// The LLaMA input of the loop's rows, checked against the cache.
fn llama_input<'a>(rows: &Rows<'a, ()>, cache: &KvCache) -> Result<Input<'a>> {
    let step = rows.embeds.size().get(1).copied().unwrap_or(0);
    if rows.row_lengths.len() as i64 != cache.batch() {
        return Err(Error::invalid(
            "forward rows",
            format!(
                "{} row lengths for a cache of {} rows",
                rows.row_lengths.len(),
                cache.batch()
            ),
        ));
    }
    let padded = rows.row_lengths.iter().any(|&l| l != step);
    Ok(if padded {
        Input::left_padded(rows.embeds, rows.row_lengths)
    } else {
        Input::new(rows.embeds)
    })
}
