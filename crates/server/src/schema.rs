//! The documented shapes of what this service's own endpoints take and answer (WBIA's
//! envelope, chip/best, the engine job API). The handlers read WBIA's loosely typed
//! parameters (query string, form, multipart or JSON; docs/wbia-api.md §1.1) by hand, so the
//! request types are documentation; the answers are built from these types. A test checks
//! them against real responses. `openapi.rs` gathers them with the handlers' paths.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// An f32 score written as its shortest decimal (566.7218), not widened to f64's digits
/// (566.7218017578125) when the answer is built as a `serde_json::Value`, as job results
/// write it.
pub(crate) fn shortest<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    match shortest_decimal(*v) {
        Some(x) => s.serialize_f64(x),
        None => s.serialize_f32(*v),
    }
}

/// `v` as the f64 of its shortest decimal (what [`shortest`] writes); `None` when not finite.
pub(crate) fn shortest_decimal(v: f32) -> Option<f64> {
    v.to_string().parse::<f64>().ok().filter(|_| v.is_finite())
}

/// WBIA's `{"__UUID__": "..."}` form; plain UUID strings are accepted too.
#[derive(Serialize, ToSchema)]
pub struct FancyUuid {
    #[serde(rename = "__UUID__")]
    #[schema(example = "1d4ad2b5-5e2c-4a52-b9a4-6b5e6c6f0a11")]
    pub uuid: String,
}

impl From<&uuid::Uuid> for FancyUuid {
    fn from(u: &uuid::Uuid) -> Self {
        Self {
            uuid: u.hyphenated().to_string(),
        }
    }
}

/// Form fields (multipart or urlencoded) or a JSON body. Lists are JSON strings in a form.
#[derive(Serialize, ToSchema)]
pub struct ChipBestRequest {
    /// JSON list of query annotation UUIDs (plain or `{"__UUID__": ...}`).
    #[schema(example = r#"["1d4ad2b5-5e2c-4a52-b9a4-6b5e6c6f0a11"]"#)]
    pub query_annot_uuid_list: String,
    /// JSON list of database annotation UUIDs.
    pub database_annot_uuid_list: String,
    /// Must be `LightGlue`.
    #[schema(example = "LightGlue")]
    pub pipeline_root: String,
    /// A JSON configuration inside the service's config directory (no `..`).
    pub config_path: Option<String>,
}

/// WBIA's response envelope status.
#[derive(Serialize, ToSchema)]
pub struct Status {
    pub success: bool,
    /// 200 on success; else the HTTP status: 400 bad parameter, 401 missing bearer token (when
    /// the service has one), 403 callback host not allowed, 409 job id taken or job ended, 422
    /// undecodable or oversized chip, 429 busy (with `Retry-After`), 502 WBIA unreachable or
    /// failing, 503 too many pass-through requests (with `Retry-After`), 504 WBIA too slow, 600
    /// unknown annotation UUIDs, 601 duplicate UUIDs, 608 malformed UUIDs.
    pub code: u16,
    pub message: String,
    pub cache: i64,
}

/// One database annotation's score.
#[derive(Serialize, ToSchema)]
pub struct ScoredAnnotation {
    pub dannot_uuid: FancyUuid,
    /// Sum of LightGlue match confidences.
    #[serde(serialize_with = "shortest")]
    pub score: f32,
    /// P(same individual) from the configuration's `calibration` (`evaluate --calibrate`);
    /// null without one.
    pub calibrated_score: Option<f64>,
    /// Clockwise degrees the query chip was turned to give `score`: 0, or 90/180/270 with
    /// the configuration's `rotation_sweep` on.
    pub rotation: u16,
    /// The individual's name, when WBIA knows it.
    pub dname: Option<String>,
    /// With an ensemble (`model_name` a list), each member's own score, by variant; `score`
    /// is their fusion. Absent for a single model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_scores: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Serialize, ToSchema)]
pub struct NameScore {
    pub name: String,
    /// The best score among the name's annotations (the plugin's max).
    #[serde(serialize_with = "shortest")]
    pub score: f32,
    /// That annotation's calibrated score (null without a calibration).
    pub calibrated_score: Option<f64>,
    pub dannot_uuid: FancyUuid,
}

#[derive(Serialize, ToSchema)]
pub struct QueryResult {
    pub qannot_uuid: FancyUuid,
    pub best: Option<ScoredAnnotation>,
    /// Best first; the query itself is left out.
    pub ranked: Vec<ScoredAnnotation>,
    pub name_scores: Vec<NameScore>,
}

#[derive(Serialize, ToSchema)]
pub struct ChipBestResult {
    #[schema(example = "LightGlue")]
    pub pipeline_root: String,
    /// The configuration used (defaults filled in).
    #[schema(value_type = Object)]
    pub config: Value,
    pub query_results: Vec<QueryResult>,
    /// Database annotations left out because WBIA could not make their chips or they are
    /// not images the service can read; a query's own chip failing fails the request.
    pub skipped: Vec<SkippedAnnotation>,
}

/// A database annotation that was not scored, and why.
#[derive(Serialize, ToSchema)]
pub struct SkippedAnnotation {
    pub dannot_uuid: FancyUuid,
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChipBestResponse {
    pub status: Status,
    pub response: ChipBestResult,
}

/// An error in the envelope; `response` carries details (e.g. the missing UUIDs for 600).
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub status: Status,
    #[schema(value_type = Object)]
    pub response: Value,
}

/// Wildbook's identification request (docs/wbia-api.md §3.1); `query_config_dict.pipeline_root`
/// selects LightGlue, other pipelines are passed through to WBIA.
#[derive(Serialize, ToSchema)]
pub struct EngineQueryRequest {
    /// Exactly one query annotation.
    pub query_annot_uuid_list: Vec<FancyUuid>,
    pub database_annot_uuid_list: Vec<FancyUuid>,
    #[schema(value_type = Object, example = json!({"pipeline_root": "LightGlue"}))]
    pub query_config_dict: Value,
    /// Called with a form body `jobid=<id>` when the job ends.
    pub callback_url: Option<String>,
    /// POST (default), GET or PUT.
    pub callback_method: Option<String>,
    /// The job id to use (Wildbook sends its task id).
    pub jobid: Option<String>,
}
