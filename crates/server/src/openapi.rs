//! OpenAPI description of the endpoints this service answers itself (served at
//! `/api-docs/openapi.json`, browsable at `/swagger-ui/`). Everything else under `/api/` is
//! WBIA's and passed through unchanged, so it is not described here.
//!
//! The handlers read WBIA's loosely typed parameters (query string, form, multipart or JSON;
//! docs/wbia-api.md §1.1) by hand, so the schemas below are documentation types: a test checks
//! them against real responses.

use serde::Serialize;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

/// WBIA's `{"__UUID__": "..."}` form; plain UUID strings are accepted too.
#[derive(Serialize, ToSchema)]
pub struct FancyUuid {
    #[serde(rename = "__UUID__")]
    #[schema(example = "1d4ad2b5-5e2c-4a52-b9a4-6b5e6c6f0a11")]
    pub uuid: String,
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
    /// 200 on success; else the HTTP status: 400 bad parameter, 422 undecodable or oversized
    /// chip, 429 busy (with `Retry-After`), 502 WBIA unreachable, failing or too slow, 600
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
    pub score: f32,
    /// The individual's name, when WBIA knows it.
    pub dname: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NameScore {
    pub name: String,
    /// The best score among the name's annotations (the plugin's max).
    pub score: f32,
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

#[utoipa::path(
    post,
    path = "/api/review/query/chip/best/",
    tag = "query",
    request_body(content = ChipBestRequest, content_type = "multipart/form-data",
        description = "also application/x-www-form-urlencoded or application/json"),
    responses(
        (status = 200, description = "ranked database annotations per query", body = ChipBestResponse),
        (status = 400, description = "bad parameter", body = ErrorResponse),
        (status = 429, description = "busy (too many admitted requests or pending pairs); retry after the Retry-After header", body = ErrorResponse),
        (status = 502, description = "WBIA unreachable, failing or too slow for a chip", body = ErrorResponse),
        (status = 600, description = "annotation UUIDs unknown to WBIA", body = ErrorResponse),
    )
)]
#[allow(dead_code)]
fn chip_best() {}

#[utoipa::path(
    get,
    path = "/api/review/query/chip/best/",
    tag = "query",
    params(
        ("aid" = i64, Query, description = "the query annotation's rowid"),
        ("query_config_dict" = String, Query, description = r#"`{"pipeline_root": "LightGlue"}` (optionally `config_path`); other pipelines are WBIA's"#),
    ),
    responses(
        (status = 200, description = "`response`: {name, sex, age, extern: {reference, qannot_uuid, dannot_uuid}} of the best individual among every valid annotation (all null when none is named)", body = ErrorResponse),
        (status = 600, description = "unknown aid", body = ErrorResponse),
    )
)]
#[allow(dead_code)]
fn chip_best_by_aid() {}

#[utoipa::path(
    post,
    path = "/api/engine/query/graph/",
    tag = "engine",
    request_body(content = EngineQueryRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`response` is the job id", body = ErrorResponse),
        (status = 429, description = "busy; the job was not accepted (retry after the Retry-After header)", body = ErrorResponse),
    )
)]
#[allow(dead_code)]
fn engine_query() {}

#[utoipa::path(
    get,
    path = "/api/engine/job/status/",
    tag = "engine",
    params(("jobid" = String, Query, description = "job id")),
    responses((status = 200, description = "`response`: {status: \"ok\", jobid, jobstatus: received|working|completed|exception, progress (while working): {stage: lookup|features|match, chips_total, chips_fetched, chips_cached, extracted, pairs_total, pairs_scored, elapsed_secs, eta_secs}}", body = ErrorResponse))
)]
#[allow(dead_code)]
fn job_status() {}

#[utoipa::path(
    post,
    path = "/api/engine/job/cancel/",
    tag = "engine",
    params(("jobid" = String, Query, description = "job id")),
    responses(
        (status = 200, description = "`response`: {jobid, jobstatus: \"exception\", cancelled: true}", body = ErrorResponse),
        (status = 404, description = "no such job here", body = ErrorResponse),
        (status = 409, description = "the job has already ended", body = ErrorResponse),
    )
)]
#[allow(dead_code)]
fn job_cancel() {}

#[utoipa::path(
    get,
    path = "/api/engine/job/result/",
    tag = "engine",
    params(("jobid" = String, Query, description = "job id")),
    responses((status = 200, description = "`response`: {status: completed|exception, jobid, json_result} with the result Wildbook parses (cm_dict, inference_dict, ...)", body = ErrorResponse))
)]
#[allow(dead_code)]
fn job_result() {}

#[utoipa::path(
    get,
    path = "/api/engine/job/",
    tag = "engine",
    responses((status = 200, description = "`response`: the job ids", body = ErrorResponse))
)]
#[allow(dead_code)]
fn job_list() {}

#[utoipa::path(
    get,
    path = "/api/query/graph/match/thumb/",
    tag = "query",
    params(
        ("extern_reference" = String, Query, description = "`dannot_extern_reference` of a result"),
        ("query_annot_uuid" = String, Query),
        ("database_annot_uuid" = String, Query),
        ("version" = String, Query, description = "clean, matches or heatmask (aliases match, mask): all the two chips side by side"),
    ),
    responses(
        (status = 200, description = "JPEG", content_type = "image/jpeg"),
        (status = 607, description = "cannot render (e.g. unknown annotation)", body = ErrorResponse),
    )
)]
#[allow(dead_code)]
fn match_thumb() {}

#[utoipa::path(get, path = "/api/test/heartbeat/", tag = "health",
    responses((status = 200, description = "`response`: true")))]
#[allow(dead_code)]
fn heartbeat() {}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "models loaded"), (status = 503, description = "still warming up")))]
#[allow(dead_code)]
fn health() {}

#[utoipa::path(get, path = "/info", tag = "health",
    responses((status = 200, description = "version, model, device, precision, default configuration")))]
#[allow(dead_code)]
fn info() {}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text with HELP/TYPE: counters (queries, refusals, cache, store, downloads, extractions, pairs), gauges (queue depth, admitted requests, pending pairs, cache bytes), histograms of stage and request seconds")))]
#[allow(dead_code)]
fn metrics() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wbia-lightglue",
        description = "ALIKED + LightGlue matching for WBIA and Wildbook. Every other /api/ \
                       request is passed through to the WBIA server unchanged."
    ),
    paths(
        chip_best,
        chip_best_by_aid,
        match_thumb,
        engine_query,
        job_status,
        job_result,
        job_list,
        job_cancel,
        heartbeat,
        health,
        info,
        metrics
    ),
    components(schemas(
        FancyUuid,
        ChipBestRequest,
        ChipBestResponse,
        ErrorResponse,
        EngineQueryRequest
    ))
)]
pub struct ApiDoc;
