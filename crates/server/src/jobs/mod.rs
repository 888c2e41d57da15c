//! The engine job API Wildbook drives (docs/wbia-api.md §3–4): start an identification job, poll its
//! status, fetch its result, and get a `jobid=<id>` callback when it is done. Jobs whose
//! `pipeline_root` is not LightGlue, and job ids that are not ours, go to WBIA unchanged.

mod registry;
mod result;
mod shared;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_lightglue_engine::{Config, Progress, Ticket};
use wbia_lightglue_service::{Callback, RunContext};

use crate::envelope::{self, ApiError};
use crate::params::Params;
use crate::{proxy, AppState};

pub use crate::job_refusals::{
    valid_jobid, CallbackRefused, CancelRefused, JobIdError, JobIdRefused, MAX_JOBID_LEN,
};
pub use registry::{Job, JobStatus, JobStore, MAX_JOBS};
use result::identification_result;
pub use result::{
    render, AnnotPairDict, ChipMatch, ClusterDict, IdentificationResult, Inference, JobResult,
    JobResultResponse, NameId, NameScoreCell, PriorMatchingState, ReviewPair, Summary, NEG_INF,
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

/// One accepted job: what it matches and how, and what its result echoes.
struct Run {
    jobid: String,
    queries: Vec<Uuid>,
    database: Vec<Uuid>,
    config: Config,
    reference: String,
    query_config: Value,
    callback: Option<Callback>,
}

/// Validates the request, resolves its database, admits it (or answers 429 now, never later
/// as a failed job), records the job and runs it in the background.
async fn accept(
    state: &Arc<AppState>,
    params: &Params,
    query_config: Value,
) -> Result<String, ApiError> {
    let request = JobRequest::read(params)?;
    let config_path = query_config.get("config_path").and_then(Value::as_str);
    let config = state.configs.load(config_path)?;
    let reference = thumb_reference(&config);
    state.jobs.remember_reference(&reference, &config);
    jobid_usable(state, &request.jobid)?;
    if let Some(callback) = &request.callback {
        check_callback(state, &callback.url)?;
    }
    // Unknown annotations are refused now, as WBIA's `web_check_uuids` does (600), not
    // accepted as a job that can only fail.
    let mut known = vec![request.query];
    known.extend(request.database.iter().flatten());
    state.annotations().check_known(&known).await?;
    // A null or absent list means every annotation of the query's species, as in WBIA
    // (docs/wbia-api.md); resolved before admission, which needs the pair count.
    let mut database = match request.database {
        Some(list) => list,
        None => state.annotations().same_species(request.query).await?,
    };
    if request.include_query && !database.contains(&request.query) {
        database.push(request.query);
    }
    let queries = vec![request.query];
    let ticket = state.identifier.admit(&queries, &database)?;
    // Unique across replicas too (a no-op without a shared store).
    if !shared::claim(state, &request.jobid).await? {
        return Err(JobIdRefused::new(&request.jobid, JobIdError::Taken).into());
    }
    let run = Run {
        jobid: request.jobid,
        queries,
        database,
        config,
        reference,
        query_config,
        callback: request.callback,
    };
    spawn(state, run, ticket)
}

/// Registers the job as working and runs it in the background.
fn spawn(state: &Arc<AppState>, run: Run, ticket: Ticket) -> Result<String, ApiError> {
    let jobid = run.jobid.clone();
    let progress = Arc::new(Progress::default());
    let task_state = state.clone();
    let task_progress = progress.clone();
    // Registered before it can finish, so that its final state is never overwritten.
    let slot = Arc::new(tokio::sync::Notify::new());
    let registered = slot.clone();
    let task = tokio::spawn(async move {
        registered.notified().await;
        let accepted = std::time::Instant::now();
        let state = task_state;
        let publisher = tokio::spawn(shared::publish_progress(
            state.clone(),
            run.jobid.clone(),
            task_progress.clone(),
        ));
        let job = execute(&state, &run, ticket, &task_progress).await;
        state.metrics.job_seconds.since(accepted);
        publisher.abort();
        finish(&state, &run.jobid, job, run.callback.as_ref()).await;
    });
    if let Err(e) = state
        .jobs
        .insert(&jobid, Job::working(progress, task.abort_handle()))
    {
        // Taken since the check above by a request racing this one.
        task.abort();
        return Err(JobIdRefused::new(&jobid, e).into());
    }
    slot.notify_one();
    Ok(jobid)
}

/// Runs one job to its end: its scores, its result document, or the error it ended with.
async fn execute(state: &AppState, run: &Run, ticket: Ticket, progress: &Progress) -> Job {
    let outcome = async {
        let run_context = RunContext {
            admitted: Some(&ticket),
            progress: Some(progress),
            job: Some(&run.jobid),
        };
        let computed = state
            .identifier
            .identify(&run.queries, &run.database, &run.config, run_context)
            .await?;
        // Only the job result reports name ids; the synchronous endpoint does not need them.
        let annots: Vec<Uuid> = computed.aids.iter().map(|(u, _)| *u).collect();
        let nids = state.annotations().name_rowids(&annots).await?;
        let name_rowids: Vec<(Uuid, Option<i64>)> = annots.into_iter().zip(nids).collect();
        Ok::<_, ApiError>((computed, name_rowids))
    }
    .await;
    drop(ticket);
    let failed = |text: String| Job::ended(JobStatus::Exception, Value::String(text).to_string());
    let (computed, name_rowids) = match outcome {
        Ok(found) => found,
        Err(e) => return failed(format!("{} (code {})", e.message, e.code)),
    };
    // WBIA reports the query's own name (`qname`, `orig_name_list`).
    let query_name = computed.names.get(&run.queries[0]).cloned().flatten();
    let document = identification_result(
        &computed,
        &run.reference,
        &name_rowids,
        query_name.as_deref(),
        &run.queries,
        &run.database,
        &run.query_config,
    );
    let rendered = render(&document);
    let limit = state.jobs.max_result_bytes();
    if rendered.len() > limit {
        return failed(format!(
            "the result takes {} bytes, more than this service keeps for one job ({limit}, \
             --max-job-result-bytes); send a smaller database",
            rendered.len()
        ));
    }
    Job::ended(JobStatus::Completed, rendered)
}

/// Refuses an unusable or taken job id before any work.
fn jobid_usable(state: &AppState, jobid: &str) -> Result<(), JobIdRefused> {
    state
        .jobs
        .check_new(jobid)
        .map_err(|e| JobIdRefused::new(jobid, e))
}

/// A callback must be an http(s) URL and, when `--callback-hosts` is set, name one of them.
fn check_callback(state: &AppState, url: &str) -> Result<(), CallbackRefused> {
    let parsed = reqwest::Url::parse(url).map_err(|e| CallbackRefused::NotAUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CallbackRefused::NotHttp {
            url: url.to_string(),
        });
    }
    if let Some(allowed) = &state.options.callback_hosts {
        let host = parsed.host_str().unwrap_or_default();
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return Err(CallbackRefused::HostNotAllowed {
                host: host.to_string(),
            });
        }
    }
    Ok(())
}

/// Records a job's end, unless it has ended already (cancelled meanwhile), and then posts the
/// callback, as WBIA's engine does.
async fn finish(state: &AppState, id: &str, job: Job, callback: Option<&Callback>) {
    let status = job.status;
    let result = job.result.clone();
    if !state.jobs.end(id, job) {
        return;
    }
    shared::publish_final(state, id, status, result.clone()).await;
    tracing::info!(jobid = %id, status = status.as_str(), "job finished");
    let Some(callback) = callback else { return };
    let rendered = result.as_deref().unwrap_or("null");
    match state
        .wbia_jobs
        .announce(callback, id, status.as_str(), rendered)
        .await
    {
        Ok(()) => {
            state.metrics.callbacks_sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            state
                .metrics
                .callbacks_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(jobid = %id, error = %e, "callback failed after retries");
        }
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
    match cancel_job(&state, &id).await {
        Ok(()) => envelope::ok(json!({"jobid": id, "jobstatus": "exception", "cancelled": true})),
        Err(refused) => ApiError::from(refused).into_response(),
    }
}

/// Ends working job `id` as cancelled, or says why it cannot be.
async fn cancel_job(state: &AppState, id: &str) -> Result<(), CancelRefused> {
    let cancelled = Job::ended(
        JobStatus::Exception,
        Value::String("cancelled by request".into()).to_string(),
    );
    let abort = state.jobs.get(id).and_then(|j| j.abort);
    let result = cancelled.result.clone();
    if state.jobs.end(id, cancelled) {
        if let Some(abort) = abort {
            abort.abort();
        }
        shared::publish(state, id, JobStatus::Exception, None, result).await;
        tracing::info!(jobid = %id, "job cancelled");
        return Ok(());
    }
    let jobid = id.to_string();
    if let Some(job) = state.jobs.get(id) {
        return Err(CancelRefused::Ended {
            jobid,
            status: job.status,
        });
    }
    Err(match shared::lookup(state, id).await {
        Some(job) if job.status != JobStatus::Working => CancelRefused::Ended {
            jobid,
            status: job.status,
        },
        Some(job) => CancelRefused::Elsewhere {
            jobid,
            replica: job.replica,
            status: job.status,
        },
        None => CancelRefused::Unknown { jobid },
    })
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
    match state.jobs.get(&id) {
        Some(job) => {
            let mut status = json!({"status": "ok", "jobid": id, "jobstatus": job.status.as_str()});
            // Not in WBIA's answer; Wildbook ignores keys it does not read.
            if let Some(p) = &job.progress {
                status["progress"] = serde_json::to_value(p.snapshot()).unwrap_or(Value::Null);
            }
            envelope::ok(status)
        }
        None => match shared::lookup(&state, &id).await {
            // Another replica's job, as it last published it.
            Some(job) => {
                let mut status =
                    json!({"status": "ok", "jobid": id, "jobstatus": job.status.as_str()});
                if let Some(p) = job
                    .progress
                    .and_then(|p| serde_json::from_str::<Value>(&p).ok())
                {
                    status["progress"] = p;
                }
                envelope::ok(status)
            }
            None => proxy::forward(&state, &parts, body).await,
        },
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
    let (status, result): (JobStatus, Option<Arc<str>>) = match state.jobs.get(&id) {
        Some(job) => (job.status, job.result),
        None => match shared::lookup(&state, &id).await {
            Some(job) => (job.status, job.result.map(Into::into)),
            None => return proxy::forward(&state, &parts, body).await,
        },
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
    let mut ids = state.jobs.ids();
    // With replicas: every replica's jobs.
    match shared::ids(&state).await {
        Some(Ok(all)) => ids.extend(all),
        Some(Err(e)) => return e.into_response(),
        None => {}
    }
    // WBIA's own jobs (its other pipelines, passed through) are listed too, as WBIA lists
    // them; without WBIA the list is ours alone.
    match state.wbia_jobs.ids().await {
        Ok(theirs) => ids.extend(theirs),
        Err(e) => tracing::warn!(error = %e, "WBIA's job list is left out"),
    }
    ids.sort();
    ids.dedup();
    envelope::ok(json!(ids))
}
