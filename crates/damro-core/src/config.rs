//! What a generation call is told ([`GenerationConfig`]) and what it
//! returns ([`Generation`], [`TokenEvent`] while streaming).

use damro_llm::AttentionCapture;
use damro_sampler::LogitsProcessors;

use crate::Mode;

/// How many tokens may be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// At most this many new tokens.
    MaxNewTokens(usize),
    /// The reference InstructBLIP's `max_length = L`: `L - 1 - prompt_len`
    /// new tokens (the query tokens do not count; one is kept for the BOS
    /// prepended before decoding).
    MaxLength(usize),
}

impl Limit {
    /// The number of new tokens allowed after a prompt of `prompt_len`
    /// tokens.
    pub fn new_tokens(self, prompt_len: usize) -> usize {
        match self {
            Limit::MaxNewTokens(n) => n,
            Limit::MaxLength(l) => l.saturating_sub(1 + prompt_len),
        }
    }
}

/// How the two branches are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BranchExecution {
    /// One batched forward per step over both branches (default).
    #[default]
    Batched,
    /// Two forwards per step, one per branch, each on its own cache.
    Sequential,
}

/// Everything about one generation call except the requests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerationConfig {
    /// Plain decoding, DAMRO or another contrast view.
    pub mode: Mode,
    /// `None`: greedy (ties to the lowest id); `Some(seed)`: multinomial
    /// sampling from a generator seeded like `torch.manual_seed(seed)`.
    ///
    /// Sampling draws from libtorch's global generator, exactly as
    /// `torch.multinomial` does (that is what makes the draws equal to the
    /// reference's): generations that sample in several threads at once
    /// interleave their draws and are then not reproducible. Sample from
    /// one thread at a time (greedy decoding has no such limit).
    pub seed: Option<u64>,
    /// The token limit.
    pub limit: Limit,
    /// Generation stops when the text contains one of these; the text is cut
    /// before it.
    pub stop_strings: Vec<String>,
    /// Batched or sequential branches (the same tokens either way).
    pub branches: BranchExecution,
    /// Optional logits processors, applied after the contrast (none by
    /// default, as in the reference).
    pub processors: LogitsProcessors,
    /// Records, for every generated token, the full branch's attention over
    /// the image tokens (the paper's analysis; see
    /// [`Generation::attention`]). `None` (the default) computes no
    /// attention weights at all.
    pub attention: Option<AttentionCapture>,
}

impl GenerationConfig {
    /// Greedy, `max_new_tokens` tokens, batched branches, no stop strings.
    pub fn greedy(mode: Mode, max_new_tokens: usize) -> Self {
        Self {
            mode,
            seed: None,
            limit: Limit::MaxNewTokens(max_new_tokens),
            stop_strings: Vec::new(),
            branches: BranchExecution::Batched,
            processors: LogitsProcessors::default(),
            attention: None,
        }
    }

    /// Seeded sampling, `max_new_tokens` tokens, batched branches.
    pub fn sampled(mode: Mode, max_new_tokens: usize, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            ..Self::greedy(mode, max_new_tokens)
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// An end-of-sequence token was generated (it is in `token_ids`).
    Eos,
    /// The text reached this stop string.
    StopString(String),
    /// The token limit was reached.
    Length,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt_ids: Vec<i64>,
    /// The new tokens (EOS included when generated).
    pub token_ids: Vec<i64>,
    /// The decoded text of the new tokens.
    pub text: String,
    /// The selected outlier patch indices, in selection order (empty
    /// unless the mode is DAMRO).
    pub outliers: Vec<i64>,
    /// Why it ended.
    pub finish: FinishReason,
    /// With [`GenerationConfig::attention`]: for each generated token, the
    /// full branch's attention over the image tokens (one value per image
    /// token) at the position whose logits chose it (for the first token,
    /// the prompt's last position). Empty otherwise.
    pub attention: Vec<Vec<f32>>,
    /// With [`GenerationConfig::attention`]: the ViT's \[CLS\] attention over
    /// the patches that the image tokens are, when they are patches.
    pub cls_attention: Option<Vec<f32>>,
}

/// One new token, as reported to a streaming callback.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenEvent<'a> {
    /// Index of the request in the call.
    pub request: usize,
    /// The token.
    pub token_id: i64,
    /// The text added by this token (may be empty while a multi-byte
    /// character is incomplete).
    pub text_delta: &'a str,
}

#[cfg(test)]
mod tests {
    use super::Limit;

    #[test]
    fn max_length_counts_like_the_reference_instructblip() {
        // Reference: generate(max_length = L) on [query embeds; prompt
        // embeds] yields L - 1 - prompt_len new tokens.
        assert_eq!(Limit::MaxLength(30).new_tokens(10), 19);
        assert_eq!(Limit::MaxLength(11).new_tokens(10), 0);
        assert_eq!(Limit::MaxLength(5).new_tokens(10), 0);
        assert_eq!(Limit::MaxNewTokens(16).new_tokens(10), 16);
    }
}
