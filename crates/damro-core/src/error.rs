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
    /// A problem found in one file of a model directory (`config.json`):
    /// the file, then the problem (a field and why its value is wrong).
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong in it.
        error: Box<Error>,
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

    /// Names the file `error` was found in ([`Error::InFile`]), unless the
    /// error names a file already (reading or parsing it failed).
    pub fn in_file(path: impl Into<std::path::PathBuf>, error: impl Into<Error>) -> Self {
        let error = error.into();
        let names_a_file = matches!(
            &error,
            Error::InFile { .. }
                | Error::Nn(
                    damro_nn::Error::Io { .. }
                        | damro_nn::Error::Json { .. }
                        | damro_nn::Error::ConfigSizes { .. }
                )
                | Error::Vision(damro_vision::Error::Nn(
                    damro_nn::Error::Io { .. } | damro_nn::Error::Json { .. }
                ))
        );
        if names_a_file {
            error
        } else {
            Error::InFile {
                path: path.into(),
                error: Box::new(error),
            }
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
