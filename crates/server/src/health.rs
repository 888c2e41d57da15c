//! Liveness and readiness. Neither waits on WBIA: its heartbeat is checked in the background
//! every `wbia_check_interval` (each check bounded by [`CHECK_TIMEOUT`]) and `/health` reports
//! the last result, so a hanging WBIA cannot make a probe time out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AppState;

/// Longest one heartbeat check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// WBIA's reachability as last checked.
#[derive(Default)]
pub struct WbiaHealth {
    reachable: AtomicBool,
    /// Unix seconds of the last completed check; 0 before the first.
    checked_at: AtomicU64,
}

impl WbiaHealth {
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// Seconds since the last check ended, `None` before the first.
    pub fn age_secs(&self) -> Option<u64> {
        match self.checked_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(unix_now().saturating_sub(at)),
        }
    }

    fn record(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Release);
        self.checked_at.store(unix_now().max(1), Ordering::Release);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks WBIA's heartbeat now and then until the state is dropped.
pub fn spawn_wbia_monitor(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let interval = state.options.wbia_check_interval;
    tokio::spawn(async move {
        let mut was = None;
        loop {
            let Some(state) = weak.upgrade() else { return };
            let reachable = tokio::time::timeout(CHECK_TIMEOUT, state.wbia.heartbeat())
                .await
                .unwrap_or(false);
            state.wbia_health.record(reachable);
            if was != Some(reachable) {
                if reachable {
                    tracing::info!(url = state.wbia.base_url(), "WBIA is reachable");
                } else {
                    tracing::warn!(url = state.wbia.base_url(), "WBIA is not reachable");
                }
                was = Some(reachable);
            }
            drop(state);
            tokio::time::sleep(interval).await;
        }
    });
}

fn report(state: &AppState) -> serde_json::Value {
    json!({
        "ready": state.ready.load(Ordering::Acquire),
        "worker_alive": state.engine().worker_alive(),
        "wbia_reachable": state.wbia_health.reachable(),
        "wbia_checked_secs_ago": state.wbia_health.age_secs(),
        "wbia_url": state.wbia.base_url(),
    })
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "ready: models loaded and the model worker running; reports WBIA's reachability from a background check (never waits on WBIA)"), (status = 503, description = "still warming up, or the model worker died")))]
/// `/health`: readiness. 200 once the models are loaded and while the model worker runs;
/// 503 otherwise. WBIA's state is reported, not required (a query needs WBIA, a pass-through
/// too, but a restart of this service would not bring WBIA back).
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ok = state.ready.load(Ordering::Acquire) && state.engine().worker_alive();
    respond(ok, report(&state))
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "alive (also while the models load)"), (status = 503, description = "the model worker died: restart the process")))]
/// `/health/live`: liveness. 503 only when the model worker has died: restarting the process
/// is then the cure. A process still loading its models is alive.
pub async fn live(State(state): State<Arc<AppState>>) -> Response {
    respond(state.engine().worker_alive(), report(&state))
}

fn respond(ok: bool, body: serde_json::Value) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
