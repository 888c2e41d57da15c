//! What the service knows of WBIA, between the HTTP layer and the engine: annotations resolved
//! once per request (rowid, name, chip identity, image file) and a chip source over them that
//! makes chips from WBIA's image files when it can read them, as WBIA makes its own, and
//! downloads WBIA's JPEG re-encodes when it cannot; and WBIA's engine as our jobs meet it
//! (its own job ids, the callbacks that announce a job's end); and identification itself
//! (`Identifier`): a request's lists checked, admitted, resolved and scored, large jobs split
//! across replicas.

mod annotations;
mod chips;
mod identify;
pub mod job_refusals;
pub mod jobs;
mod pair;
mod split;
mod wbia_jobs;

pub use annotations::{Annotation, Annotations};
pub use chips::{ChipMode, ChipOptions, ChipStats, PathMap, WbiaChips};
pub use identify::{
    check_lists, pair_count, Computed, Duplicates, Identifier, IdentifyMetrics, RunContext,
    SplitOptions, MAX_ANNOTS_PER_REQUEST,
};
pub use pair::ChipPair;
pub use split::{ChunkMetrics, SplitError};
pub use wbia_jobs::{Callback, WbiaJobs};

/// What can go wrong identifying, in terms the HTTP layer maps to WBIA's codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("query_annot_uuid_list and database_annot_uuid_list must not be empty")]
    EmptyList,
    #[error("at most {max} annotations per request")]
    TooManyAnnotations { max: usize },
    /// UUIDs listed more than once (WBIA's code 601).
    #[error("duplicate annotation UUIDs")]
    DuplicateUuids(Duplicates),
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
    #[error(transparent)]
    Engine(#[from] wbia_lightglue_engine::Error),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    JobId(#[from] job_refusals::JobIdRefused),
    #[error(transparent)]
    Callback(#[from] job_refusals::CallbackRefused),
    /// A blocking task that panicked or was cancelled.
    #[error("a blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
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
