//! What the service knows of WBIA, between the HTTP layer and the engine: annotations resolved
//! once per request (rowid, name, chip identity, image file) and a chip source over them that
//! makes chips from WBIA's image files when it can read them, as WBIA makes its own, and
//! downloads WBIA's JPEG re-encodes when it cannot.

mod annotations;
mod chips;

pub use annotations::{Annotation, Annotations};
pub use chips::{ChipMode, ChipOptions, ChipStats, PathMap, WbiaChips};

/// What can go wrong resolving annotations, in terms the HTTP layer maps to WBIA's codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// UUIDs WBIA does not know (WBIA's code 600), each once, in request order.
    #[error("annotations unknown to WBIA: {}", .0.len())]
    UnknownAnnotations(Vec<uuid::Uuid>),
    #[error(transparent)]
    Wbia(#[from] wbia_client::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
