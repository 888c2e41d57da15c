//! The HTTP face of the service: WBIA-compatible query endpoints, health and metrics.

mod auth;
pub mod envelope;
mod health;
pub mod jobs;
pub mod lenient_uri;
mod listen;
mod metrics;
pub mod openapi;
pub mod params;
mod proxy;
mod review;
pub mod schema;
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
use wbia_client::WbiaClient;
use wbia_lightglue_engine::metrics::Histogram;
use wbia_lightglue_engine::{Config, ConfigDir, Engine, QueryResult, ScoredAnnot, Skipped};

use envelope::ApiError;
use params::Params;
use wbia_lightglue_service::jobs::{JobOptions, JobRunner, JobStore};
use wbia_lightglue_service::{
    Annotations, ChipOptions, Identifier, RunContext, SplitOptions, WbiaJobs,
};

/// Limits and policies of the HTTP side (the engine's are in `EngineOptions`). What the
/// service layer uses (callback hosts, leases, chunk size) is handed to it once, by
/// [`AppState::new`]; changing these afterwards changes nothing.
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
    /// for this long (it publishes every 2 s, the service's `jobs/board.rs`) ends as `exception` when
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
    /// Scoring: the engine, WBIA's annotations and their chips, split jobs.
    pub identifier: Arc<Identifier>,
    /// Engine jobs: accepted, run, remembered, shared with the replicas.
    pub runner: Arc<JobRunner>,
    /// WBIA as the pass-through reaches it (requests forwarded, its health).
    pub wbia: WbiaClient,
    pub configs: ConfigDir,
    pub ready: AtomicBool,
    pub metrics: Metrics,
    pub options: ServerOptions,
    /// Reachability of WBIA, checked in the background (never on a `/health` request).
    pub wbia_health: WbiaHealth,
    proxy_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(
        engine: Engine,
        wbia: WbiaClient,
        configs: ConfigDir,
        options: ServerOptions,
    ) -> Self {
        let annotations = Annotations::new(wbia.clone(), options.chips.clone());
        let split = SplitOptions {
            chunk_annotations: options.chunk_annotations,
            chunk_lease: options.chunk_lease,
            replica: replica_name(),
        };
        let identifier = Arc::new(Identifier::new(Arc::new(engine), annotations, split));
        let runner = JobRunner::new(
            identifier.clone(),
            JobStore::new(options.max_job_result_bytes),
            WbiaJobs::new(wbia.clone()),
            JobOptions {
                callback_hosts: options.callback_hosts.clone(),
                job_lease: options.job_lease,
            },
            Box::new(jobs::WbiaDocuments),
        );
        Self {
            identifier,
            runner: Arc::new(runner),
            wbia,
            configs,
            ready: AtomicBool::new(false),
            metrics: Metrics::default(),
            wbia_health: WbiaHealth::default(),
            proxy_slots: Arc::new(tokio::sync::Semaphore::new(options.max_proxied.max(1))),
            options,
        }
    }

    pub fn engine(&self) -> &Engine {
        self.identifier.engine()
    }

    /// Annotations resolved in WBIA, and their chips.
    pub fn annotations(&self) -> &Annotations {
        self.identifier.annotations()
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
    /// Requests passed through to WBIA, and those refused for want of a slot.
    pub proxied: AtomicU64,
    pub proxy_refused: AtomicU64,
    /// Requests refused for a missing or wrong bearer token.
    pub unauthorized: AtomicU64,
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
        match state.engine().warm_up(&config).await {
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
        "model_versions": state.engine().runtime.model_versions,
        "matcher": "lightglue (aliked)",
        "device": state.engine().runtime.device,
        "precision": state.engine().runtime.precision,
        "match_batch": state.engine().runtime.match_batch,
        "config_dir": state.configs.path(),
        "default_config": config,
        "wbia_url": state.wbia.base_url(),
        "chips": chips_info(state.annotations()),
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
    let computed = state
        .identifier
        .identify(&queries, &database, &config, RunContext::default())
        .await?;
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

fn config_json(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
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
