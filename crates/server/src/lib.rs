//! The HTTP face of the service: WBIA-compatible query endpoints, health and metrics.

mod auth;
pub mod envelope;
mod health;
pub mod job_refusals;
pub mod jobs;
pub mod lenient_uri;
mod listen;
mod metrics;
pub mod openapi;
pub mod params;
mod proxy;
mod review;
pub mod schema;
mod split;
mod thumbs;
mod upload;

pub use health::WbiaHealth;
pub use listen::{serve, serve_on, shutdown_signal, SHUTDOWN_GRACE};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;
use wbia_client::WbiaClient;
use wbia_lightglue_engine::metrics::Histogram;
use wbia_lightglue_engine::{
    rank_all, Annot, Config, ConfigDir, Engine, Progress, QueryResult, ScoredAnnot, Skipped,
    Ticket, UnusableChips,
};

use envelope::ApiError;
use params::Params;
use wbia_lightglue_service::{Annotations, ChipOptions, WbiaJobs};

/// Most annotations one request may name.
/// Requests stream their chips (memory does not grow with this), so the bound is on the
/// lists and results a request carries.
pub const MAX_ANNOTS_PER_REQUEST: usize = 50_000;

/// Limits and policies of the HTTP side (the engine's are in `EngineOptions`).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// When set, every endpoint this service answers itself (not the pass-through to WBIA,
    /// not `/health`) wants `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// Hosts a job's `callback_url` may name; `None` allows any, as WBIA does.
    pub callback_hosts: Option<Vec<String>>,
    /// Requests forwarded to WBIA at once; more are answered 503 with `Retry-After`.
    pub max_proxied: usize,
    /// Open client connections; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head within this long (a new one,
    /// or an idle keep-alive one) is closed.
    pub header_read_timeout: Duration,
    /// Longest pause while a request body arrives (an idle timeout, not a total one).
    pub body_idle_timeout: Duration,
    /// Bytes of finished job results held for `/api/engine/job/result/`; the oldest
    /// finished jobs are forgotten first.
    pub max_job_result_bytes: usize,
    /// How often WBIA's heartbeat is checked for `/health`.
    pub wbia_check_interval: Duration,
    /// With a shared PostgreSQL store: engine jobs of more database annotations than this
    /// are split into chunks of this many, matched by every replica.
    pub chunk_annotations: usize,
    /// How long a replica may hold a chunk without renewing it (it renews at a third of
    /// this while working); a replica that dies loses its chunk after at most this.
    pub chunk_lease: Duration,
    /// With a shared PostgreSQL store: a working job whose replica has published nothing
    /// for this long (it publishes every 2 s, `jobs/shared.rs`) ends as `exception` when
    /// any replica reads it.
    pub job_lease: Duration,
    /// Where chips come from: WBIA's image files (as WBIA makes them) or its downloads.
    pub chips: ChipOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            api_token: None,
            callback_hosts: None,
            max_proxied: 64,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_job_result_bytes: 1 << 30,
            wbia_check_interval: Duration::from_secs(10),
            chunk_annotations: 64,
            chunk_lease: Duration::from_secs(120),
            job_lease: Duration::from_secs(60),
            chips: ChipOptions::default(),
        }
    }
}

pub struct AppState {
    pub engine: Engine,
    pub jobs: jobs::JobStore,
    /// WBIA as the pass-through reaches it (requests forwarded, its health).
    pub wbia: WbiaClient,
    /// WBIA's own engine jobs, and the callbacks of ours.
    pub wbia_jobs: WbiaJobs,
    /// Annotations resolved in WBIA, and their chips.
    pub annotations: Annotations,
    pub configs: ConfigDir,
    pub ready: AtomicBool,
    pub metrics: Metrics,
    pub options: ServerOptions,
    /// Reachability of WBIA, checked in the background (never on a `/health` request).
    pub wbia_health: WbiaHealth,
    /// This process's name among replicas sharing a PostgreSQL store (jobs record who runs
    /// them): host name and process id.
    pub replica: String,
    /// Chunks of split jobs this replica has worked on.
    pub chunk_metrics: split::ChunkMetrics,
    proxy_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(
        engine: Engine,
        wbia: WbiaClient,
        configs: ConfigDir,
        options: ServerOptions,
    ) -> Self {
        Self {
            engine,
            jobs: jobs::JobStore::new(options.max_job_result_bytes),
            annotations: Annotations::new(wbia.clone(), options.chips.clone()),
            wbia_jobs: WbiaJobs::new(wbia.clone()),
            wbia,
            configs,
            ready: AtomicBool::new(false),
            metrics: Metrics::default(),
            wbia_health: WbiaHealth::default(),
            replica: replica_name(),
            chunk_metrics: split::ChunkMetrics::default(),
            proxy_slots: Arc::new(tokio::sync::Semaphore::new(options.max_proxied.max(1))),
            options,
        }
    }
}

/// `host:pid`: unique among replicas on several machines or in one.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Counters and request latencies for `/metrics` (the engine keeps the per-stage ones).
#[derive(Default)]
pub struct Metrics {
    pub queries: AtomicU64,
    pub query_errors: AtomicU64,
    /// Synchronous `chip/best` queries, start to answer.
    pub query_seconds: Histogram,
    /// Engine jobs, accepted to finished.
    pub job_seconds: Histogram,
    /// Requests passed through to WBIA, and those refused for want of a slot.
    pub proxied: AtomicU64,
    pub proxy_refused: AtomicU64,
    /// Job callbacks delivered, and those that failed after every retry.
    pub callbacks_sent: AtomicU64,
    pub callbacks_failed: AtomicU64,
    /// Requests refused for a missing or wrong bearer token.
    pub unauthorized: AtomicU64,
    /// Database annotations left out of answers because their chips cannot be used.
    pub annotations_skipped: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let ours = Router::new()
        // POST: the plugin README's form (ours). GET: WBIA's `aid` form, answered here for
        // LightGlue and passed through otherwise.
        .route(
            "/api/review/query/chip/best/",
            post(query_chip_best).get(review::chip_best_by_aid),
        )
        .route("/api/query/graph/match/thumb/", get(thumbs::match_thumb))
        .route(
            "/api/lightglue/match/",
            post(upload::match_upload).layer(axum::extract::DefaultBodyLimit::max(
                upload::MAX_UPLOAD_BYTES,
            )),
        )
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route(
            "/api/engine/query/graph/",
            get(jobs::start).post(jobs::start),
        )
        .route("/api/engine/job/", get(jobs::list).post(jobs::list))
        .route(
            "/api/engine/job/cancel/",
            get(jobs::cancel).post(jobs::cancel),
        )
        .route(
            "/api/engine/job/status/",
            get(jobs::status).post(jobs::status),
        )
        .route(
            "/api/engine/job/result/",
            get(jobs::result).post(jobs::result),
        )
        // Only the routes above; probes and the pass-through never ask for the token.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    ours.route("/api/test/heartbeat/", any(heartbeat))
        .route("/health", get(health::ready))
        .route("/health/live", get(health::live))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/swagger-ui")
                .url("/api-docs/openapi.json", <openapi::ApiDoc as utoipa::OpenApi>::openapi()),
        )
        .fallback(proxy::pass_through)
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.options.body_idle_timeout,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

pub fn spawn_warm_up(state: Arc<AppState>) {
    tokio::spawn(async move {
        let config = match state.configs.load(None) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "default configuration is invalid");
                return;
            }
        };
        match state.engine.warm_up(&config).await {
            Ok(()) => {
                state.ready.store(true, Ordering::Release);
                tracing::info!("models loaded; ready");
            }
            Err(e) => tracing::error!(error = %e, "warm-up failed"),
        }
    });
}

#[utoipa::path(get, path = "/api/test/heartbeat/", tag = "health",
    responses((status = 200, description = "`response`: true")))]
async fn heartbeat() -> Response {
    envelope::ok(Value::Bool(true))
}

#[utoipa::path(get, path = "/info", tag = "health",
    responses((status = 200, description = "version, model, device, precision, default configuration")))]
async fn info(State(state): State<Arc<AppState>>) -> Response {
    let config = state.configs.load(None).ok();
    // The default configuration's variant (a request's `config_path` may name another).
    let extractor = config.as_ref().map(|c| c.model_name.clone());
    Json(json!({
        "name": "wbia-lightglue",
        "version": env!("CARGO_PKG_VERSION"),
        "pipeline_root": "LightGlue",
        "extractor": extractor,
        "model_versions": state.engine.runtime.model_versions,
        "matcher": "lightglue (aliked)",
        "device": state.engine.runtime.device,
        "precision": state.engine.runtime.precision,
        "match_batch": state.engine.runtime.match_batch,
        "config_dir": state.configs.path(),
        "default_config": config,
        "wbia_url": state.wbia.base_url(),
        "chips": chips_info(&state.annotations),
    }))
    .into_response()
}

/// Where chips come from, and whether WBIA's image files could be read here.
fn chips_info(annotations: &Annotations) -> Value {
    let stats = annotations.stats();
    json!({
        "mode": annotations.options().mode,
        "wbia_path_map": annotations.options().path_map,
        "made_from_image_files": stats.from_images.load(Ordering::Relaxed),
        "image_files_unreadable": stats.unreadable.load(Ordering::Relaxed),
        "last_unreadable": stats.last_unreadable(),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text with HELP/TYPE: counters (queries, refusals, cache, store, downloads, extractions, pairs), gauges (queue depth, admitted requests, pending pairs, cache bytes), histograms of stage and request seconds")))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics::render(&state),
    )
        .into_response()
}

#[utoipa::path(
    post,
    path = "/api/review/query/chip/best/",
    tag = "query",
    request_body(content = crate::schema::ChipBestRequest, content_type = "multipart/form-data",
        description = "also application/x-www-form-urlencoded or application/json"),
    responses(
        (status = 200, description = "ranked database annotations per query", body = crate::schema::ChipBestResponse),
        (status = 400, description = "bad parameter", body = crate::schema::ErrorResponse),
        (status = 429, description = "busy (too many admitted requests or pending pairs); retry after the Retry-After header", body = crate::schema::ErrorResponse),
        (status = 502, description = "WBIA unreachable, failing or too slow for a chip", body = crate::schema::ErrorResponse),
        (status = 600, description = "annotation UUIDs unknown to WBIA", body = crate::schema::ErrorResponse),
    )
)]
/// `POST /api/review/query/chip/best/` — the plugin README's form (docs/wbia-api.md §2 notes that
/// upstream WBIA has only a GET taking one `aid`; this POST form is this service's extension):
/// fields `query_annot_uuid_list`, `database_annot_uuid_list`, `pipeline_root=LightGlue`,
/// optional `config_path`.
async fn query_chip_best(State(state): State<Arc<AppState>>, req: Request) -> Response {
    state.metrics.queries.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let answer = run_query(&state, req).await;
    state.metrics.query_seconds.since(started);
    match answer {
        Ok(v) => envelope::ok(v),
        Err(e) => {
            state.metrics.query_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(code = e.code, message = %e.message, "query failed");
            e.into_response()
        }
    }
}

async fn run_query(state: &AppState, req: Request) -> Result<Value, ApiError> {
    let (params, _, _) = Params::read(req).await?;
    match params.string("pipeline_root").as_deref() {
        Some("LightGlue") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "pipeline_root {other:?} is not served here (only \"LightGlue\")"
            )))
        }
        None => {
            return Err(ApiError::bad_request(
                "missing parameter pipeline_root (use LightGlue)",
            ))
        }
    }
    let config = state
        .configs
        .load(params.string("config_path").as_deref())?;
    let mut lists = params
        .uuid_lists(&["query_annot_uuid_list", "database_annot_uuid_list"])?
        .into_iter();
    let (queries, database) = (
        lists.next().unwrap_or_default(),
        lists.next().unwrap_or_default(),
    );
    let computed = compute(state, None, &queries, &database, &config, None, None).await?;
    Ok(json!({
        "pipeline_root": "LightGlue",
        "config": config_json(&config),
        "query_results": computed
            .results
            .iter()
            .map(|r| query_json(r, &config))
            .collect::<Vec<_>>(),
        "skipped": computed.skipped.iter().map(skipped_json).collect::<Vec<_>>(),
    }))
}

/// What a query run produces: per query, ranked results; and the rowids WBIA gave for the
/// annotations on the way.
pub struct Computed {
    pub results: Vec<QueryResult>,
    pub aids: Vec<(Uuid, i64)>,
    /// Database annotations left out because their chips cannot be used.
    pub skipped: Vec<Skipped>,
    /// Every annotation's name as WBIA gave it (`None`: unnamed), queries included.
    pub names: std::collections::HashMap<Uuid, Option<String>>,
}

/// What WBIA checks of a request's lists before any work: non-empty, not too long, no
/// duplicates (601).
pub fn check_lists(queries: &[Uuid], database: &[Uuid]) -> Result<(), ApiError> {
    if queries.is_empty() || database.is_empty() {
        return Err(ApiError::bad_request(
            "query_annot_uuid_list and database_annot_uuid_list must not be empty",
        ));
    }
    if queries.len() + database.len() > MAX_ANNOTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ANNOTS_PER_REQUEST} annotations per request"
        )));
    }
    check_duplicates(queries, database)
}

/// Pairs a request scores: each query against the database minus itself.
pub fn pair_count(queries: &[Uuid], database: &[Uuid]) -> usize {
    queries
        .iter()
        .map(|q| database.iter().filter(|d| *d != q).count())
        .sum()
}

/// Validates the lists, admits the request (unless `admitted` already holds its ticket),
/// resolves the annotations with WBIA, and has the engine score every query against the
/// database (minus itself): chips stream through fetch → decode → extract → match, those
/// whose features are cached or stored (keyed by WBIA's image UUID, bbox and theta) are not
/// downloaded.
/// Scores and ranks `queries` against `database`. `split_job` names the engine job this is
/// for: with a shared store, a large one is split across replicas (`split.rs`).
pub async fn compute(
    state: &AppState,
    admitted: Option<&Ticket>,
    queries: &[Uuid],
    database: &[Uuid],
    config: &Config,
    progress: Option<&Progress>,
    split_job: Option<&str>,
) -> Result<Computed, ApiError> {
    check_lists(queries, database)?;
    let own_ticket;
    let ticket = match admitted {
        Some(t) => t,
        None => {
            own_ticket = state.engine.admit(pair_count(queries, database))?;
            &own_ticket
        }
    };

    // One lookup for every annotation, so all unknown UUIDs are reported at once (code 600).
    let mut all: Vec<Uuid> = queries.to_vec();
    all.extend(database.iter().filter(|u| !queries.contains(u)));
    let resolved = state.annotations.resolve(&all).await?;
    let aids: Vec<(Uuid, i64)> = resolved.iter().map(|a| (a.uuid, a.aid)).collect();
    let annot_of: std::collections::HashMap<Uuid, Annot> =
        resolved.iter().map(|a| (a.uuid, a.annot())).collect();
    let annots =
        |list: &[Uuid]| -> Vec<Annot> { list.iter().map(|u| annot_of[u].clone()).collect() };
    let source = state.annotations.chips(&resolved);
    let own_progress = Progress::default();
    let progress = progress.unwrap_or(&own_progress);
    let others: Vec<Uuid> = match queries {
        [q] => database.iter().filter(|d| *d != q).copied().collect(),
        _ => Vec::new(),
    };
    let found = match split_job {
        Some(jobid) if queries.len() == 1 && split::splits(state, others.len()) => {
            // In the shared store before the chunks are queued: no replica extracts it again.
            let query = &annots(queries)[0];
            state
                .engine
                .prepare_query(ticket, &source, query, config, progress)
                .await?;
            split::score(state, jobid, queries[0], &others, config, progress).await?
        }
        _ => {
            state
                .engine
                .identify_all(
                    ticket,
                    &source,
                    &annots(queries),
                    &annots(database),
                    config,
                    progress,
                    UnusableChips::Skip,
                )
                .await?
        }
    };
    if !found.skipped.is_empty() {
        state
            .metrics
            .annotations_skipped
            .fetch_add(found.skipped.len() as u64, Ordering::Relaxed);
    }
    let names: std::collections::HashMap<Uuid, Option<String>> =
        resolved.into_iter().map(|a| (a.uuid, a.name)).collect();
    let results = rank_all(queries, database, found.scores, &names, config);
    Ok(Computed {
        results,
        aids,
        skipped: found.skipped,
        names,
    })
}

fn config_json(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// WBIA refuses duplicate UUIDs within a list with code 601 (`web_check_uuids`).
/// 601 for UUIDs listed more than once, in WBIA's shape: per list, an object from each
/// repeated UUID to all its positions. (WBIA 4.0.4 fills both maps from the database list;
/// the engine's query list holds one annotation, so its `qdup_pos_map` is empty here.)
fn check_duplicates(queries: &[Uuid], database: &[Uuid]) -> Result<(), ApiError> {
    let dups = |list: &[Uuid]| -> serde_json::Map<String, Value> {
        let mut positions: std::collections::HashMap<Uuid, Vec<usize>> = Default::default();
        for (i, u) in list.iter().enumerate() {
            positions.entry(*u).or_default().push(i);
        }
        let mut repeated: Vec<(Uuid, Vec<usize>)> =
            positions.into_iter().filter(|(_, p)| p.len() > 1).collect();
        repeated.sort_by_key(|(_, p)| p[0]);
        repeated
            .into_iter()
            .map(|(u, p)| (u.to_string(), json!(p)))
            .collect()
    };
    let (q, d) = (dups(queries), dups(database));
    if q.is_empty() && d.is_empty() {
        return Ok(());
    }
    Err(ApiError::duplicate_uuids(q, d))
}

/// A database annotation left out, in the documented shape.
pub(crate) fn skipped_json(s: &Skipped) -> schema::SkippedAnnotation {
    schema::SkippedAnnotation {
        dannot_uuid: (&s.annot).into(),
        reason: s.reason.clone(),
    }
}

/// One query's answer, in the documented shape.
fn query_json(r: &QueryResult, config: &Config) -> schema::QueryResult {
    // Written as `score` is: the shortest decimal that reads back as the same f32.
    let shortest = |v: f32| schema::shortest_decimal(v).unwrap_or(f64::from(v));
    let members = |s: &ScoredAnnot| -> Option<std::collections::BTreeMap<String, f64>> {
        config.model_name.is_ensemble().then(|| {
            config
                .model_name
                .names()
                .iter()
                .cloned()
                .zip(s.members.as_slice().iter().map(|&v| shortest(v)))
                .collect()
        })
    };
    let annot = |s: &ScoredAnnot| schema::ScoredAnnotation {
        dannot_uuid: (&s.annot).into(),
        score: s.score,
        calibrated_score: s.calibrated,
        rotation: s.rotation.degrees(),
        dname: s.name.clone(),
        member_scores: members(s),
    };
    schema::QueryResult {
        qannot_uuid: (&r.query).into(),
        best: r.best().map(annot),
        ranked: r.ranked.iter().map(annot).collect(),
        name_scores: r
            .name_scores
            .iter()
            .map(|n| schema::NameScore {
                name: n.name.clone(),
                score: n.score,
                calibrated_score: n.calibrated,
                dannot_uuid: (&n.best_annot).into(),
            })
            .collect(),
    }
}
