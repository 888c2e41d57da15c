//! The HTTP face of the service: WBIA-compatible query endpoints, health and metrics.

pub mod envelope;
pub mod jobs;
pub mod lenient_uri;
pub mod openapi;
pub mod params;
mod proxy;
mod review;
mod thumbs;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures::future::try_join_all;
use serde_json::{json, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;
use wbia_client::{fancy_uuid, WbiaClient};
use wbia_lightglue_engine::{rank, Config, ConfigDir, Engine, QueryResult, ScoredAnnot};

use envelope::ApiError;
use params::Params;

/// Most annotations one request may name.
pub const MAX_ANNOTS_PER_REQUEST: usize = 5_000;
/// Database annotations sent to the model worker at once: progress is reported per chunk, and
/// other requests' work can run between chunks.
const MATCH_CHUNK: usize = 64;

/// How far a computation has got (shown in job status): stage, and items done of total.
#[derive(Debug, Default)]
pub struct Progress {
    stage: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    const STAGES: [&'static str; 3] = ["fetch", "extract", "match"];

    fn start(&self, stage: usize, total: usize) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total as u64, Ordering::Relaxed);
        self.stage.store(stage as u64, Ordering::Relaxed);
    }

    fn advance(&self, n: usize) {
        self.done.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Value {
        let stage = self.stage.load(Ordering::Relaxed) as usize;
        json!({
            "stage": Self::STAGES.get(stage).copied().unwrap_or("fetch"),
            "done": self.done.load(Ordering::Relaxed),
            "total": self.total.load(Ordering::Relaxed),
        })
    }
}

pub struct AppState {
    pub engine: Engine,
    pub jobs: jobs::JobStore,
    pub wbia: WbiaClient,
    pub configs: ConfigDir,
    pub ready: AtomicBool,
    pub metrics: Metrics,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub queries: AtomicU64,
    pub query_errors: AtomicU64,
    pub fetch_ms: AtomicU64,
    pub features_ms: AtomicU64,
    pub match_ms: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        // POST: the plugin README's form (ours). GET: WBIA's `aid` form, answered here for
        // LightGlue and passed through otherwise.
        .route(
            "/api/review/query/chip/best/",
            post(query_chip_best).get(review::chip_best_by_aid),
        )
        .route("/api/query/graph/match/thumb/", get(thumbs::match_thumb))
        .route("/api/test/heartbeat/", any(heartbeat))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route(
            "/api/engine/query/graph/",
            get(jobs::start).post(jobs::start),
        )
        .route("/api/engine/job/", get(jobs::list).post(jobs::list))
        .route(
            "/api/engine/job/status/",
            get(jobs::status).post(jobs::status),
        )
        .route(
            "/api/engine/job/result/",
            get(jobs::result).post(jobs::result),
        )
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/swagger-ui")
                .url("/api-docs/openapi.json", <openapi::ApiDoc as utoipa::OpenApi>::openapi()),
        )
        .fallback(proxy::pass_through)
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

/// Serves until ctrl-c. Warm-up (model load) runs in the background; `/health` says when
/// it is done. WBIA need not be reachable at start.
pub async fn serve(state: Arc<AppState>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    spawn_warm_up(state.clone());
    axum::serve(lenient_uri::LenientListener(listener), router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

pub fn spawn_warm_up(state: Arc<AppState>) {
    tokio::spawn(async move {
        if !state.wbia.heartbeat().await {
            tracing::warn!(url = state.wbia.base_url(), "WBIA is not reachable (yet)");
        }
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

async fn heartbeat() -> Response {
    envelope::ok(Value::Bool(true))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.ready.load(Ordering::Acquire);
    let wbia = state.wbia.heartbeat().await;
    let body =
        Json(json!({"ready": ready, "wbia_reachable": wbia, "wbia_url": state.wbia.base_url()}));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    let config = state.configs.load(None).ok();
    Json(json!({
        "name": "wbia-lightglue",
        "version": env!("CARGO_PKG_VERSION"),
        "pipeline_root": "LightGlue",
        "extractor": "aliked-n16",
        "matcher": "lightglue (aliked)",
        "device": state.engine.runtime.device,
        "precision": state.engine.runtime.precision,
        "match_batch": state.engine.runtime.match_batch,
        "config_dir": state.configs.path(),
        "default_config": config,
        "wbia_url": state.wbia.base_url(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let c = &state.engine.cache_stats;
    let lines = [
        (
            "wbia_lightglue_queries_total",
            m.queries.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_query_errors_total",
            m.query_errors.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_fetch_milliseconds_total",
            m.fetch_ms.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_extract_milliseconds_total",
            m.features_ms.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_match_milliseconds_total",
            m.match_ms.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_feature_cache_hits_total",
            c.hits.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_feature_cache_misses_total",
            c.misses.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_feature_store_hits_total",
            c.store_hits.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_extractions_total",
            c.extractions.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_pair_score_store_hits_total",
            c.score_store_hits.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_pairs_matched_total",
            c.pairs_matched.load(Ordering::Relaxed),
        ),
        (
            "wbia_lightglue_feature_cache_entries",
            state.engine.cached_features() as u64,
        ),
        (
            "wbia_lightglue_queue_depth",
            state.engine.queue_depth() as u64,
        ),
    ];
    let text: String = lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// `POST /api/review/query/chip/best/` — the plugin README's form (CONTRACT.md §2 notes that
/// upstream WBIA has only a GET taking one `aid`; this POST form is this service's extension):
/// fields `query_annot_uuid_list`, `database_annot_uuid_list`, `pipeline_root=LightGlue`,
/// optional `config_path`.
async fn query_chip_best(State(state): State<Arc<AppState>>, req: Request) -> Response {
    state.metrics.queries.fetch_add(1, Ordering::Relaxed);
    match run_query(&state, req).await {
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
    let queries = params.uuid_list("query_annot_uuid_list")?;
    let database = params.uuid_list("database_annot_uuid_list")?;
    let computed = compute(state, &queries, &database, &config, None).await?;
    Ok(json!({
        "pipeline_root": "LightGlue",
        "config": config_json(&config),
        "query_results": computed.results.iter().map(query_json).collect::<Vec<_>>(),
    }))
}

/// What a query run produces: per query, ranked results; and the rowids WBIA gave for the
/// annotations on the way.
pub struct Computed {
    pub results: Vec<QueryResult>,
    pub aids: Vec<(Uuid, i64)>,
}

/// Validates the lists, fetches chips, extracts features (cached) and scores every query
/// against the database (minus itself).
pub async fn compute(
    state: &AppState,
    queries: &[Uuid],
    database: &[Uuid],
    config: &Config,
    progress: Option<&Progress>,
) -> Result<Computed, ApiError> {
    let start = |stage, total| {
        if let Some(p) = progress {
            p.start(stage, total)
        }
    };
    let advance = |n| {
        if let Some(p) = progress {
            p.advance(n)
        }
    };
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
    check_duplicates(queries, database)?;

    // One lookup for every annotation, so all unknown UUIDs are reported at once (code 600).
    let mut all: Vec<Uuid> = queries.to_vec();
    all.extend(database.iter().filter(|u| !queries.contains(u)));
    let started = Instant::now();
    let aids = state.wbia.annot_aids(&all).await?;
    let missing: Vec<Value> = all
        .iter()
        .zip(&aids)
        .filter(|(_, aid)| aid.is_none())
        .map(|(u, _)| fancy_uuid(u))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            600,
            "annotations unknown to WBIA",
            json!({"missing_image_uuid_list": [], "missing_annot_uuid_list": missing}),
        ));
    }
    let aids: Vec<(Uuid, i64)> = all
        .iter()
        .copied()
        .zip(aids.into_iter().flatten())
        .collect();
    let names = state.wbia.annot_names(&all).await?;
    start(0, aids.len());
    let chips = try_join_all(aids.iter().map(|&(uuid, aid)| async move {
        state
            .wbia
            .chip_by_aid(uuid, aid)
            .await
            .inspect(|_| advance(1))
            .map(|bytes| (uuid, bytes))
            .map_err(|e| {
                ApiError::from(wbia_client::Error::Chip {
                    uuid,
                    cause: Box::new(e),
                })
            })
    }))
    .await?;
    add_ms(&state.metrics.fetch_ms, started);

    let started = Instant::now();
    start(1, chips.len());
    let features = try_join_all(chips.into_iter().map(|(uuid, bytes)| async move {
        let f = state.engine.features(uuid, bytes, config).await?;
        advance(1);
        Ok::<_, ApiError>((uuid, f))
    }))
    .await?;
    add_ms(&state.metrics.features_ms, started);
    let index = |u: &Uuid| all.iter().position(|v| v == u).expect("known annotation");

    let started = Instant::now();
    let mut results = Vec::with_capacity(queries.len());
    let pairs = queries
        .iter()
        .map(|q| database.iter().filter(|d| *d != q).count())
        .sum();
    start(2, pairs);
    for q in queries {
        let others: Vec<&Uuid> = database.iter().filter(|d| *d != q).collect();
        let db: Vec<_> = others
            .iter()
            .map(|d| features[index(d)].1.clone())
            .collect();
        let mut scores = Vec::with_capacity(db.len());
        for chunk in db.chunks(MATCH_CHUNK) {
            let query = &features[index(q)].1;
            scores.extend(state.engine.scores(query, chunk, config).await?);
            advance(chunk.len());
        }
        let scored = others
            .iter()
            .zip(scores)
            .map(|(d, score)| ScoredAnnot {
                annot: **d,
                score,
                name: names[index(d)].clone(),
            })
            .collect();
        results.push(rank(*q, scored));
    }
    add_ms(&state.metrics.match_ms, started);
    Ok(Computed { results, aids })
}

fn add_ms(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_millis() as u64, Ordering::Relaxed);
}

fn config_json(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// WBIA refuses duplicate UUIDs within a list with code 601 (`web_check_uuids`).
fn check_duplicates(queries: &[Uuid], database: &[Uuid]) -> Result<(), ApiError> {
    let dups = |list: &[Uuid]| -> Vec<Value> {
        list.iter()
            .enumerate()
            .filter(|(i, u)| list[..*i].contains(u))
            .map(|(i, u)| json!([i, fancy_uuid(u)]))
            .collect()
    };
    let (q, d) = (dups(queries), dups(database));
    if q.is_empty() && d.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        601,
        "duplicate annotation UUIDs",
        json!({"qdup_pos_map": q, "ddup_pos_map": d}),
    ))
}

fn query_json(r: &QueryResult) -> Value {
    let annot = |s: &ScoredAnnot| json!({"dannot_uuid": fancy_uuid(&s.annot), "score": s.score, "dname": s.name});
    json!({
        "qannot_uuid": fancy_uuid(&r.query),
        "best": r.best().map(annot),
        "ranked": r.ranked.iter().map(annot).collect::<Vec<_>>(),
        "name_scores": r.name_scores.iter().map(|n| json!({
            "name": n.name, "score": n.score, "dannot_uuid": fancy_uuid(&n.best_annot)
        })).collect::<Vec<_>>(),
    })
}
