//! The library's one error type: every variant carries what a user needs to find the problem —
//! the file, the tensor (with both shapes) or the argument.

use std::path::PathBuf;

/// Errors returned by the vista library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An image could not be decoded: unknown format, truncated or corrupt data, or a decoder
    /// panic.
    #[error("{path}: cannot decode image: {message}")]
    ImageDecode {
        /// The image file at fault.
        path: PathBuf,
        /// What the decoder reported.
        message: String,
    },

    /// An image has more pixels than the decode limit allows (checked from the header, before
    /// decoding).
    #[error(
        "{path}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels \
         (a possible decompression bomb; raise the limit if the image is trusted)"
    )]
    ImageTooLarge {
        /// The image file at fault.
        path: PathBuf,
        /// The image's width in pixels.
        width: u32,
        /// The image's height in pixels.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The limit it went over.
        limit: u64,
    },

    /// A checkpoint could not be read or written: unknown format, corrupt header or tensor, or a
    /// family that cannot be detected.
    #[error("{path}: cannot read checkpoint: {message}")]
    Checkpoint {
        /// The checkpoint file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A tensor the model needs is not in the checkpoint.
    #[error("{path}: missing tensor `{name}`{hint}")]
    MissingTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name as the checkpoint spells it.
        name: String,
        /// A note appended to the message (empty, or starting with a space).
        hint: String,
    },

    /// A checkpoint tensor's shape differs from the one the model expects.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name as the checkpoint spells it.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the checkpoint.
        found: Vec<usize>,
    },

    /// A model configuration is unreadable or invalid (from a config file, or inferred from the
    /// checkpoint).
    #[error("{path}: {message}")]
    Config {
        /// The config or checkpoint file at fault.
        path: PathBuf,
        /// What is wrong with the configuration.
        message: String,
    },

    /// A model argument (file, folder or Hugging Face id) could not be resolved to its files.
    #[error("cannot resolve model `{model}`: {message}")]
    Resolve {
        /// The model as given: a path or a hub repository id.
        model: String,
        /// Why it could not be resolved, and what to do about it.
        message: String,
    },

    /// The photo index database failed (SQLite error or incompatible contents).
    #[error("{path}: index database: {message}")]
    Index {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// An embedding could not be written to the on-disk embedding cache.
    #[error("{path}: embedding cache: {message}")]
    Cache {
        /// The cache folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The CLIP tokenizer's vocabulary could not be read or parsed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Training produced a NaN or infinite loss and stopped.
    #[error(
        "the loss is {loss} at epoch {epoch}, iteration {iteration}: training stopped (lower the learning \
         rate or raise --clip-grad){}",
        kept.as_ref().map(|p| format!("; the last good checkpoint is kept: {}", p.display())).unwrap_or_default()
    )]
    NonFiniteLoss {
        /// The loss value.
        loss: f64,
        /// The epoch it happened in.
        epoch: usize,
        /// The global iteration it happened at.
        iteration: usize,
        /// The last good checkpoint, kept on disk, if there is one.
        kept: Option<PathBuf>,
    },

    /// The data-loading threads stopped unexpectedly.
    #[error("data loading: {0}")]
    DataWorker(String),

    /// A batch failed in the model; returned for each item of that batch.
    #[error("{item}: the batch holding it failed in the model: {message}")]
    BatchFailed {
        /// The item, as its source names it (a path, or an in-memory image).
        item: String,
        /// The model's error.
        message: String,
    },

    /// An argument is out of range or inconsistent with the others.
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument {
        /// The argument's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },

    /// A tensor operation failed in candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn arg(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { name: name.into(), message: message.into() }
    }
}

/// Runs `f`, turning a panic inside it into `Err(on_panic(message))`: for third-party parsers
/// (image decoders, candle's pickle reader) that should not panic on bad input but might, so
/// that the caller gets an error naming the file instead of an unwinding batch.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> Result<T>, on_panic: impl FnOnce(String) -> Error) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(on_panic(what))
        }
    }
}
