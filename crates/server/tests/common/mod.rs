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

/// A GET answered with JSON (any status), parsed.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
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

/// Polls a job until it ends (at most `secs` seconds): its last `jobstatus`, and every
/// progress report seen while it worked.
pub async fn wait_for_job_progress(
    client: &reqwest::Client,
    base: &str,
    jobid: &str,
    secs: u64,
) -> (String, Vec<Value>) {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        let s = get_json(
            client,
            &format!("{base}/api/engine/job/status/?jobid={jobid}"),
        )
        .await;
        assert_eq!(s["response"]["status"], "ok");
        let status = s["response"]["jobstatus"].as_str().unwrap().to_string();
        if status == "completed" || status == "exception" {
            return (status, seen);
        }
        if status == "working" {
            seen.push(s["response"]["progress"].clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {jobid} did not finish within {secs} s");
}

/// A job's result, whole (envelope included), parsed as WBIA writes it (bare `-Infinity`).
pub async fn job_result(client: &reqwest::Client, base: &str, jobid: &str) -> Value {
    let text = client
        .get(format!("{base}/api/engine/job/result/?jobid={jobid}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    wbia_client::parse_lenient(&text).unwrap()
}

/// The real WBIA 4.0.4's answers, recorded by `scripts/real-wbia/record.py`.
pub fn transcripts() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real-wbia/transcripts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The recorded exchange named `name`.
pub fn recorded(name: &str) -> Value {
    transcripts()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no recorded entry {name}"))
        .clone()
}
pub mod replay;

/// Our service in this process in front of `wbia`, with a configuration directory of its own
/// whose default configuration is `config` (JSON), and `engine`'s options with the repo's
/// weights: its base URL.
pub async fn serve_ours(
    wbia: &str,
    config: &str,
    engine: wbia_lightglue_engine::EngineOptions,
    client: wbia_client::ClientOptions,
) -> String {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!(
        "wbia-lg-ours-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let state = std::sync::Arc::new(wbia_lightglue_server::AppState::new(
        wbia_lightglue_engine::Engine::start(wbia_lightglue_engine::EngineOptions {
            weights_dir: Some(repo.join("weights")),
            ..engine
        })
        .unwrap(),
        wbia_client::WbiaClient::new(wbia, client).unwrap(),
        wbia_lightglue_engine::ConfigDir::new(dir),
        wbia_lightglue_server::ServerOptions::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = wbia_lightglue_server::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}
