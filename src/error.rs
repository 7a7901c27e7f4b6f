//! The facade's error type: wraps every crate's error.

/// Result alias of the facade.
pub type Result<T> = std::result::Result<T, Error>;

/// Anything that can go wrong while loading a model or generating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Checkpoint loading or a shared layer.
    #[error(transparent)]
    Nn(#[from] damro_nn::Error),
    /// Vision tower, Q-Former, projector or image preprocessing.
    #[error(transparent)]
    Vision(#[from] damro_vision::Error),
    /// Image preprocessing.
    #[error(transparent)]
    Preprocess(#[from] damro_vision::preprocess::PreprocessError),
    /// Language model, cache or tokenizer.
    #[error(transparent)]
    Llm(#[from] damro_llm::Error),
    /// Outlier selection.
    #[error(transparent)]
    Outlier(#[from] damro_outlier::Error),
    /// Contrastive sampler.
    #[error(transparent)]
    Sampler(#[from] damro_sampler::Error),
    /// libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A request or generation setting that cannot be served.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
