//! The error type of the generation API: wraps every workspace crate's
//! error and carries an outside model's own errors.

/// Result alias of damro-core (and of the `damro` facade).
pub type Result<T> = std::result::Result<T, Error>;

/// Anything that can go wrong while loading a model or generating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Checkpoint loading or a shared layer.
    #[error(transparent)]
    Nn(#[from] damro_nn::Error),
    /// Vision tower, Q-Former, projector.
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
    Invalid {
        /// What was invalid (a parameter, a request field, a file).
        what: String,
        /// Why, and what was expected.
        reason: String,
    },
    /// An error of a model implemented outside this workspace (its own
    /// loader, tokenizer or forward), passed through unchanged.
    #[error("{model}: {source}")]
    Model {
        /// The model (or component) that failed.
        model: String,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Wraps an outside model's error ([`Error::Model`]).
    pub fn model(
        model: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Model {
            model: model.into(),
            source: source.into(),
        }
    }
}
