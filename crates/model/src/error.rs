use std::path::PathBuf;

/// Everything that can go wrong while loading models or computing features and matches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read image {path}: {source}")]
    ImageIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unsupported or unrecognised image format")]
    UnsupportedFormat,
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error("image is {width}x{height} pixels, over the decode limit ({limit})")]
    ImageTooLarge {
        width: u32,
        height: u32,
        limit: String,
    },
    #[error("image is {width}x{height} pixels, too small to resize to a long edge of {target}")]
    ImageTooSmall {
        width: u32,
        height: u32,
        target: u32,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("weights not found: {0}")]
    WeightsNotFound(String),
    #[error("cannot make the chip: {0}")]
    InvalidChip(String),
    #[error("invalid features: {0}")]
    InvalidFeatures(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
