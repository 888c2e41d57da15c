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

/// An empty form, for [`post_form`].
pub const NO_FIELDS: &[(&str, &str)] = &[];

/// A urlencoded form POSTed, answered with JSON (any status): the status and the body.
pub async fn post_form<K: serde::Serialize, V: serde::Serialize>(
    client: &reqwest::Client,
    url: &str,
    fields: &[(K, V)],
) -> (u16, Value) {
    let resp = client.post(url).form(fields).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
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
    wbia_client::parse_lenient(&job_result_text(client, base, jobid).await).unwrap()
}

/// A job's result as sent, unparsed.
pub async fn job_result_text(client: &reqwest::Client, base: &str, jobid: &str) -> String {
    client
        .get(format!("{base}/api/engine/job/result/?jobid={jobid}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
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

/// The LightGlue identification jobs the real WBIA 4.0.4 ran with the real
/// wbia-plugin-lightglue, recorded by `scripts/real-wbia/plugin_job.py`.
pub fn lightglue_jobs() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real-wbia/lightglue_job.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The recorded job result document (`GET /api/engine/job/result/`, envelope included) of the
/// job `key` (`zebra`, `turtle`); WBIA's bare `-Infinity` is `{"__nonfinite__": "-Infinity"}`
/// there, as `parse_marking_nonfinite` reads ours.
pub fn recorded_lightglue_result(key: &str) -> Value {
    let name = format!("lightglue_job_result_{key}");
    lightglue_jobs()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no recorded entry {name}"))["response"]["json"]
        .clone()
}

/// JSON as WBIA writes it, with each bare `NaN`, `Infinity` or `-Infinity` read as the
/// recordings hold them: `{"__nonfinite__": "<token>"}`.
pub fn parse_marking_nonfinite(text: &str) -> Value {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(token) = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t))
            {
                out.push_str(&format!(r#"{{"__nonfinite__":"{token}"}}"#));
                rest = &rest[token.len()..];
                continue;
            }
            in_string = c == '"';
        } else if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = false;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out).unwrap()
}

/// What kind of JSON value `v` is: `null`, `bool`, `number` (a marked non-finite one too),
/// `string`, `uuid` (WBIA's `{"__UUID__": …}`), an object of its fields' kinds, or an array
/// of the distinct kinds of its elements (sorted).
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Object(o) if o.len() == 1 && o.contains_key("__nonfinite__") => json!("number"),
        Value::Object(o) if o.len() == 1 && o.contains_key("__UUID__") => json!("uuid"),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), shape(x))).collect()),
        Value::Array(a) => {
            let mut kinds: Vec<Value> = Vec::new();
            for k in a.iter().map(shape) {
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            kinds.sort_by_key(|k| k.to_string());
            Value::Array(kinds)
        }
    }
}

/// Takes out of two job result documents (envelope included) the fields where ours and the
/// real WBIA 4.0.4's are known to differ (docs/wbia-api.md §4), asserting that they still do:
/// WBIA's `summary_annot` and `summary_name` entries carry `dnid`, `species` and
/// `viewpoint`, ours only `score`, `duuid` and `daid`. Wildbook reads none of them.
/// WBIA's `dannot_extern_list` holds `"error"` where its thumbnails could not be drawn (no Qt
/// where it was recorded): those become `true`, as a WBIA with Qt (and ours) has them.
pub fn drop_known_result_differences(ours: &mut Value, theirs: &mut Value) {
    let o = &mut ours["response"]["json_result"];
    let t = &mut theirs["response"]["json_result"];
    for cm in t["cm_dict"].as_object_mut().unwrap().values_mut() {
        for f in cm["dannot_extern_list"].as_array_mut().unwrap() {
            if f == "error" {
                *f = json!(true);
            }
        }
    }
    for list in ["summary_annot", "summary_name"] {
        for (side, doc) in [("WBIA's", &mut *t), ("ours", &mut *o)] {
            for entry in doc[list].as_array_mut().unwrap() {
                let entry = entry.as_object_mut().unwrap();
                for k in ["dnid", "species", "viewpoint"] {
                    let had = entry.remove(k).is_some();
                    assert_eq!(
                        had,
                        side == "WBIA's",
                        "{list}.{k} in {side}: update the test"
                    );
                }
            }
        }
    }
}

/// Asserts that `ours` has `theirs`'s shape (`shape`): the same fields at every depth, each of
/// the same kind; an empty array on either side matches any array. `path` names where a
/// difference is.
pub fn assert_same_shape(ours: &Value, theirs: &Value, path: &str) {
    match (ours, theirs) {
        (Value::Array(a), Value::Array(b)) if a.is_empty() || b.is_empty() => {}
        _ => {
            let (o, t) = (shape(ours), shape(theirs));
            if o == t {
                return;
            }
            if let (Value::Object(a), Value::Object(b)) = (ours, theirs) {
                if shape(ours).is_object() && shape(theirs).is_object() {
                    let ka: Vec<_> = a.keys().collect();
                    let kb: Vec<_> = b.keys().collect();
                    assert_eq!(ka, kb, "{path}: fields differ");
                    for (k, x) in a {
                        assert_same_shape(x, &b[k], &format!("{path}.{k}"));
                    }
                    return;
                }
            }
            panic!("{path}: ours is {o}, WBIA's is {t}");
        }
    }
}

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
