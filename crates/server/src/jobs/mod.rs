//! The engine job API Wildbook drives (docs/wbia-api.md §3–4): start an identification job, poll its
//! status, fetch its result, and get a `jobid=<id>` callback when it is done. Jobs whose
//! `pipeline_root` is not LightGlue, and job ids that are not ours, go to WBIA unchanged.

mod result;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_lightglue_engine::job_board::JobStatus;
use wbia_lightglue_engine::Config;
use wbia_lightglue_service::jobs::{FoundJob, JobSpec};
use wbia_lightglue_service::Callback;

use crate::envelope::{self, ApiError};
use crate::params::Params;
use crate::{proxy, AppState};

pub use result::{
    render, AnnotPairDict, ChipMatch, ClusterDict, IdentificationResult, Inference, JobResult,
    JobResultResponse, NameId, NameScoreCell, PriorMatchingState, ReviewPair, Summary,
    WbiaDocuments, NEG_INF,
};

/// The `dannot_extern_reference` of our results, in WBIA's form (16 lowercase letters),
/// derived from the configuration; `/api/query/graph/match/thumb/` knows it as ours.
pub fn thumb_reference(config: &Config) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    let digest = Sha256::digest(format!("wbia-lightglue/{text}").as_bytes());
    digest
        .iter()
        .take(16)
        .map(|b| (b'a' + b % 26) as char)
        .collect()
}

fn is_lightglue(query_config: &Value) -> bool {
    let root = query_config
        .get("pipeline_root")
        .or_else(|| query_config.get("proot"));
    root.and_then(Value::as_str) == Some("LightGlue")
}

/// Reads a request that names its pipeline in `query_config_dict`: a LightGlue one is ours
/// (its parameters and that dict come back); any other is WBIA's, forwarded unchanged, and
/// WBIA's response comes back as the error.
pub(crate) async fn lightglue_or_forward(
    state: &AppState,
    req: Request,
) -> Result<(Params, Value), Response> {
    let (params, parts, body) = Params::read(req)
        .await
        .map_err(IntoResponse::into_response)?;
    let query_config = params
        .get("query_config_dict")
        .cloned()
        .unwrap_or(Value::Null);
    if !is_lightglue(&query_config) {
        return Err(proxy::forward(state, &parts, body).await);
    }
    Ok((params, query_config))
}

#[utoipa::path(
    post,
    path = "/api/engine/query/graph/",
    tag = "engine",
    request_body(content = crate::schema::EngineQueryRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`response` is the job id", body = crate::schema::ErrorResponse),
        (status = 400, description = "bad parameter, or a jobid that is not 1-128 letters, digits or `._:-`", body = crate::schema::ErrorResponse),
        (status = 403, description = "callback_url names a host outside --callback-hosts", body = crate::schema::ErrorResponse),
        (status = 409, description = "a job with this jobid exists (ids are never reused)", body = crate::schema::ErrorResponse),
        (status = 429, description = "busy; the job was not accepted (retry after the Retry-After header)", body = crate::schema::ErrorResponse),
    )
)]
/// `POST|GET /api/engine/query/graph/` (`start_identify_annots_query`).
pub async fn start(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, query_config) = match lightglue_or_forward(&state, req).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    match accept(&state, &params, query_config).await {
        Ok(jobid) => envelope::ok(Value::String(jobid)),
        Err(e) => e.into_response(),
    }
}

/// Reads the request and its configuration, and hands the job to the runner.
async fn accept(
    state: &AppState,
    params: &Params,
    query_config: Value,
) -> Result<String, ApiError> {
    let request = JobRequest::read(params)?;
    let config_path = query_config.get("config_path").and_then(Value::as_str);
    let config = state.configs.load(config_path)?;
    // Known before the job ends, so that its thumbnails can be drawn while it works.
    state
        .runner
        .jobs()
        .remember_reference(&thumb_reference(&config), &config);
    let spec = JobSpec {
        jobid: request.jobid,
        query: request.query,
        database: request.database,
        include_query: request.include_query,
        config,
        query_config,
        callback: request.callback,
    };
    Ok(state.runner.accept(spec).await?)
}

/// What a job request asks for, as read from its parameters.
struct JobRequest {
    query: Uuid,
    /// `None`: every annotation of the query's species.
    database: Option<Vec<Uuid>>,
    /// Echo the query in the database (WBIA's `include_qaid_in_daids`, default true); it is
    /// never scored against itself.
    include_query: bool,
    jobid: String,
    callback: Option<Callback>,
}

impl JobRequest {
    fn read(params: &Params) -> Result<Self, ApiError> {
        // Both lists read together, so that 608 counts positions over both, as WBIA does.
        let listed = params
            .get("database_annot_uuid_list")
            .is_some_and(|v| !v.is_null());
        let (queries, database) = if listed {
            let mut lists = params
                .uuid_lists(&["query_annot_uuid_list", "database_annot_uuid_list"])?
                .into_iter();
            (lists.next().unwrap_or_default(), lists.next())
        } else {
            (params.uuid_list("query_annot_uuid_list")?, None)
        };
        let [query] = queries[..] else {
            return Err(ApiError::bad_request(format!(
                "query_annot_uuid_list must hold exactly one annotation, not {}",
                queries.len()
            )));
        };
        if !listed
            && params
                .get("database_imgsetid")
                .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::bad_request(
                "database_imgsetid is not supported here: send database_annot_uuid_list, or \
                 neither to match against every annotation of the query's species",
            ));
        }
        let callback = params.string("callback_url").map(|url| Callback {
            url,
            method: params
                .string("callback_method")
                .unwrap_or_else(|| "POST".into()),
            detailed: match params.get("callback_detailed") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
                _ => false,
            },
        });
        Ok(Self {
            query,
            database,
            include_query: params
                .get("include_qaid_in_daids")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            jobid: params
                .string("jobid")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| Uuid::new_v4().to_string()),
            callback,
        })
    }
}

#[utoipa::path(
    post,
    path = "/api/engine/job/cancel/",
    tag = "engine",
    params(("jobid" = String, Query, description = "job id")),
    responses(
        (status = 200, description = "`response`: {jobid, jobstatus: \"exception\", cancelled: true}", body = crate::schema::ErrorResponse),
        (status = 404, description = "no such job here", body = crate::schema::ErrorResponse),
        (status = 409, description = "the job has already ended", body = crate::schema::ErrorResponse),
    )
)]
/// `/api/engine/job/cancel/?jobid=` (ours; WBIA has no such call): stops a working job. Its
/// queued model work is dropped unrun and it ends as `exception`, "cancelled by request"; no
/// callback is posted (whoever cancelled knows).
pub async fn cancel(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let params = match Params::read(req).await {
        Ok((params, _, _)) => params,
        Err(e) => return e.into_response(),
    };
    let Some(id) = jobid_of(&params) else {
        return ApiError::bad_request("missing parameter jobid").into_response();
    };
    match state.runner.cancel(&id).await {
        Ok(()) => envelope::ok(json!({"jobid": id, "jobstatus": "exception", "cancelled": true})),
        Err(refused) => ApiError::from(refused).into_response(),
    }
}

fn jobid_of(params: &Params) -> Option<String> {
    params.string("jobid")
}

#[utoipa::path(
    get,
    path = "/api/engine/job/status/",
    tag = "engine",
    params(("jobid" = String, Query, description = "job id")),
    responses((status = 200, description = "`response`: {status: \"ok\", jobid, jobstatus: received|working|completed|exception, progress (while working): {stage: lookup|features|match, chips_total, chips_fetched, chips_cached, extracted, pairs_total, pairs_scored, elapsed_secs, eta_secs}}", body = crate::schema::ErrorResponse))
)]
/// `/api/engine/job/status/`.
pub async fn status(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, parts, body) = match Params::read(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(id) = jobid_of(&params) else {
        return proxy::forward(&state, &parts, body).await;
    };
    match state.runner.find(&id).await {
        Some(FoundJob::Here(job)) => {
            let mut status = json!({"status": "ok", "jobid": id, "jobstatus": job.status.as_str()});
            // Not in WBIA's answer; Wildbook ignores keys it does not read.
            if let Some(p) = &job.progress {
                status["progress"] = serde_json::to_value(p.snapshot()).unwrap_or(Value::Null);
            }
            envelope::ok(status)
        }
        // Another replica's job, or an earlier process's, as it was last published.
        Some(FoundJob::OnBoard(job)) => {
            let mut status = json!({"status": "ok", "jobid": id, "jobstatus": job.status.as_str()});
            if let Some(p) = job
                .progress
                .and_then(|p| serde_json::from_str::<Value>(&p).ok())
            {
                status["progress"] = p;
            }
            envelope::ok(status)
        }
        None => proxy::forward(&state, &parts, body).await,
    }
}

#[utoipa::path(
    get,
    path = "/api/engine/job/result/",
    tag = "engine",
    params(("jobid" = String, Query, description = "job id")),
    responses((status = 200, description = "the job's state and result; `score_list` holds bare `-Infinity` as WBIA writes it", body = crate::jobs::JobResultResponse))
)]
/// `/api/engine/job/result/`.
pub async fn result(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, parts, body) = match Params::read(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(id) = jobid_of(&params) else {
        return proxy::forward(&state, &parts, body).await;
    };
    let (status, result): (JobStatus, Option<Arc<str>>) = match state.runner.find(&id).await {
        Some(FoundJob::Here(job)) => (job.status, job.result),
        Some(FoundJob::OnBoard(job)) => (job.status, job.result.map(Into::into)),
        None => return proxy::forward(&state, &parts, body).await,
    };
    // WBIA reports the execution status here ("completed" / "exception"), not "ok"
    // (docs/wbia-api.md); the result is spliced in as rendered when the job ended.
    let body = format!(
        r#"{{"status":{{"success":true,"code":200,"message":"","cache":-1}},"response":{{"status":{},"jobid":{},"json_result":{}}}}}"#,
        Value::String(status.as_str().into()),
        Value::String(id),
        result.as_deref().unwrap_or("null"),
    );
    ([("content-type", envelope::JSON_CONTENT_TYPE)], body).into_response()
}

#[utoipa::path(
    get,
    path = "/api/engine/job/",
    tag = "engine",
    responses((status = 200, description = "`response`: the job ids, ours and WBIA's own (sorted)", body = crate::schema::ErrorResponse))
)]
/// `/api/engine/job/`: our job ids and WBIA's.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    // With replicas: every replica's jobs.
    let mut ids = match state.runner.ids().await {
        Ok(ids) => ids,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // WBIA's own jobs (its other pipelines, passed through) are listed too, as WBIA lists
    // them; without WBIA the list is ours alone.
    match state.runner.wbia_jobs().ids().await {
        Ok(theirs) => ids.extend(theirs),
        Err(e) => tracing::warn!(error = %e, "WBIA's job list is left out"),
    }
    ids.sort();
    ids.dedup();
    envelope::ok(json!(ids))
}
