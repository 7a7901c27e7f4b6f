//! [`damro_llm::Llama`] as a [`LanguageModel`], and [`damro_llm::KvCache`]
//! as a [`BranchCache`]: what the built-in adapters use, and what an outside
//! LLaMA-family model can use as it is.

use damro_llm::{Input, KvCache, Llama, LogitsAt};
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
        let input = if padded {
            Input::left_padded(rows.embeds, rows.row_lengths)
        } else {
            Input::new(rows.embeds)
        };
        let logits = Llama::forward(self, input, cache, LogitsAt::Last)?;
        Ok(logits.f_squeeze_dim(1)?)
    }
}
