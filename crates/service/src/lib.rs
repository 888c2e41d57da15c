//! What the service knows of WBIA, between the HTTP layer and the engine: annotations resolved
//! once per request (rowid, name, chip identity, image file) and a chip source over them that
//! makes chips from WBIA's image files when it can read them, as WBIA makes its own, and
//! downloads WBIA's JPEG re-encodes when it cannot; and WBIA's engine as our jobs meet it
//! (its own job ids, the callbacks that announce a job's end).

mod annotations;
mod chips;
mod wbia_jobs;

pub use annotations::{Annotation, Annotations};
pub use chips::{ChipMode, ChipOptions, ChipStats, PathMap, WbiaChips};
pub use wbia_jobs::{Callback, WbiaJobs};

/// What can go wrong resolving annotations, in terms the HTTP layer maps to WBIA's codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// UUIDs WBIA does not know (WBIA's code 600), each once, in request order.
    #[error("{} annotation(s) unknown to WBIA: {}", .0.len(), first_few(.0))]
    UnknownAnnotations(Vec<uuid::Uuid>),
    /// No annotation has this rowid (WBIA's code 600).
    #[error("annotation rowid {0} is unknown to WBIA")]
    UnknownRowid(i64),
    /// The query of a job without a database has no species to take one from.
    #[error(
        "annotation {0} has no species, so there is no species-wide database; send \
         database_annot_uuid_list"
    )]
    NoSpecies(uuid::Uuid),
    #[error(transparent)]
    Wbia(#[from] wbia_client::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The first few UUIDs of a list, for a message.
fn first_few(uuids: &[uuid::Uuid]) -> String {
    let mut text: Vec<String> = uuids.iter().take(5).map(ToString::to_string).collect();
    if uuids.len() > 5 {
        text.push(format!("and {} more", uuids.len() - 5));
    }
    text.join(", ")
}
