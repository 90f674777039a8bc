//! The library's one error type: every variant carries what a user needs to find the problem —
//! the file, the tensor (with both shapes) or the argument.

use std::path::PathBuf;

/// Errors returned by the vista library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: cannot decode image: {message}")]
    ImageDecode { path: PathBuf, message: String },

    #[error(
        "{path}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels \
         (a possible decompression bomb; raise the limit if the image is trusted)"
    )]
    ImageTooLarge { path: PathBuf, width: u32, height: u32, pixels: u64, limit: u64 },

    #[error("{path}: cannot read checkpoint: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{path}: missing tensor `{name}`{hint}")]
    MissingTensor { path: PathBuf, name: String, hint: String },

    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("cannot resolve model `{model}`: {message}")]
    Resolve { model: String, message: String },

    #[error("{path}: index database: {message}")]
    Index { path: PathBuf, message: String },

    #[error("{path}: embedding cache: {message}")]
    Cache { path: PathBuf, message: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(
        "the loss is {loss} at epoch {epoch}, iteration {iteration}: training stopped (lower the learning \
         rate or raise --clip-grad){}",
        kept.as_ref().map(|p| format!("; the last good checkpoint is kept: {}", p.display())).unwrap_or_default()
    )]
    NonFiniteLoss { loss: f64, epoch: usize, iteration: usize, kept: Option<PathBuf> },

    #[error("data loading: {0}")]
    DataWorker(String),

    #[error("{item}: the batch holding it failed in the model: {message}")]
    BatchFailed { item: String, message: String },

    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: String, message: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn arg(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { name: name.into(), message: message.into() }
    }
}
