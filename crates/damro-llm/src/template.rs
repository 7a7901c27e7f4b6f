//! The prompt templates the DAMRO authors use.
//!
//! - `llava_v1`: LLaVA-1.5's `conv_vicuna_v1` conversation (original LLaVA
//!   repo, `llava/conversation.py`): the system line, then
//!   `USER: <image>\n{question} ASSISTANT:`, joined by single spaces. The
//!   image placeholder is put in front of the question, as the authors'
//!   scripts do (`DEFAULT_IMAGE_TOKEN + '\n' + qs`).
//! - `instructblip`: the raw question goes both to the language model and to
//!   the Q-Former's BERT tokenizer (the query tokens are prepended as
//!   embeddings by the model, not written in the text).
//! - `raw`: the text as given, to the language model only.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The image placeholder of LLaVA prompts.
pub const IMAGE_TOKEN: &str = "<image>";

/// The system line of LLaVA-1.5's `llava_v1` template.
pub const LLAVA_V1_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// A prompt template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptTemplate {
    /// The text as given.
    Raw,
    /// LLaVA-1.5's conversation template with one `<image>` placeholder.
    LlavaV1,
    /// InstructBLIP: the question for both the LLM and the Q-Former.
    InstructBlip,
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Text for the language model's tokenizer.
    pub llm: String,
    /// Text for the Q-Former's tokenizer (InstructBLIP only).
    pub qformer: Option<String>,
}

impl PromptTemplate {
    /// Renders a question.
    pub fn render(&self, question: &str) -> Prompt {
        match self {
            Self::Raw => Prompt {
                llm: question.to_string(),
                qformer: None,
            },
            Self::LlavaV1 => Prompt {
                llm: format!("{LLAVA_V1_SYSTEM} USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"),
                qformer: None,
            },
            Self::InstructBlip => Prompt {
                llm: question.to_string(),
                qformer: Some(question.to_string()),
            },
        }
    }

    /// The name `FromStr` accepts.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::LlavaV1 => "llava_v1",
            Self::InstructBlip => "instructblip",
        }
    }
}

impl FromStr for PromptTemplate {
    type Err = Error;

    /// `raw`, `llava_v1` or `instructblip`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "raw" => Ok(Self::Raw),
            "llava_v1" => Ok(Self::LlavaV1),
            "instructblip" => Ok(Self::InstructBlip),
            other => Err(Error::UnknownTemplate(other.to_string())),
        }
    }
}

impl fmt::Display for PromptTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_v1_is_the_authors_prompt() {
        let p = PromptTemplate::LlavaV1.render("Is there a dog in the image?");
        assert_eq!(
            p.llm,
            "A chat between a curious human and an artificial intelligence assistant. The assistant \
             gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n\
             Is there a dog in the image? ASSISTANT:"
        );
        assert_eq!(p.qformer, None);
    }

    #[test]
    fn instructblip_and_raw() {
        let q = "Is there a dog in the image? Please answer this question with one word.";
        let p = PromptTemplate::InstructBlip.render(q);
        assert_eq!(p.llm, q);
        assert_eq!(p.qformer.as_deref(), Some(q));
        let p = PromptTemplate::Raw.render("hello");
        assert_eq!((p.llm.as_str(), p.qformer), ("hello", None));
    }

    #[test]
    fn names_round_trip() {
        for t in [
            PromptTemplate::Raw,
            PromptTemplate::LlavaV1,
            PromptTemplate::InstructBlip,
        ] {
            assert_eq!(t.to_string().parse::<PromptTemplate>().unwrap(), t);
        }
        assert!(matches!(
            "vicuna".parse::<PromptTemplate>(),
            Err(Error::UnknownTemplate(name)) if name == "vicuna"
        ));
    }
}
