//! Helpers shared by the HTTP tests: WBIA's envelope for fakes, and reading our `/metrics`.
#![allow(dead_code)]

use axum::Json;
use serde_json::{json, Value};

/// A successful WBIA answer.
pub fn envelope(v: Value) -> Json<Value> {
    Json(
        json!({"status": {"success": true, "code": 200, "message": "", "cache": -1}, "response": v}),
    )
}

/// One unlabelled series of our `/metrics`.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not exported"))
        .parse()
        .unwrap()
}

/// Waits (up to 5 s) until no request is admitted any more: work of a finished, cancelled or
/// abandoned request has given its admission back.
pub async fn admissions_given_back(client: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if metric(client, base, "wbia_lightglue_admitted_requests").await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("admission not given back");
}
