//! OpenAPI description of the endpoints this service answers itself (served at
//! `/api-docs/openapi.json`, browsable at `/swagger-ui/`). Everything else under `/api/` is
//! WBIA's and passed through unchanged, so it is not described here.
//!
//! Each handler carries its own `#[utoipa::path]` and the shapes live in `schema.rs`; this
//! module only gathers them (nothing imports it but the router).

use utoipa::OpenApi;

use crate::jobs::{JobResult, JobResultResponse};
use crate::schema::{
    ChipBestRequest, ChipBestResponse, EngineQueryRequest, ErrorResponse, FancyUuid,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wbia-lightglue",
        description = "ALIKED + LightGlue matching for WBIA and Wildbook. Every other /api/ \
                       request is passed through to the WBIA server unchanged."
    ),
    paths(
        crate::query_chip_best,
        crate::review::chip_best_by_aid,
        crate::thumbs::match_thumb,
        crate::upload::match_upload,
        crate::jobs::start,
        crate::jobs::status,
        crate::jobs::result,
        crate::jobs::list,
        crate::jobs::cancel,
        crate::heartbeat,
        crate::health::ready,
        crate::info,
        crate::metrics,
        crate::health::live
    ),
    components(schemas(
        FancyUuid,
        ChipBestRequest,
        ChipBestResponse,
        ErrorResponse,
        crate::upload::UploadMatch,
        EngineQueryRequest,
        JobResultResponse,
        JobResult,
        crate::jobs::IdentificationResult,
        crate::jobs::ChipMatch,
        crate::jobs::NameId,
        crate::jobs::Summary,
        crate::jobs::Inference,
        crate::jobs::ClusterDict,
        crate::jobs::AnnotPairDict,
        crate::jobs::ReviewPair,
        crate::jobs::PriorMatchingState
    ))
)]
pub struct ApiDoc;
