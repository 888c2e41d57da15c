//! `/metrics`: Prometheus text with HELP and TYPE for every counter and gauge the service
//! keeps, and the latency histograms.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::AppState;

enum Kind {
    Counter,
    Gauge,
}

/// One exported series.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: u64,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str, value: u64) -> Self {
        Self {
            name,
            kind,
            help,
            value,
        }
    }
}

/// The whole page.
pub(crate) fn render(state: &AppState) -> String {
    let mut text = String::new();
    let families = [requests, features, chips, chunks, gauges]
        .into_iter()
        .flat_map(|group| group(state));
    for Family {
        name,
        kind,
        help,
        value,
    } in families
    {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    histograms(state, &mut text);
    text
}

/// Requests answered, refused and passed through, callbacks, skipped annotations.
fn requests(state: &AppState) -> Vec<Family> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let m = &state.metrics;
    let c = &state.engine().cache_stats;
    vec![
        Family::new(
            "wbia_lightglue_queries_total",
            Kind::Counter,
            "Synchronous chip/best queries received.",
            load(&m.queries),
        ),
        Family::new(
            "wbia_lightglue_query_errors_total",
            Kind::Counter,
            "Synchronous queries answered with an error.",
            load(&m.query_errors),
        ),
        Family::new(
            "wbia_lightglue_requests_refused_total",
            Kind::Counter,
            "Requests refused at admission (HTTP 429).",
            load(&c.requests_refused),
        ),
        Family::new(
            "wbia_lightglue_proxied_total",
            Kind::Counter,
            "Requests passed through to WBIA.",
            load(&m.proxied),
        ),
        Family::new(
            "wbia_lightglue_proxy_refused_total",
            Kind::Counter,
            "Pass-through requests refused because --max-proxied were in flight (HTTP 503).",
            load(&m.proxy_refused),
        ),
        Family::new(
            "wbia_lightglue_callbacks_sent_total",
            Kind::Counter,
            "Job callbacks delivered.",
            load(&state.runner.metrics().callbacks_sent),
        ),
        Family::new(
            "wbia_lightglue_callbacks_failed_total",
            Kind::Counter,
            "Job callbacks that failed after every retry.",
            load(&state.runner.metrics().callbacks_failed),
        ),
        Family::new(
            "wbia_lightglue_unauthorized_total",
            Kind::Counter,
            "Requests refused for a missing or wrong bearer token (HTTP 401).",
            load(&m.unauthorized),
        ),
        Family::new(
            "wbia_lightglue_annotations_skipped_total",
            Kind::Counter,
            "Database annotations left out of an answer because their chips cannot be used (WBIA refused them, too large, not a readable image).",
            load(&state.identifier.metrics().annotations_skipped),
        ),
    ]
}

/// Features and pair scores: cache, store, extraction, matching.
fn features(state: &AppState) -> Vec<Family> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let c = &state.engine().cache_stats;
    vec![
        Family::new(
            "wbia_lightglue_feature_cache_hits_total",
            Kind::Counter,
            "Feature sets found in memory.",
            load(&c.hits),
        ),
        Family::new(
            "wbia_lightglue_feature_cache_misses_total",
            Kind::Counter,
            "Feature sets not in memory.",
            load(&c.misses),
        ),
        Family::new(
            "wbia_lightglue_feature_store_hits_total",
            Kind::Counter,
            "Feature sets read from the persisted store.",
            load(&c.store_hits),
        ),
        Family::new(
            "wbia_lightglue_extractions_total",
            Kind::Counter,
            "Feature sets computed by ALIKED.",
            load(&c.extractions),
        ),
        Family::new(
            "wbia_lightglue_pair_score_store_hits_total",
            Kind::Counter,
            "Pair scores read from the persisted store.",
            load(&c.score_store_hits),
        ),
        Family::new(
            "wbia_lightglue_store_writes_dropped_total",
            Kind::Counter,
            "Store writes given up after the store failed for 30 s (recomputed when needed).",
            load(&c.store_writes_dropped),
        ),
        Family::new(
            "wbia_lightglue_pairs_matched_total",
            Kind::Counter,
            "Pairs run through LightGlue.",
            load(&c.pairs_matched),
        ),
        Family::new(
            "wbia_lightglue_match_jobs_joined_total",
            Kind::Counter,
            "Matching jobs that shared another job's padded batches.",
            load(&c.match_jobs_joined),
        ),
        Family::new(
            "wbia_lightglue_jobs_abandoned_total",
            Kind::Counter,
            "Queued model jobs dropped because their requester had gone.",
            load(&c.jobs_abandoned),
        ),
        Family::new(
            "wbia_lightglue_store_corrupt_rows_total",
            Kind::Counter,
            "Persisted rows whose checksum failed (read as misses and deleted).",
            state.engine().store_corrupt_rows(),
        ),
    ]
}

/// Where chips came from.
fn chips(state: &AppState) -> Vec<Family> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let c = &state.engine().cache_stats;
    vec![
        Family::new(
            "wbia_lightglue_chips_downloaded_total",
            Kind::Counter,
            "Chips downloaded from WBIA.",
            load(&c.chips_downloaded),
        ),
        Family::new(
            "wbia_lightglue_chip_bytes_total",
            Kind::Counter,
            "Bytes of chips downloaded from WBIA.",
            load(&c.chip_bytes),
        ),
        Family::new(
            "wbia_lightglue_chips_from_image_files_total",
            Kind::Counter,
            "Annotations whose chip was made here from WBIA's image file, as WBIA makes it (counted when resolved).",
            state.annotations().stats().from_images.load(Ordering::Relaxed),
        ),
        Family::new(
            "wbia_lightglue_chips_image_file_unreadable_total",
            Kind::Counter,
            "Annotations whose WBIA image file could not be read here: with --chips auto their chips are downloaded (JPEG re-encodes).",
            state.annotations().stats().unreadable.load(Ordering::Relaxed),
        ),
    ]
}

/// Chunks of split jobs this replica worked on.
fn chunks(state: &AppState) -> Vec<Family> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    vec![
        Family::new(
            "wbia_lightglue_chunks_taken_total",
            Kind::Counter,
            "Chunks of split jobs (any replica's) this replica took.",
            load(&state.identifier.metrics().chunks.taken),
        ),
        Family::new(
            "wbia_lightglue_chunks_done_total",
            Kind::Counter,
            "Chunks of split jobs this replica finished.",
            load(&state.identifier.metrics().chunks.done),
        ),
        Family::new(
            "wbia_lightglue_chunks_retaken_total",
            Kind::Counter,
            "Chunks this replica took after another replica's lease on them expired.",
            load(&state.identifier.metrics().chunks.retaken),
        ),
        Family::new(
            "wbia_lightglue_chunks_failed_total",
            Kind::Counter,
            "Chunks that failed on this replica.",
            load(&state.identifier.metrics().chunks.failed),
        ),
    ]
}

/// What is held or running now.
fn gauges(state: &AppState) -> Vec<Family> {
    let (cached, cached_bytes) = state.engine().cached_features();
    let (admitted, pending_pairs) = state.engine().admitted();
    vec![
        Family::new(
            "wbia_lightglue_feature_cache_entries",
            Kind::Gauge,
            "Feature sets in memory.",
            cached as u64,
        ),
        Family::new(
            "wbia_lightglue_feature_cache_bytes",
            Kind::Gauge,
            "Bytes of feature sets in memory.",
            cached_bytes as u64,
        ),
        Family::new(
            "wbia_lightglue_queue_depth",
            Kind::Gauge,
            "Model jobs waiting for the worker.",
            state.engine().queue_depth() as u64,
        ),
        Family::new(
            "wbia_lightglue_admitted_requests",
            Kind::Gauge,
            "Requests admitted and not finished.",
            admitted as u64,
        ),
        Family::new(
            "wbia_lightglue_pending_pairs",
            Kind::Gauge,
            "Pairs of the requests admitted now.",
            pending_pairs as u64,
        ),
        Family::new(
            "wbia_lightglue_ready",
            Kind::Gauge,
            "1 once the models are loaded.",
            u64::from(state.ready.load(Ordering::Acquire)),
        ),
        Family::new(
            "wbia_lightglue_jobs_known",
            Kind::Gauge,
            "Engine jobs held for status and result.",
            state.runner.jobs().len() as u64,
        ),
        Family::new(
            "wbia_lightglue_job_result_bytes",
            Kind::Gauge,
            "Bytes of the finished job results held.",
            state.runner.jobs().result_bytes() as u64,
        ),
        Family::new(
            "wbia_lightglue_worker_alive",
            Kind::Gauge,
            "1 while the model worker thread runs.",
            u64::from(state.engine().worker_alive()),
        ),
        Family::new(
            "wbia_lightglue_wbia_reachable",
            Kind::Gauge,
            "1 when WBIA's heartbeat answered at the last background check.",
            u64::from(state.wbia_health.reachable()),
        ),
    ]
}

/// Latency histograms: pipeline stages, and whole requests.
fn histograms(state: &AppState, text: &mut String) {
    let stage = "wbia_lightglue_stage_seconds";
    let _ = write!(
        text,
        "# HELP {stage} Latency of one pipeline step: a chip download (all attempts), a decode, an extraction or a matching job (queueing included).\n# TYPE {stage} histogram\n"
    );
    let s = &state.engine().stage_seconds;
    for (label, h) in [
        ("fetch", &s.fetch),
        ("decode", &s.decode),
        ("extract", &s.extract),
        ("match", &s.matching),
    ] {
        h.render(text, stage, &format!("stage=\"{label}\""));
    }
    let request = "wbia_lightglue_request_seconds";
    let _ = write!(
        text,
        "# HELP {request} Duration of an identification request: a synchronous query, or an engine job from acceptance to its end.\n# TYPE {request} histogram\n"
    );
    state
        .metrics
        .query_seconds
        .render(text, request, "kind=\"query\"");
    state
        .runner
        .metrics()
        .job_seconds
        .render(text, request, "kind=\"job\"");
}
