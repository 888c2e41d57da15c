//! The real router on port 0 against a fake WBIA that serves the turtle fixtures by UUID
//! (shapes from docs/wbia-api.md §5), with the real weights.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::{
    admissions_given_back, envelope, get_json, metric, post_form, recorded, transcripts,
    wait_for_job_progress, NO_FIELDS,
};
use serde_json::{json, Value};
use uuid::Uuid;
use wbia_client::{fancy_uuid, ClientOptions, WbiaClient};
use wbia_lightglue_engine::{ConfigDir, Engine, EngineOptions};
use wbia_lightglue_server::{router, AppState, ServerOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Annot {
    uuid: Uuid,
    aid: i64,
    file: &'static str,
    name: &'static str,
    species: &'static str,
}

fn annots() -> Vec<Annot> {
    let a = |n: u128, aid, file, name, species| Annot {
        uuid: Uuid::from_u128(n),
        aid,
        file,
        name,
        species,
    };
    // b4 is filed under another species, so species-wide queries leave it out.
    vec![
        a(
            0xa1,
            11,
            "turtles/turtle_a1.jpg",
            "turtle_a",
            "turtle_green",
        ),
        a(
            0xa2,
            12,
            "turtles/turtle_a2.jpg",
            "turtle_a",
            "turtle_green",
        ),
        a(
            0xb3,
            13,
            "turtles/turtle_b3.jpg",
            "turtle_b",
            "turtle_green",
        ),
        a(
            0xb4,
            14,
            "turtles/turtle_b4.jpg",
            "____",
            "turtle_hawksbill",
        ),
    ]
}

#[derive(Default)]
struct FakeWbia {
    by_uuid: HashMap<Uuid, (i64, String)>,
    species: HashMap<Uuid, String>,
    chips: HashMap<i64, Vec<u8>>,
    chip_requests: AtomicUsize,
    /// Chip requests to answer with HTTP 503 before serving (exercises retries).
    fail_first: AtomicUsize,
    /// `jobid`s received on the callback URL.
    callbacks: std::sync::Mutex<Vec<String>>,
    /// Every field of each callback's form.
    callback_forms: std::sync::Mutex<Vec<HashMap<String, String>>>,
}

/// Name rowids the fake hands out: one per name text; WBIA's `-aid` for "____".
fn name_rowid(name: &str, aid: i64) -> i64 {
    match name {
        "turtle_a" => 1,
        "turtle_b" => 2,
        _ => -aid,
    }
}

fn uuids_param(q: &HashMap<String, String>) -> Vec<Uuid> {
    let v: Value = serde_json::from_str(&q["annot_uuid_list"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|u| wbia_client::uuid_from_value(u).unwrap())
        .collect()
}

async fn spawn(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Our router behind the same listener `serve` uses.
async fn spawn_ours(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = wbia_lightglue_server::lenient_uri::LenientListener(listener);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn fake_wbia(fail_first: usize) -> (SocketAddr, Arc<FakeWbia>) {
    fake_wbia_with(fail_first, Vec::new()).await
}

/// The fake WBIA with more annotations: (UUID, rowid, chip file), each its own individual.
async fn fake_wbia_with(
    fail_first: usize,
    extra: Vec<(Uuid, i64, Vec<u8>)>,
) -> (SocketAddr, Arc<FakeWbia>) {
    let mut fake = FakeWbia::default();
    for (uuid, aid, chip) in extra {
        fake.by_uuid.insert(uuid, (aid, "____".to_string()));
        fake.chips.insert(aid, chip);
    }
    for a in annots() {
        fake.by_uuid.insert(a.uuid, (a.aid, a.name.to_string()));
        fake.species.insert(a.uuid, a.species.to_string());
        fake.chips.insert(
            a.aid,
            std::fs::read(repo().join("tests/fixtures").join(a.file)).unwrap(),
        );
    }
    // Square chips (not listed by /api/annot/json/), for parity through the HTTP path.
    for (n, aid, file) in [
        (0x5a1, 21, "square/turtle_a1_square.jpg"),
        (0x5a2, 22, "square/turtle_a2_square.jpg"),
    ] {
        fake.by_uuid
            .insert(Uuid::from_u128(n), (aid, "turtle_a".to_string()));
        fake.chips.insert(
            aid,
            std::fs::read(repo().join("tests/fixtures").join(file)).unwrap(),
        );
    }
    // An annotation whose chip is not an image (WBIA serving a broken file).
    fake.by_uuid
        .insert(Uuid::from_u128(0xbad), (66, "____".to_string()));
    fake.chips.insert(66, b"<html>not a chip</html>".to_vec());
    fake.fail_first.store(fail_first, Ordering::SeqCst);
    let fake = Arc::new(fake);
    let app = Router::new()
        .route(
            "/api/annot/rowid/uuid/json/",
            get(|State(f): State<Arc<FakeWbia>>, Query(q): Query<HashMap<String, String>>| async move {
                envelope(uuids_param(&q).iter().map(|u| json!(f.by_uuid.get(u).map(|x| x.0))).collect())
            }),
        )
        .route(
            "/api/annot/name/text/json/",
            get(|State(f): State<Arc<FakeWbia>>, Query(q): Query<HashMap<String, String>>| async move {
                envelope(uuids_param(&q).iter().map(|u| json!(f.by_uuid.get(u).map(|x| x.1.clone()))).collect())
            }),
        )
        .route(
            "/api/annot/src/{aid}/",
            get(|State(f): State<Arc<FakeWbia>>, Path(aid): Path<i64>| async move {
                f.chip_requests.fetch_add(1, Ordering::SeqCst);
                if f.fail_first.load(Ordering::SeqCst) > 0 {
                    f.fail_first.fetch_sub(1, Ordering::SeqCst);
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
                }
                ([("content-type", "image/jpeg")], f.chips[&aid].clone()).into_response()
            }),
        )
        .route(
            "/api/annot/name/rowid/json/",
            get(|State(f): State<Arc<FakeWbia>>, Query(q): Query<HashMap<String, String>>| async move {
                envelope(
                    uuids_param(&q)
                        .iter()
                        .map(|u| json!(f.by_uuid.get(u).map(|(aid, name)| name_rowid(name, *aid))))
                        .collect(),
                )
            }),
        )
        .route(
            "/api/annot/uuid/",
            get(|State(f): State<Arc<FakeWbia>>, Query(q): Query<HashMap<String, String>>| async move {
                let aids: Vec<i64> = serde_json::from_str(&q["aid_list"]).unwrap();
                envelope(
                    aids.iter()
                        .map(|aid| {
                            let u = f.by_uuid.iter().find(|(_, v)| v.0 == *aid).map(|(u, _)| fancy_uuid(u));
                            json!(u)
                        })
                        .collect(),
                )
            }),
        )
        .route(
            "/api/annot/sex/text/json/",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                envelope(uuids_param(&q).iter().map(|_| json!("female")).collect())
            }),
        )
        .route(
            "/api/annot/age/months/min/json/",
            // -1 is what WBIA 4.0.4 answers for an age never set (recorded).
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let age = |u: &Uuid| if *u == Uuid::from_u128(0xa1) { -1 } else { 36 };
                envelope(uuids_param(&q).iter().map(|u| json!(age(u))).collect())
            }),
        )
        // WBIA's own chip/best answer, for other pipelines.
        .route(
            "/api/review/query/chip/best/",
            get(|| async { envelope(json!({"name": "from-wbia"})) }),
        )
        .route(
            "/api/annot/json/",
            get(|| async { envelope(annots().iter().map(|a| fancy_uuid(&a.uuid)).collect()) }),
        )
        .route(
            "/api/annot/species/json/",
            get(|State(f): State<Arc<FakeWbia>>, Query(q): Query<HashMap<String, String>>| async move {
                envelope(uuids_param(&q).iter().map(|u| json!(f.species.get(u))).collect())
            }),
        )
        // What defines each chip: image UUID, bbox, theta (one image per annotation here).
        .route(
            "/api/annot/image/uuid/json/",
            get(|State(f): State<Arc<FakeWbia>>, Query(q): Query<HashMap<String, String>>| async move {
                envelope(
                    uuids_param(&q)
                        .iter()
                        .map(|u| json!(f.by_uuid.get(u).map(|x| fancy_uuid(&Uuid::from_u128(0x1000 + x.0 as u128)))))
                        .collect(),
                )
            }),
        )
        .route(
            "/api/annot/bbox/json/",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                envelope(uuids_param(&q).iter().map(|_| json!([0, 0, 500, 400])).collect())
            }),
        )
        .route(
            "/api/annot/theta/json/",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                envelope(uuids_param(&q).iter().map(|_| json!(0.0)).collect())
            }),
        )
        .route("/api/test/heartbeat/", get(|| async { envelope(json!(true)) }))
        // What only WBIA answers: pass-through targets.
        .route("/api/image/json/", get(|| async { envelope(json!(["from-wbia"])) }))
        // A job of WBIA's own (another pipeline), as WBIA lists its jobs.
        .route("/api/engine/job/", get(|| async { envelope(json!(["wbia-own-job"])) }))
        .route(
            "/api/engine/query/graph/",
            axum::routing::post(|body: String| async move { envelope(json!(format!("wbia-job:{}", body.len()))) }),
        )
        .route("/api/engine/job/status/", get(|| async { envelope(json!({"status": "ok", "jobstatus": "wbia-owned"})) }))
        .route(
            "/ia",
            axum::routing::post(|State(f): State<Arc<FakeWbia>>, body: String| async move {
                let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                f.callbacks.lock().unwrap().push(form.get("jobid").cloned().unwrap_or_default());
                f.callback_forms.lock().unwrap().push(form);
                "ok"
            }),
        )
        .with_state(fake.clone());
    (spawn(app).await, fake)
}

/// Our server against `wbia_url`, with a config dir whose default asks for 512 keypoints
/// (quicker in debug builds) and a second config `k256.json`.
async fn our_server(wbia_url: &str) -> (SocketAddr, Arc<AppState>) {
    our_server_with(wbia_url, None, 64).await
}

async fn our_server_with_store(
    wbia_url: &str,
    data_dir: Option<PathBuf>,
) -> (SocketAddr, Arc<AppState>) {
    our_server_with(wbia_url, data_dir, 64).await
}

async fn our_server_with(
    wbia_url: &str,
    data_dir: Option<PathBuf>,
    max_requests: usize,
) -> (SocketAddr, Arc<AppState>) {
    our_server_with_options(wbia_url, data_dir, max_requests, ServerOptions::default()).await
}

async fn our_server_with_options(
    wbia_url: &str,
    data_dir: Option<PathBuf>,
    max_requests: usize,
    server_options: ServerOptions,
) -> (SocketAddr, Arc<AppState>) {
    let dir = std::env::temp_dir().join(format!(
        "wbia-lg-http-{}-{}",
        std::process::id(),
        Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"max_num_keypoints": 512}"#).unwrap();
    std::fs::write(dir.join("k256.json"), r#"{"max_num_keypoints": 256}"#).unwrap();
    std::fs::write(dir.join("plugin_defaults.json"), "{}").unwrap();
    let options = ClientOptions {
        initial_backoff: std::time::Duration::from_millis(10),
        ..ClientOptions::default()
    };
    let state = Arc::new(AppState::new(
        Engine::start(EngineOptions {
            weights_dir: Some(repo().join("weights")),
            data_dir,
            max_requests,
            ..EngineOptions::default()
        })
        .unwrap(),
        WbiaClient::new(wbia_url, options).unwrap(),
        ConfigDir::new(dir),
        server_options,
    ));
    (spawn_ours(router(state.clone())).await, state)
}

fn list(uuids: &[u128]) -> String {
    serde_json::to_string(
        &uuids
            .iter()
            .map(|u| Uuid::from_u128(*u).to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

fn uuid_of(v: &Value) -> u128 {
    wbia_client::uuid_from_value(v).unwrap().as_u128()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_queries_rank_the_genuine_turtle_first() {
    let (wbia, fake) = fake_wbia(2).await;
    let (addr, _state) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let url = format!("{base}/api/review/query/chip/best/");

    // The README's curl, verbatim in shape: multipart form fields, plain-string UUID lists.
    let form = reqwest::multipart::Form::new()
        .text("query_annot_uuid_list", list(&[0xa1]))
        .text("database_annot_uuid_list", list(&[0xa2, 0xb3, 0xb4]))
        .text("pipeline_root", "LightGlue");
    let resp = client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"]["success"], true, "{body}");
    assert_eq!(body["status"]["code"], 200);
    let result = &body["response"]["query_results"][0];
    assert_eq!(uuid_of(&result["qannot_uuid"]), 0xa1);
    let ranked = result["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    assert_eq!(uuid_of(&ranked[0]["dannot_uuid"]), 0xa2, "{result}");
    assert_eq!(uuid_of(&result["best"]["dannot_uuid"]), 0xa2);
    let (genuine, impostor) = (
        ranked[0]["score"].as_f64().unwrap(),
        ranked[1]["score"].as_f64().unwrap(),
    );
    assert!(
        genuine > 10.0 * impostor.max(0.1),
        "genuine {genuine} vs impostor {impostor}"
    );
    // Name scores: max per known name; "____" is unnamed.
    let names = result["name_scores"].as_array().unwrap();
    assert_eq!(names[0]["name"], "turtle_a");
    assert_eq!(names.len(), 2);
    assert!(ranked.iter().any(|r| r["dname"].is_null()));
    assert!(
        fake.chip_requests.load(Ordering::SeqCst) >= 6,
        "503s were retried"
    );

    // The OpenAPI document describes exactly the fields this response has.
    let doc = get_json(&client, &format!("{base}/api-docs/openapi.json")).await;
    assert!(doc["paths"]["/api/review/query/chip/best/"]["post"].is_object());
    assert!(doc["paths"]["/api/review/query/chip/best/"]["get"].is_object());
    // Every endpoint the service answers itself is described (from the handlers' own
    // `#[utoipa::path]`).
    for path in [
        "/api/query/graph/match/thumb/",
        "/api/lightglue/match/",
        "/api/engine/query/graph/",
        "/api/engine/job/",
        "/api/engine/job/status/",
        "/api/engine/job/result/",
        "/api/engine/job/cancel/",
        "/api/test/heartbeat/",
        "/health",
        "/health/live",
        "/info",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} not in the OpenAPI document"
        );
    }
    let props = |schema: &str| -> std::collections::BTreeSet<String> {
        let p = &doc["components"]["schemas"][schema]["properties"];
        assert!(p.is_object(), "schema {schema} in {doc}");
        keys(p)
    };
    assert_eq!(props("ChipBestResponse"), keys(&body));
    assert_eq!(props("ChipBestResult"), keys(&body["response"]));
    assert_eq!(props("QueryResult"), keys(result));
    // `member_scores` is there only for an ensemble (checked in
    // `an_ensemble_reports_member_scores_and_ranks_by_their_fusion`).
    let mut single_model = props("ScoredAnnotation");
    assert!(single_model.remove("member_scores"));
    assert_eq!(single_model, keys(&ranked[0]));
    assert_eq!(props("NameScore"), keys(&names[0]));
    assert_eq!(props("Status"), keys(&body["status"]));
    let ui = client
        .get(format!("{base}/swagger-ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), 200);
    assert!(
        ui.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );

    // The second curl: urlencoded, fancy UUIDs, a config_path; then the same as a JSON body.
    let misses_before = metric(&client, &base, "wbia_lightglue_feature_cache_misses_total").await;
    let hits_before = metric(&client, &base, "wbia_lightglue_feature_cache_hits_total").await;
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let resp = client
        .post(&url)
        .form(&[
            ("query_annot_uuid_list", json!([fancy(0xb3)]).to_string()),
            (
                "database_annot_uuid_list",
                json!([fancy(0xa1), fancy(0xa2), fancy(0xb4)]).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
            ("config_path", "k256.json".to_string()),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["response"]["config"]["max_num_keypoints"], 256,
        "{body}"
    );
    assert_eq!(
        uuid_of(&body["response"]["query_results"][0]["best"]["dannot_uuid"]),
        0xb4
    );

    let resp = client
        .post(&url)
        .json(&json!({
            "query_annot_uuid_list": [fancy(0xa1)],
            "database_annot_uuid_list": [fancy(0xa2), fancy(0xb3), fancy(0xb4)],
            "pipeline_root": "LightGlue",
        }))
        .send()
        .await
        .unwrap();
    let repeat: Value = resp.json().await.unwrap();
    assert_eq!(
        repeat["response"]["query_results"][0]["ranked"]
            .as_array()
            .unwrap(),
        ranked,
        "same request, same answer"
    );
    // The k256 request extracted 4 new feature sets; the repeat hit the cache for all 4.
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_feature_cache_misses_total").await,
        misses_before + 4
    );
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_feature_cache_hits_total").await,
        hits_before + 4
    );

    let hb = get_json(&client, &format!("{base}/api/test/heartbeat/")).await;
    assert_eq!(hb["response"], true);
    let info = get_json(&client, &format!("{base}/info")).await;
    assert_eq!(info["pipeline_root"], "LightGlue");
    assert_eq!(info["default_config"]["max_num_keypoints"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_in_the_envelope() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/review/query/chip/best/");
    let ok_q = list(&[0xa1]);
    let ok_d = list(&[0xa2]);
    // (expected code, form fields, a word the message must contain)
    type Case<'a> = (u16, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            400,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("database_annot_uuid_list", ok_d.clone()),
                ("pipeline_root", "HotSpotter".into()),
            ],
            "pipeline_root",
        ),
        (
            400,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("database_annot_uuid_list", ok_d.clone()),
            ],
            "pipeline_root",
        ),
        (
            400,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("pipeline_root", "LightGlue".into()),
            ],
            "database_annot_uuid_list",
        ),
        (
            400,
            vec![
                ("query_annot_uuid_list", "[]".into()),
                ("database_annot_uuid_list", ok_d.clone()),
                ("pipeline_root", "LightGlue".into()),
            ],
            "empty",
        ),
        (
            608,
            vec![
                ("query_annot_uuid_list", "[\"not-a-uuid\"]".into()),
                ("database_annot_uuid_list", ok_d.clone()),
                ("pipeline_root", "LightGlue".into()),
            ],
            "invalid",
        ),
        (
            601,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("database_annot_uuid_list", list(&[0xa2, 0xa2])),
                ("pipeline_root", "LightGlue".into()),
            ],
            "duplicate",
        ),
        (
            600,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("database_annot_uuid_list", list(&[0xa2, 0xdead])),
                ("pipeline_root", "LightGlue".into()),
            ],
            "unknown",
        ),
        (
            422,
            vec![
                ("query_annot_uuid_list", list(&[0xbad])),
                ("database_annot_uuid_list", list(&[0xa2])),
                ("pipeline_root", "LightGlue".into()),
            ],
            "00000000-0000-0000-0000-000000000bad",
        ),
        (
            400,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("database_annot_uuid_list", ok_d.clone()),
                ("pipeline_root", "LightGlue".into()),
                ("config_path", "../../etc/passwd".into()),
            ],
            "..",
        ),
        (
            400,
            vec![
                ("query_annot_uuid_list", ok_q.clone()),
                ("database_annot_uuid_list", ok_d.clone()),
                ("pipeline_root", "LightGlue".into()),
                ("config_path", "nope.json".into()),
            ],
            "nope.json",
        ),
    ];
    for (code, fields, needle) in cases {
        let resp = client.post(&url).form(&fields).send().await.unwrap();
        // As WBIA (Flask) labels its JSON.
        assert_eq!(
            resp.headers()["content-type"],
            "application/json; charset=utf-8"
        );
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, code, "{fields:?}: {body}");
        assert_eq!(body["status"]["success"], false);
        assert_eq!(body["status"]["code"], code);
        let message = body["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
        if code == 600 {
            let missing = &body["response"]["missing_annot_uuid_list"];
            assert_eq!(uuid_of(&missing[0]), 0xdead);
        }
    }

    // WBIA unreachable: a clear 502 naming the URL, not a hang or a panic.
    let (addr, _) = our_server("http://127.0.0.1:9").await;
    let (status, body) = post_form(
        &client,
        &format!("http://{addr}/api/review/query/chip/best/"),
        &[
            ("query_annot_uuid_list", ok_q),
            ("database_annot_uuid_list", ok_d),
            ("pipeline_root", "LightGlue".into()),
        ],
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body["status"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let health = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["wbia_reachable"], false);
}

fn keys(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// WBIA's GET form (one integer aid against every annotation): answered here for LightGlue,
/// passed through for other pipelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_get_form_by_aid() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/review/query/chip/best/");
    let get = |query: Vec<(&'static str, &'static str)>| {
        let req = client.get(&url).query(&query);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let lightglue = r#"{"pipeline_root": "LightGlue"}"#;
    let (code, body) = get(vec![("aid", "11"), ("query_config_dict", lightglue)]).await;
    assert_eq!(code, 200, "{body}");
    let r = &body["response"];
    assert_eq!(r["name"], "turtle_a", "{body}");
    assert_eq!(r["sex"], "Female");
    // turtle_a's annotations are a2 (36 months) and the query a1 itself (unknown: -1): the
    // smallest is -1, "Unknown", as WBIA's `min` over the name's ages gives.
    assert_eq!(r["age"], "Unknown");

    assert_eq!(
        r["extern"]["qannot_uuid"],
        Uuid::from_u128(0xa1).to_string()
    );
    assert_eq!(
        r["extern"]["dannot_uuid"],
        Uuid::from_u128(0xa2).to_string()
    );
    // Its reference is one our thumbnail route renders (WBIA answered 607 for the old one).
    let thumb = client
        .get(format!("http://{addr}/api/query/graph/match/thumb/"))
        .query(&[
            (
                "extern_reference",
                r["extern"]["reference"].as_str().unwrap(),
            ),
            (
                "query_annot_uuid",
                r["extern"]["qannot_uuid"].as_str().unwrap(),
            ),
            (
                "database_annot_uuid",
                r["extern"]["dannot_uuid"].as_str().unwrap(),
            ),
            ("version", "heatmask"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");

    let (code, body) = get(vec![("aid", "999"), ("query_config_dict", lightglue)]).await;
    assert_eq!(code, 600, "{body}");
    let (code, body) = get(vec![("query_config_dict", lightglue)]).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["status"]["message"].as_str().unwrap().contains("aid"));
    // Another pipeline (or none): WBIA's answer.
    let (code, body) = get(vec![("aid", "11")]).await;
    assert_eq!(
        (code, &body["response"]["name"]),
        (200, &json!("from-wbia"))
    );
}

/// Polls a job until it ends; returns its last `jobstatus`.
async fn wait_for_job(client: &reqwest::Client, base: &str, jobid: &str) -> String {
    wait_for_job_progress(client, base, jobid, 30).await.0
}

/// No database list: every annotation of the query's species (as WBIA does), the query
/// echoed in the database; `database_imgsetid` is refused with a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn species_wide_engine_query() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let url = format!("{base}/api/engine/query/graph/");
    let query = json!([fancy_uuid(&Uuid::from_u128(0xa1))]).to_string();
    let config = r#"{"pipeline_root":"LightGlue"}"#.to_string();
    let (code, started) = post_form(
        &client,
        &url,
        &[
            ("query_annot_uuid_list", query.clone()),
            ("query_config_dict", config.clone()),
            ("jobid", "species-wide".to_string()),
        ],
    )
    .await;
    assert_eq!(code, 200, "{started}");
    assert_eq!(
        wait_for_job(&client, &base, "species-wide").await,
        "completed"
    );
    let result = get_json(
        &client,
        &format!("{base}/api/engine/job/result/?jobid=species-wide"),
    )
    .await;
    let json_result = &result["response"]["json_result"];
    let database: Vec<u128> = json_result["database_annot_uuid_list"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(
        database,
        vec![0xa1, 0xa2, 0xb3],
        "same species, the query with them, by rowid as WBIA echoes it"
    );
    let cm = &json_result["cm_dict"][Uuid::from_u128(0xa1).to_string()];
    let scored: Vec<u128> = cm["dannot_uuid_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(scored.len(), 2, "{cm}");
    assert!(!scored.contains(&0xb4) && !scored.contains(&0xa1));
    // The query's own name, as WBIA reports it (it was always "____").
    assert_eq!(cm["qname"], "turtle_a", "{cm}");
    assert_eq!(
        json_result["inference_dict"]["cluster_dict"]["orig_name_list"],
        json!(["turtle_a"])
    );

    let (code, refused) = post_form(
        &client,
        &url,
        &[
            ("query_annot_uuid_list", query),
            ("query_config_dict", config),
            ("database_imgsetid", "3".to_string()),
        ],
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        refused["status"]["message"]
            .as_str()
            .unwrap()
            .contains("database_imgsetid"),
        "{refused}"
    );
}

/// A job naming annotations WBIA does not know is refused at its start with 600 and every
/// unknown UUID once (as WBIA's `web_check_uuids` answers), not accepted to fail later; a
/// species-wide job for an unknown query likewise. No job is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_naming_unknown_annotations_is_refused_at_its_start() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, state) = our_server(&format!("http://{wbia}")).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/engine/query/graph/");
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let config = r#"{"pipeline_root":"LightGlue"}"#.to_string();
    let (status, body) = post_form(
        &client,
        &url,
        &[
            ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
            (
                "database_annot_uuid_list",
                json!([
                    fancy(0xa2),
                    fancy(0xdead),
                    fancy(0xb3),
                    fancy(0xbeef),
                    fancy(0xdead)
                ])
                .to_string(),
            ),
            ("query_config_dict", config.clone()),
            ("jobid", "with-unknowns".to_string()),
        ],
    )
    .await;
    assert_eq!(status, 600, "{body}");
    assert_eq!(body["status"]["code"], 600);
    assert_eq!(body["response"]["missing_image_uuid_list"], json!([]));
    let missing: Vec<u128> = body["response"]["missing_annot_uuid_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(missing, vec![0xdead, 0xbeef]);
    assert!(
        state.runner.jobs().get("with-unknowns").is_none(),
        "no job was created"
    );

    let (status, body) = post_form(
        &client,
        &url,
        &[
            ("query_annot_uuid_list", json!([fancy(0xdead)]).to_string()),
            ("query_config_dict", config),
        ],
    )
    .await;
    assert_eq!(status, 600, "{body}");
    assert_eq!(
        uuid_of(&body["response"]["missing_annot_uuid_list"][0]),
        0xdead
    );
}

/// The real WBIA's answers, recorded by `scripts/real-wbia/record.py`
/// (`tests/data/real-wbia/transcripts.json`).
/// The field names of a recorded callback's form, in the order WBIA sent them (recorded as
/// `[name, value]` pairs).
fn recorded_form_fields(callback: &Value) -> Vec<String> {
    callback["form"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_str().unwrap().to_string())
        .collect()
}

/// The callbacks the real WBIA made, as recorded (`plain` and `detailed`).
fn recorded_callbacks() -> Value {
    transcripts()["callbacks"].clone()
}

/// `callback_detailed=true`: the callback's form carries the job's `status` and `json_result`
/// besides `jobid`, the fields the real WBIA 4.0.4 sent (recorded); `json_result` is the
/// result document the result endpoint answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detailed_callback_carries_status_and_result() {
    let (wbia, fake) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let (status, body) = post_form(
        &client,
        &format!("{base}/api/engine/query/graph/"),
        &[
            ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
            (
                "database_annot_uuid_list",
                json!([fancy(0xa2), fancy(0xb3)]).to_string(),
            ),
            (
                "query_config_dict",
                r#"{"pipeline_root":"LightGlue"}"#.to_string(),
            ),
            ("callback_url", format!("http://{wbia}/ia")),
            ("callback_detailed", "true".to_string()),
            ("jobid", "detailed".to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(wait_for_job(&client, &base, "detailed").await, "completed");
    for _ in 0..50 {
        if !fake.callback_forms.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let form = fake.callback_forms.lock().unwrap()[0].clone();
    let ours: std::collections::BTreeSet<&str> = form.keys().map(String::as_str).collect();
    let recorded = recorded_callbacks();
    let theirs = recorded_form_fields(&recorded["detailed"][0]);
    let theirs: std::collections::BTreeSet<&str> = theirs.iter().map(String::as_str).collect();
    assert_eq!(ours, theirs);
    assert_eq!(form["jobid"], "detailed");
    assert_eq!(form["status"], "completed");
    let sent = wbia_client::parse_lenient(&form["json_result"]).unwrap();
    let result = common::job_result(&client, &base, "detailed").await;
    assert_eq!(sent, result["response"]["json_result"]);
}

/// 608 and 601 at a job's start, as the real WBIA 4.0.4 answered the same requests (ours use
/// our fake's UUIDs in the recorded positions): the same code and the same `response`, but for
/// WBIA's `qdup_pos_map`, which it fills from the database list (ours holds the query list's
/// duplicates: none, the engine takes one query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_errors_at_a_jobs_start_as_wbia_answers_them() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/engine/query/graph/");
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let config = r#"{"pipeline_root":"LightGlue"}"#.to_string();

    // 608: WBIA's request was [Q] and [D1, "not-a-uuid"].
    let wbia_608 = recorded("engine_608_not_a_uuid");
    assert_eq!(wbia_608["response"]["status"], 608);
    let (status, ours) = post_form(
        &client,
        &url,
        &[
            ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
            (
                "database_annot_uuid_list",
                json!([fancy(0xa2), "not-a-uuid"]).to_string(),
            ),
            ("query_config_dict", config.clone()),
        ],
    )
    .await;
    assert_eq!(status, 608, "{ours}");
    assert_eq!(ours["status"]["code"], 608);
    assert_eq!(ours["response"], wbia_608["response"]["json"]["response"]);

    // 601: WBIA's request was [Q] and [D1, D2, D1].
    let wbia_601 = recorded("engine_601_duplicate_database_uuids");
    let form = &wbia_601["request"]["form"];
    let recorded_database: Value =
        serde_json::from_str(form["database_annot_uuid_list"].as_str().unwrap()).unwrap();
    let d1 = recorded_database[0]["__UUID__"].as_str().unwrap();
    let (status, ours) = post_form(
        &client,
        &url,
        &[
            ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
            (
                "database_annot_uuid_list",
                json!([fancy(0xa2), fancy(0xb3), fancy(0xa2)]).to_string(),
            ),
            ("query_config_dict", config),
        ],
    )
    .await;
    assert_eq!(status, 601, "{ours}");
    let theirs = &wbia_601["response"]["json"]["response"]["ddup_pos_map"];
    assert_eq!(
        ours["response"]["ddup_pos_map"][Uuid::from_u128(0xa2).to_string()],
        theirs[d1]
    );
    assert_eq!(
        ours["response"]["ddup_pos_map"].as_object().unwrap().len(),
        theirs.as_object().unwrap().len()
    );
    assert_eq!(ours["response"]["qdup_pos_map"], json!({}));
}

/// Wildbook's flow: start a job form-encoded with a callback, poll its status, get the
/// callback, read the result; checked field by field against the contract's example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_job_flow_gives_what_wildbook_parses() {
    let (wbia, fake) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let jobid = "6e1f3a2b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
    let resp = client
        .post(format!("{base}/api/engine/query/graph/"))
        .form(&[
            ("query_annot_uuid_list", json!([fancy(0xb4)]).to_string()),
            ("query_annot_name_list", r#"["____"]"#.to_string()),
            (
                "database_annot_uuid_list",
                json!([fancy(0xa1), fancy(0xa2), fancy(0xb3)]).to_string(),
            ),
            (
                "database_annot_name_list",
                r#"["turtle_a","turtle_a","turtle_b"]"#.to_string(),
            ),
            (
                "query_config_dict",
                r#"{"pipeline_root":"LightGlue"}"#.to_string(),
            ),
            ("callback_url", format!("http://{wbia}/ia?callback")),
            ("jobid", jobid.to_string()),
            ("lane", "fast".to_string()),
        ])
        .send()
        .await
        .unwrap();
    let started: Value = resp.json().await.unwrap();
    assert_eq!(started["status"]["success"], true, "{started}");
    assert_eq!(started["response"], jobid);

    let (status, progress) = wait_for_job_progress(&client, &base, jobid, 30).await;
    assert_eq!(status, "completed");
    // Fetching and extracting four chips takes long enough to be seen working at least once.
    assert!(!progress.is_empty(), "no progress reported");
    for p in &progress {
        let n = |k: &str| p[k].as_u64().unwrap();
        let stage = p["stage"].as_str().unwrap();
        assert!(["lookup", "features", "match"].contains(&stage), "{p}");
        assert!(n("pairs_scored") <= n("pairs_total"), "{p}");
        if stage == "lookup" {
            // Annotations still being resolved with WBIA: no totals yet.
            assert_eq!((n("chips_total"), n("pairs_total")), (0, 0), "{p}");
            continue;
        }
        assert!(
            n("chips_fetched") + n("chips_cached") <= n("chips_total"),
            "{p}"
        );
        assert_eq!(n("chips_total"), 4, "{p}");
        assert_eq!(n("pairs_total"), 3, "{p}");
        if n("pairs_scored") > 0 {
            assert!(p["eta_secs"].as_f64().unwrap() >= 0.0, "{p}");
        }
    }
    for _ in 0..50 {
        if !fake.callbacks.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(*fake.callbacks.lock().unwrap(), vec![jobid.to_string()]);
    // The fields of a plain callback, as the real WBIA sends them: `jobid` alone.
    let keys_of = |callback: &Value| -> std::collections::BTreeSet<String> {
        recorded_form_fields(callback).into_iter().collect()
    };
    let recorded_callbacks = recorded_callbacks();
    let plain: std::collections::BTreeSet<String> = fake.callback_forms.lock().unwrap()[0]
        .keys()
        .cloned()
        .collect();
    assert_eq!(plain, keys_of(&recorded_callbacks["plain"][0]));

    // Read as text: WBIA writes bare -Infinity, and so must we.
    let text = common::job_result_text(&client, &base, jobid).await;
    let ours = wbia_client::parse_lenient(&text).unwrap();
    // The real WBIA 4.0.4's result of a LightGlue job run by the real plugin (recorded by
    // scripts/real-wbia/plugin_job.py: a turtle query against three turtles, two of them one
    // individual's, as here): every field at every depth, of the same kind, but for the
    // differences docs/wbia-api.md §4 lists (`drop_known_result_differences`).
    let recorded = common::recorded_lightglue_result("turtle");
    let (mut mine, mut theirs) = (common::parse_marking_nonfinite(&text), recorded.clone());
    common::drop_known_result_differences(&mut mine, &mut theirs);
    // cm_dict is keyed by the query's UUID: WBIA's query was another annotation.
    let cms = std::mem::take(&mut theirs["response"]["json_result"]["cm_dict"]);
    let only = cms.as_object().unwrap().values().next().unwrap();
    theirs["response"]["json_result"]["cm_dict"] =
        json!({ Uuid::from_u128(0xb4).to_string(): only });
    common::assert_same_shape(&mine, &theirs, "job result");
    let example = &recorded;
    assert_eq!(keys(&ours["status"]), keys(&example["status"]));
    assert_eq!(keys(&ours["response"]), keys(&example["response"]));
    assert_eq!(ours["response"]["status"], "completed");
    let (result, want) = (
        &ours["response"]["json_result"],
        &example["response"]["json_result"],
    );
    assert_eq!(keys(result), keys(want));
    // cm_dict keyed by the plain query UUID string, with every key WBIA's has.
    let q = Uuid::from_u128(0xb4).to_string();
    let cm = &result["cm_dict"][&q];
    let want_cm = want["cm_dict"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(keys(cm), keys(want_cm));
    // The OpenAPI schemas come from the same types that wrote this result.
    let doc = get_json(&client, &format!("{base}/api-docs/openapi.json")).await;
    let props = |schema: &str| keys(&doc["components"]["schemas"][schema]["properties"]);
    assert_eq!(props("JobResult"), keys(&ours["response"]));
    // The schema also lists the list of skipped annotations, written only when one was.
    let mut written = keys(result);
    assert!(written.insert("skipped_annot_list".to_string()));
    assert_eq!(props("IdentificationResult"), written);
    assert_eq!(props("ChipMatch"), keys(cm));
    assert_eq!(props("Inference"), keys(&result["inference_dict"]));
    assert_eq!(
        props("ReviewPair"),
        keys(&result["inference_dict"]["annot_pair_dict"]["review_pair_list"][0])
    );
    assert_eq!(props("Summary"), keys(&result["summary_annot"][0]));
    let n = cm["dannot_uuid_list"].as_array().unwrap().len();
    assert_eq!(n, 3);
    // Names as WBIA's `convert_to_uuid` gives them: these texts are not UUIDs, so the name
    // rowids (a1, a2: turtle_a; b3: turtle_b), and the unnamed query's `-aid`.
    assert_eq!(cm["qname_uuid"], json!(-14));
    assert_eq!(cm["dname_uuid_list"], json!([1, 1, 2]));
    let mut unique: Vec<i64> = cm["unique_name_uuid_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    unique.sort();
    assert_eq!(unique, [1, 2]);
    for k in [
        "dname_uuid_list",
        "dname_list",
        "score_list",
        "annot_score_list",
        "dannot_extern_list",
    ] {
        assert_eq!(cm[k].as_array().unwrap().len(), n, "{k}");
    }

    // Match thumbnails: every candidate (fewer than 20) has one, under our reference.
    assert_eq!(cm["dannot_extern_list"], json!([true, true, true]));
    let reference = cm["dannot_extern_reference"].as_str().unwrap().to_string();
    assert!(
        reference.len() == 16 && reference.bytes().all(|b| b.is_ascii_lowercase()),
        "{reference}"
    );
    let thumb = |reference: String, d: u128, version: &'static str| {
        let req = client
            .get(format!("{base}/api/query/graph/match/thumb/"))
            .query(&[
                ("extern_reference", reference),
                ("query_annot_uuid", Uuid::from_u128(0xb4).to_string()),
                ("database_annot_uuid", Uuid::from_u128(d).to_string()),
                ("version", version.to_string()),
            ]);
        async move { req.send().await.unwrap() }
    };
    let jpeg_of = |reference: String, d: u128, version: &'static str| {
        let resp = thumb(reference, d, version);
        async move {
            let resp = resp.await;
            assert_eq!(resp.status(), 200, "{version}");
            assert_eq!(resp.headers()["content-type"], "image/jpeg");
            let jpeg = resp.bytes().await.unwrap();
            wbia_lightglue_model::decode_image(&jpeg).unwrap()
        }
    };
    // The genuine partner b3: many matches.
    let clean = jpeg_of(reference.clone(), 0xb3, "clean").await;
    assert!(
        clean.width > clean.height,
        "side by side: {}x{}",
        clean.width,
        clean.height
    );
    // `matches` and `heatmask` (what Wildbook asks for) draw the matches over the same
    // picture: same size, many pixels changed (lines, dots, the score). The job's features
    // are found by chip identity, not extracted again; only the pair is matched again.
    let extracted = metric(&client, &base, "wbia_lightglue_extractions_total").await;
    let matched = metric(&client, &base, "wbia_lightglue_pairs_matched_total").await;
    for version in ["matches", "heatmask"] {
        let drawn = jpeg_of(reference.clone(), 0xb3, version).await;
        assert_eq!((drawn.width, drawn.height), (clean.width, clean.height));
        let changed = drawn
            .data
            .chunks(3)
            .zip(clean.data.chunks(3))
            .filter(|(a, b)| a.iter().zip(*b).any(|(x, y)| x.abs_diff(*y) > 48))
            .count();
        assert!(changed > 2000, "{version}: {changed} pixels changed");
    }
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_extractions_total").await,
        extracted
    );
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_pairs_matched_total").await,
        matched + 2
    );
    let resp = thumb(reference.clone(), 0xa1, "sideways").await;
    assert_eq!(resp.status(), 400);
    let resp = thumb(reference.clone(), 0xdead, "clean").await;
    assert_eq!(resp.status().as_u16(), 607);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"]["version"], "clean", "{body}");
    // A reference that is not ours is WBIA's business (the fake has no such route: 404).
    let resp = thumb("abcdefghijklmnop".into(), 0xa1, "clean").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(uuid_of(&cm["qannot_uuid"]), 0xb4);
    // Request order, not score order: the genuine partner b3 is last.
    let annot_scores: Vec<f64> = cm["annot_score_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        annot_scores[2] > 10.0 * annot_scores[0].max(annot_scores[1]),
        "{annot_scores:?}"
    );
    // turtle_a has two annotations: the weaker one's score_list entry is a bare -Infinity.
    assert_ne!(annot_scores[0], annot_scores[1]);
    let weaker = if annot_scores[0] < annot_scores[1] {
        0
    } else {
        1
    };
    assert!(
        cm["score_list"][weaker].is_null(),
        "-Infinity reads as null leniently"
    );
    assert!(text.contains("-Infinity"));
    assert_eq!(cm["score_list"][2].as_f64().unwrap(), annot_scores[2]);
    assert_eq!(
        cm["name_score_list"].as_array().unwrap().len(),
        cm["unique_name_list"].as_array().unwrap().len()
    );
    // What Wildbook requires, else it marks the task as an error.
    let pairs = &result["inference_dict"]["annot_pair_dict"];
    let review = pairs["review_pair_list"].as_array().unwrap();
    let confidence = pairs["confidence_list"].as_array().unwrap();
    assert_eq!(review.len(), confidence.len());
    assert!(!review.is_empty());
    assert_eq!(
        keys(&review[0]),
        keys(&want["inference_dict"]["annot_pair_dict"]["review_pair_list"][0])
    );
    let c: Vec<f64> = confidence.iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(c.windows(2).all(|w| w[0] <= w[1]), "ascending confidence");
    assert!(review.iter().any(|p| uuid_of(&p["annot_uuid_2"]) == 0xb3));
    assert_eq!(
        result["database_annot_uuid_list"].as_array().unwrap().len(),
        4,
        "query included"
    );
    assert_eq!(result["query_config_dict"]["pipeline_root"], "LightGlue");

    // Ours and WBIA's own.
    let jobs = get_json(&client, &format!("{base}/api/engine/job/")).await;
    assert_eq!(jobs["response"], json!([jobid, "wbia-own-job"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_else_passes_through_to_wbia() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let v = get_json(&client, &format!("{base}/api/image/json/")).await;
    assert_eq!(v["response"], json!(["from-wbia"]));
    // An engine query for another algorithm goes to WBIA, body intact.
    let body = "query_config_dict=%7B%22pipeline_root%22%3A%22vsmany%22%7D&query_annot_uuid_list=x";
    let v: Value = client
        .post(format!("{base}/api/engine/query/graph/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["response"], format!("wbia-job:{}", body.len()));
    // A job id that is not ours.
    let v: Value = client
        .get(format!(
            "{base}/api/engine/job/status/?jobid=somebody-elses"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["response"]["jobstatus"], "wbia-owned");
    // Unknown paths come back with WBIA's status.
    let resp = client
        .get(format!("{base}/api/nothing/here/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Wildbook puts raw JSON in query strings: [ ] { } and " unescaped.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "GET /api/annot/name/text/json/?annot_uuid_list=[{{\"__UUID__\":\"{}\"}}] HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Uuid::from_u128(0xa2)
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("turtle_a"), "{answer}");
}

/// Features persist across a restart: the second server extracts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_features_and_scores_survive_a_restart() {
    let (wbia, _) = fake_wbia(0).await;
    let data = std::env::temp_dir().join(format!("wbia-lg-store-{}", Uuid::new_v4()));
    let client = reqwest::Client::new();
    let fields = [
        ("query_annot_uuid_list", list(&[0xb3])),
        ("database_annot_uuid_list", list(&[0xa1, 0xb4])),
        ("pipeline_root", "LightGlue".to_string()),
    ];
    let mut answers = Vec::new();
    for run in 0..2 {
        let (addr, state) =
            our_server_with_store(&format!("http://{wbia}"), Some(data.clone())).await;
        let base = format!("http://{addr}");
        let (status, body) = post_form(
            &client,
            &format!("{base}/api/review/query/chip/best/"),
            &fields,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        answers.push(body["response"]["query_results"].clone());
        let extractions = metric(&client, &base, "wbia_lightglue_extractions_total").await;
        let store_hits = metric(&client, &base, "wbia_lightglue_feature_store_hits_total").await;
        let matched = metric(&client, &base, "wbia_lightglue_pairs_matched_total").await;
        let score_hits = metric(&client, &base, "wbia_lightglue_pair_score_store_hits_total").await;
        if run == 0 {
            assert_eq!((extractions, store_hits), (3, 0));
            assert_eq!((matched, score_hits), (2, 0));
        } else {
            assert_eq!((extractions, store_hits), (0, 3), "restart re-extracted");
            assert_eq!((matched, score_hits), (0, 2), "restart re-matched");
        }
        drop(state);
    }
    assert_eq!(answers[0], answers[1]);
    std::fs::remove_dir_all(data).unwrap();
}

/// Admission: with one request admitted at most, a second gets 429 with the promised
/// `Retry-After: 5`, in the envelope; the admitted one is never failed for queue space and
/// completes, after which a new request is admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_service_answers_429_with_retry_after() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server_with(&format!("http://{wbia}"), None, 1).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let jobid = "admitted-job";
    let (status, body) = post_form(
        &client,
        &format!("{base}/api/engine/query/graph/"),
        &[
            ("query_annot_uuid_list", list(&[0xa1])),
            ("database_annot_uuid_list", list(&[0xa2, 0xb3, 0xb4])),
            (
                "query_config_dict",
                r#"{"pipeline_root": "LightGlue"}"#.to_string(),
            ),
            ("jobid", jobid.to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let query = [
        ("query_annot_uuid_list", list(&[0xa1])),
        ("database_annot_uuid_list", list(&[0xa2])),
        ("pipeline_root", "LightGlue".to_string()),
    ];
    let resp = client
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"]["code"], 429);
    assert!(body["status"]["message"]
        .as_str()
        .unwrap()
        .contains("requests admitted"));
    assert_eq!(wait_for_job(&client, &base, jobid).await, "completed");
    let (status, body) = post_form(
        &client,
        &format!("{base}/api/review/query/chip/best/"),
        &query,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_requests_refused_total").await,
        1
    );
}

/// Square chips through the service (WBIA → decode → ALIKED → LightGlue, the plugin's
/// defaults) score what the PyTorch reference scores from the same files
/// (`tests/goldens/sweep_manifest.json`, `service_pairs`): the HTTP path cannot drift from the
/// CLI path. Promise 0.5%; measured ~1e-6, so the tight bound is 2e-4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn square_chips_through_wbia_score_as_the_reference() {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/goldens/sweep_manifest.json")).unwrap(),
    )
    .unwrap();
    let reference = manifest["service_pairs"]["turtle_squares"]["score"]
        .as_f64()
        .unwrap();
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let client = reqwest::Client::new();
    let (status, body) = post_form(
        &client,
        &format!("http://{addr}/api/review/query/chip/best/"),
        &[
            ("query_annot_uuid_list", list(&[0x5a1])),
            ("database_annot_uuid_list", list(&[0x5a2])),
            ("pipeline_root", "LightGlue".to_string()),
            ("config_path", "plugin_defaults.json".to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["response"]["query_results"][0];
    assert_eq!(body["response"]["config"]["max_num_keypoints"], 2048);
    let ours = result["best"]["score"].as_f64().unwrap();
    let rel = (ours - reference).abs() / reference;
    println!("square chips via WBIA: {ours} vs reference {reference} (rel {rel:.1e})");
    assert!(rel <= 5e-3, "relative error {rel}");
    assert!(rel <= 2e-4, "outside the tight bound: {rel}");
}

/// `/api/engine/job/cancel/` stops a working job: it ends as `exception` ("cancelled by
/// request"), its admission is given back, a second cancel is 409, an unknown id 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_job_can_be_cancelled() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let (status, body) = post_form(
        &client,
        &format!("{base}/api/engine/query/graph/"),
        &[
            ("query_annot_uuid_list", list(&[0xa1])),
            ("database_annot_uuid_list", list(&[0xa2, 0xb3, 0xb4])),
            (
                "query_config_dict",
                r#"{"pipeline_root": "LightGlue"}"#.to_string(),
            ),
            ("jobid", "to-cancel".to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_admitted_requests").await,
        1
    );
    let cancel = format!("{base}/api/engine/job/cancel/?jobid=to-cancel");
    let (status, body) = post_form(&client, &cancel, NO_FIELDS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["cancelled"], true);
    assert_eq!(wait_for_job(&client, &base, "to-cancel").await, "exception");
    let result = get_json(
        &client,
        &format!("{base}/api/engine/job/result/?jobid=to-cancel"),
    )
    .await;
    assert_eq!(result["response"]["json_result"], "cancelled by request");
    let (status, _) = post_form(&client, &cancel, NO_FIELDS).await;
    assert_eq!(status, 409);
    let (status, _) = post_form(
        &client,
        &format!("{base}/api/engine/job/cancel/?jobid=nope"),
        NO_FIELDS,
    )
    .await;
    assert_eq!(status, 404);
    admissions_given_back(&client, &base).await;
}

/// A client that gives up on a synchronous query leaves nothing running: its admission is
/// given back and its queued extractions and matches are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_stops_its_query() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = impatient
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            ("query_annot_uuid_list", list(&[0xa1])),
            ("database_annot_uuid_list", list(&[0xa2, 0xb3, 0xb4])),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send()
        .await;
    assert!(
        sent.unwrap_err().is_timeout(),
        "the query answered within 300 ms"
    );
    admissions_given_back(&client, &base).await;
    let extractions = metric(&client, &base, "wbia_lightglue_extractions_total").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let later = metric(&client, &base, "wbia_lightglue_extractions_total").await;
    assert!(
        later <= extractions + 1,
        "work went on: {extractions} → {later} extractions"
    );
    assert!(extractions + 1 < 4, "all four chips were extracted anyway");
}

/// What the callback receiver of `job_ids_and_callbacks_are_guarded` saw, and how many 503s
/// it has left to give.
type CallbackLog = (Arc<std::sync::Mutex<Vec<&'static str>>>, Arc<AtomicUsize>);

/// Job ids: a finished job's id is never given to another job (409, its result intact);
/// ids that are not bounded tokens are refused (400). Callbacks: a 5xx is retried until
/// delivered; a redirect is not followed (the job's callback fails, counted); with
/// `callback_hosts` set, other hosts are refused when the job starts (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_and_callbacks_are_guarded() {
    let (wbia, _) = fake_wbia(0).await;
    let hits: Arc<std::sync::Mutex<Vec<&'static str>>> = Arc::default();
    let flaky_left = Arc::new(AtomicUsize::new(2));
    let callback_app = Router::new()
        .route(
            "/flaky",
            axum::routing::post(|State((hits, left)): State<CallbackLog>| async move {
                hits.lock().unwrap().push("flaky");
                if left.load(Ordering::SeqCst) > 0 {
                    left.fetch_sub(1, Ordering::SeqCst);
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                "ok".into_response()
            }),
        )
        .route(
            "/moved",
            axum::routing::post(|State((hits, _)): State<CallbackLog>| async move {
                hits.lock().unwrap().push("moved");
                axum::response::Redirect::temporary("/elsewhere")
            }),
        )
        .route(
            "/elsewhere",
            axum::routing::post(|State((hits, _)): State<CallbackLog>| async move {
                hits.lock().unwrap().push("elsewhere");
                "ok"
            }),
        )
        .with_state((hits.clone(), flaky_left.clone()));
    let callbacks = spawn(callback_app).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let start = |jobid: String, callback: String| {
        let client = client.clone();
        let url = format!("{base}/api/engine/query/graph/");
        async move {
            post_form(
                &client,
                &url,
                &[
                    ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
                    ("database_annot_uuid_list", json!([fancy(0xa2)]).to_string()),
                    (
                        "query_config_dict",
                        r#"{"pipeline_root":"LightGlue"}"#.to_string(),
                    ),
                    ("callback_url", callback),
                    ("jobid", jobid),
                ],
            )
            .await
        }
    };
    let (status, body) = start("retried".into(), format!("http://{callbacks}/flaky")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = start("redirected".into(), format!("http://{callbacks}/moved")).await;
    assert_eq!(status, 200, "{body}");
    for id in ["retried", "redirected"] {
        assert_eq!(wait_for_job(&client, &base, id).await, "completed");
    }
    for _ in 0..200 {
        if metric(&client, &base, "wbia_lightglue_callbacks_sent_total").await
            + metric(&client, &base, "wbia_lightglue_callbacks_failed_total").await
            == 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_callbacks_sent_total").await,
        1
    );
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_callbacks_failed_total").await,
        1
    );
    let mut seen = hits.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["flaky", "flaky", "flaky", "moved"]);

    // The finished job's id is not given away; its result stays.
    let before = common::job_result(&client, &base, "retried").await;
    let (status, body) = start("retried".into(), format!("http://{callbacks}/flaky")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"]["code"], 409);
    assert_eq!(common::job_result(&client, &base, "retried").await, before);
    // Ids that are not bounded tokens never become jobs.
    for bad in ["a/b".to_string(), "x".repeat(129), "quote\"d".to_string()] {
        let (status, body) = start(bad.clone(), format!("http://{callbacks}/flaky")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let jobs = get_json(&client, &format!("{base}/api/engine/job/")).await;
    assert_eq!(
        jobs["response"],
        json!(["redirected", "retried", "wbia-own-job"])
    );

    // Callback hosts restricted: 127.0.0.1 is not wildbook.example.
    let (restricted, _) = our_server_with_options(
        &format!("http://{wbia}"),
        None,
        64,
        ServerOptions {
            callback_hosts: Some(vec!["wildbook.example".into()]),
            ..ServerOptions::default()
        },
    )
    .await;
    let (status, body) = post_form(
        &client,
        &format!("http://{restricted}/api/engine/query/graph/"),
        &[
            ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
            ("database_annot_uuid_list", json!([fancy(0xa2)]).to_string()),
            (
                "query_config_dict",
                r#"{"pipeline_root":"LightGlue"}"#.to_string(),
            ),
            ("callback_url", format!("http://{callbacks}/flaky")),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["status"]["message"]
        .as_str()
        .unwrap()
        .contains("callback-hosts"));
}

/// A configuration with a calibration and the rotation sweep, named by `config_path`: each
/// ranked annotation carries `calibrated_score` = the calibration's probability of its raw
/// score and the winning turn (the upright turtles win unturned, at their unswept scores);
/// without a calibration the field is null. In an engine job, Wildbook's review confidences
/// come from the calibrated scores: `(2·|0.5 − p|)²`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrated_and_swept_configs_answer_with_both() {
    let (wbia, _fake) = fake_wbia(0).await;
    let (addr, state) = our_server(&format!("http://{wbia}")).await;
    let calibration = wbia_lightglue_engine::Calibration::fit(&[
        (137.5, true),
        (209.4, true),
        (4.1, false),
        (6.4, false),
        (13.4, false),
    ])
    .unwrap();
    let swept = json!({
        "max_num_keypoints": 512,
        "rotation_sweep": true,
        "calibration": calibration,
    });
    std::fs::write(state.configs.path().join("swept.json"), swept.to_string()).unwrap();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let query = |config: Option<&'static str>| {
        let (client, base) = (&client, &base);
        async move {
            let mut fields = vec![
                ("query_annot_uuid_list", list(&[0xa1])),
                ("database_annot_uuid_list", list(&[0xa2, 0xb3, 0xb4])),
                ("pipeline_root", "LightGlue".to_string()),
            ];
            if let Some(c) = config {
                fields.push(("config_path", c.to_string()));
            }
            let url = format!("{base}/api/review/query/chip/best/");
            let (status, body) = post_form(client, &url, &fields).await;
            assert_eq!(status, 200, "{body}");
            body["response"]["query_results"][0]["ranked"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let plain = query(None).await;
    let calibrated = query(Some("swept.json")).await;
    assert!(plain
        .iter()
        .all(|r| r["calibrated_score"].is_null() && r["rotation"] == 0));
    assert_eq!(uuid_of(&calibrated[0]["dannot_uuid"]), 0xa2);
    for r in &calibrated {
        let (score, p) = (
            r["score"].as_f64().unwrap() as f32,
            r["calibrated_score"].as_f64().unwrap(),
        );
        assert!((p - calibration.probability(score)).abs() < 1e-12, "{r}");
        assert!(
            [0, 90, 180, 270].contains(&r["rotation"].as_u64().unwrap()),
            "{r}"
        );
    }
    assert_eq!(
        calibrated[0]["rotation"], 0,
        "the upright genuine turtle wins unturned"
    );
    assert_eq!(calibrated[0]["score"], plain[0]["score"]);
    assert!(calibrated[0]["calibrated_score"].as_f64() > Some(0.5));
    // Best over four turns: never below the unturned score.
    for r in &calibrated {
        let unturned = plain
            .iter()
            .find(|p| p["dannot_uuid"] == r["dannot_uuid"])
            .unwrap();
        assert!(
            r["score"].as_f64() >= unturned["score"].as_f64(),
            "{r} vs {unturned}"
        );
    }

    // The engine job: review confidences from the calibrated scores.
    let fancy = |u: u128| fancy_uuid(&Uuid::from_u128(u));
    let jobid = "calibrated-job";
    let resp = client
        .post(format!("{base}/api/engine/query/graph/"))
        .form(&[
            ("query_annot_uuid_list", json!([fancy(0xa1)]).to_string()),
            (
                "database_annot_uuid_list",
                json!([fancy(0xa2), fancy(0xb3), fancy(0xb4)]).to_string(),
            ),
            (
                "query_config_dict",
                r#"{"pipeline_root":"LightGlue","config_path":"swept.json"}"#.to_string(),
            ),
            ("jobid", jobid.to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(wait_for_job(&client, &base, jobid).await, "completed");
    let result = get_json(
        &client,
        &format!("{base}/api/engine/job/result/?jobid={jobid}"),
    )
    .await;
    let pairs = &result["response"]["json_result"]["inference_dict"]["annot_pair_dict"];
    let review = pairs["review_pair_list"].as_array().unwrap();
    let confidence = pairs["confidence_list"].as_array().unwrap();
    assert!(!review.is_empty());
    for (pair, c) in review.iter().zip(confidence) {
        let d = uuid_of(&pair["annot_uuid_2"]);
        let score = calibrated
            .iter()
            .find(|r| uuid_of(&r["dannot_uuid"]) == d)
            .unwrap()["score"]
            .as_f64()
            .unwrap() as f32;
        let p = calibration.probability(score);
        let p_match = pair["prior_matching_state"]["p_match"].as_f64().unwrap();
        assert!((p_match - p).abs() < 1e-12, "{pair}");
        assert!((c.as_f64().unwrap() - (2.0 * (0.5 - p).abs()).powi(2)).abs() < 1e-12);
    }
}

/// An error answer whose envelope message names `what`.
async fn assert_message_names(resp: reqwest::Response, what: &str) {
    let body: Value = resp.json().await.unwrap();
    let message = body["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(what), "{body}");
}

/// Two uploaded photos (the Sacré-Cœur pair, Apache-2.0) matched without WBIA: the PNG has
/// both images at a common height with the matches drawn, its score header equals the JSON
/// form's score, and nothing is cached or stored. Bad uploads answer in the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploaded_images_are_matched_and_drawn() {
    let (wbia, _fake) = fake_wbia(0).await;
    let (addr, state) = our_server(&format!("http://{wbia}")).await;
    let url = format!("http://{addr}/api/lightglue/match/");
    let client = reqwest::Client::new();
    let photo = |name: &str| std::fs::read(repo().join("tests/fixtures/lightglue").join(name));
    let (a, b) = (
        photo("sacre_coeur1.jpg").unwrap(),
        photo("sacre_coeur2.jpg").unwrap(),
    );
    let form = |format: &str, second: Vec<u8>| {
        reqwest::multipart::Form::new()
            .part(
                "image0",
                reqwest::multipart::Part::bytes(a.clone()).file_name("a.jpg"),
            )
            .part(
                "image1",
                reqwest::multipart::Part::bytes(second).file_name("b.jpg"),
            )
            .text("format", format.to_string())
    };
    let resp = client
        .post(&url)
        .multipart(form("png", b.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_string();
    let (score, matches): (f32, usize) = (
        header("x-lightglue-score").parse().unwrap(),
        header("x-lightglue-matches").parse().unwrap(),
    );
    let png = resp.bytes().await.unwrap();
    let picture = wbia_lightglue_model::decode_image(&png).unwrap();
    // 1024×731 and 768×1024 at the 720 px cap: 1009 and 540 px wide, 8 px apart.
    assert_eq!((picture.width, picture.height), (1009 + 8 + 540, 720));
    let (left, right) = (
        wbia_lightglue_model::decode_image(&a).unwrap(),
        wbia_lightglue_model::decode_image(&b).unwrap(),
    );
    let plain = wbia_lightglue_model::render::side_by_side(&left, &right, 720).unwrap();
    let drawn = picture
        .data
        .chunks(3)
        .zip(plain.data.chunks(3))
        .filter(|(p, q)| p != q)
        .count();
    assert!(drawn > 2000, "{drawn} pixels drawn");

    let resp = client
        .post(&url)
        .multipart(form("json", b.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let r = &body["response"];
    assert_eq!(r["score"].as_f64().unwrap() as f32, score, "{r}");
    assert_eq!(r["matches"].as_array().unwrap().len(), matches);
    assert_eq!(r["match_scores"].as_array().unwrap().len(), matches);
    assert!(
        matches > 50 && score > 10.0,
        "{matches} matches, score {score}"
    );
    assert!(r["calibrated_score"].is_null());
    assert_eq!(
        r["num_keypoints"],
        json!([512, 512]),
        "config.json asks for 512"
    );
    // Uploads are not annotations: nothing cached, nothing downloaded from WBIA.
    assert_eq!(state.engine().cached_features().0, 0);
    assert_eq!(
        state
            .engine()
            .cache_stats
            .chips_downloaded
            .load(Ordering::SeqCst),
        0
    );

    // Bad uploads: undecodable (422, named), a missing image, an unknown format (400).
    let resp = client
        .post(&url)
        .multipart(form("png", b"not an image".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_message_names(resp, "image1").await;
    let only_one =
        reqwest::multipart::Form::new().part("image0", reqwest::multipart::Part::bytes(a.clone()));
    let resp = client.post(&url).multipart(only_one).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_message_names(resp, "image1").await;
    let resp = client
        .post(&url)
        .multipart(form("gif", b.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client.post(&url).body("image0=x").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // Over the 64 MiB upload limit: 413, in the envelope.
    let huge = vec![0u8; 65 << 20];
    let resp = client
        .post(&url)
        .multipart(form("png", huge))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

/// A match-thumbnail reference made for a configuration other than the default is answered
/// by a process that did not hand it out (another replica over the same configuration
/// directory, or this one after a restart): it is matched against every configuration there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnail_references_of_any_configuration_survive_the_process() {
    let (wbia, _fake) = fake_wbia(0).await;
    let (_, first) = our_server(&format!("http://{wbia}")).await;
    let dir = first.configs.path().to_path_buf();
    let k256 = first.configs.load(Some("k256.json")).unwrap();
    let reference = wbia_lightglue_server::jobs::thumb_reference(&k256);
    // A second process over the same directory, which never handed the reference out.
    let second = Arc::new(AppState::new(
        Engine::start(EngineOptions {
            weights_dir: Some(repo().join("weights")),
            ..EngineOptions::default()
        })
        .unwrap(),
        WbiaClient::new(&format!("http://{wbia}"), ClientOptions::default()).unwrap(),
        ConfigDir::new(dir),
        ServerOptions::default(),
    ));
    assert!(!second.runner.jobs().knows_reference(&reference));
    let addr = spawn_ours(router(second)).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/query/graph/match/thumb/"))
        .query(&[
            ("extern_reference", reference.as_str()),
            ("query_annot_uuid", &Uuid::from_u128(0xa1).to_string()),
            ("database_annot_uuid", &Uuid::from_u128(0xa2).to_string()),
            ("version", "clean"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "rendered here, not passed to WBIA");
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
}

/// `/info` names the variant the default configuration extracts with (it once always said
/// `aliked-n16`), read per call like the configuration itself, and each variant's weights
/// digest.
#[tokio::test]
async fn info_reports_the_configured_extractor() {
    let (wbia, _) = fake_wbia(0).await;
    let (ours, state) = our_server(&format!("http://{wbia}")).await;
    let client = reqwest::Client::new();
    let info = |client: reqwest::Client| async move {
        let r = client
            .get(format!("http://{ours}/info"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let before = info(client.clone()).await;
    assert_eq!(before["extractor"], "aliked-n16", "{before}");
    let versions = before["model_versions"].as_object().unwrap();
    assert_eq!(versions.len(), 4, "{before}");
    assert!(versions["aliked-n16rot"].as_str().unwrap().len() == 16);
    let dir = state.configs.path().to_path_buf();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_name": "aliked-n16rot"}"#,
    )
    .unwrap();
    let after = info(client).await;
    assert_eq!(after["extractor"], "aliked-n16rot", "{after}");
    assert_eq!(after["model_versions"], before["model_versions"]);
}

/// An ensemble configuration (`model_name` a list) answers chip/best with each member's score
/// beside the fused one (here their sum), still ranking the genuine turtle first; a single
/// model's answer has no member scores. 256 keypoints, 1 query × 3 candidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_reports_member_scores_and_ranks_by_their_fusion() {
    let (wbia, _) = fake_wbia(0).await;
    let (addr, state) = our_server(&format!("http://{wbia}")).await;
    let dir = state.configs.path().to_path_buf();
    std::fs::write(
        dir.join("ensemble.json"),
        r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "max_num_keypoints": 256}"#,
    )
    .unwrap();
    std::fs::write(dir.join("single.json"), r#"{"max_num_keypoints": 256}"#).unwrap();
    let client = reqwest::Client::new();
    let query = |config: &'static str| {
        let client = client.clone();
        async move {
            let (_, body) = common::post_form(
                &client,
                &format!("http://{addr}/api/review/query/chip/best/"),
                &[
                    ("query_annot_uuid_list", list(&[0xa1])),
                    ("database_annot_uuid_list", list(&[0xa2, 0xb3, 0xb4])),
                    ("pipeline_root", "LightGlue".into()),
                    ("config_path", config.into()),
                ],
            )
            .await;
            assert_eq!(body["status"]["code"], 200, "{body}");
            body["response"].clone()
        }
    };
    let single = query("single.json").await;
    let ranked = single["query_results"][0]["ranked"].as_array().unwrap();
    assert!(ranked.iter().all(|r| r.get("member_scores").is_none()));
    let single_n16: HashMap<u128, f64> = ranked
        .iter()
        .map(|r| (uuid_of(&r["dannot_uuid"]), r["score"].as_f64().unwrap()))
        .collect();

    let ensemble = query("ensemble.json").await;
    assert_eq!(
        ensemble["config"]["model_name"],
        json!(["aliked-n16", "aliked-n16rot"])
    );
    let ranked = ensemble["query_results"][0]["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    // The OpenAPI document describes exactly an ensemble's fields.
    let doc = get_json(&client, &format!("http://{addr}/api-docs/openapi.json")).await;
    let described = keys(&doc["components"]["schemas"]["ScoredAnnotation"]["properties"]);
    assert_eq!(described, keys(&ranked[0]));
    assert_eq!(uuid_of(&ranked[0]["dannot_uuid"]), 0xa2, "{ensemble}");
    for r in ranked {
        let members = r["member_scores"].as_object().unwrap();
        let (n16, rot) = (
            members["aliked-n16"].as_f64().unwrap(),
            members["aliked-n16rot"].as_f64().unwrap(),
        );
        // The n16 member is the single model's score, bit for bit.
        assert_eq!(n16, single_n16[&uuid_of(&r["dannot_uuid"])], "{r}");
        assert_eq!(
            r["score"].as_f64().unwrap() as f32,
            n16 as f32 + rot as f32,
            "{r}"
        );
    }
}

/// The sweep's image-to-image pairs (`tests/goldens/sweep_manifest.json`, `image_to_image`:
/// square and non-square crops of the Sacré-Cœur and turtle photos at 512 px, 512
/// keypoints), uploaded as PNG and matched over HTTP, against the PyTorch reference's whole
/// pipeline match by match (`assert_matches_reference`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_pairs_match_the_reference_match_by_match() {
    let manifest = sweep_manifest();
    let pairs = manifest["image_to_image"].as_object().unwrap();
    assert!(pairs.len() >= 2, "{pairs:?}");
    let (wbia, _fake) = fake_wbia(0).await;
    let (addr, _) = our_server(&format!("http://{wbia}")).await;
    let url = format!("http://{addr}/api/lightglue/match/");
    let client = reqwest::Client::new();
    for (name, pair) in pairs {
        let [a, b] = i2i_sides(name, pair);
        let form = reqwest::multipart::Form::new()
            .part(
                "image0",
                reqwest::multipart::Part::bytes(a).file_name("0.png"),
            )
            .part(
                "image1",
                reqwest::multipart::Part::bytes(b).file_name("1.png"),
            )
            .text("format", "json");
        let resp = client.post(&url).multipart(form).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        let body: Value = resp.json().await.unwrap();
        assert_matches_reference(name, &body["response"], &manifest);
    }
}

/// The same pairs as WBIA's annotations (their chips served as PNG by the fake WBIA), matched
/// by UUID through `/api/lightglue/match/` — chips fetched from WBIA, keyed, extracted and
/// matched as identification does — against the reference match by match; and the square
/// turtle chips (JPEG, the plugin's 2,048 keypoints) against the reference's score and match
/// count. Asked again, nothing is fetched or extracted again. Then the form's refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wbia_annotation_pairs_match_the_reference_match_by_match() {
    let manifest = sweep_manifest();
    let pairs: Vec<(String, Value)> = manifest["image_to_image"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(pairs.len() >= 2, "{pairs:?}");
    let mut extra = Vec::new();
    for (i, (name, pair)) in pairs.iter().enumerate() {
        for (side, chip) in i2i_sides(name, pair).into_iter().enumerate() {
            let n = (2 * i + side) as u128;
            extra.push((Uuid::from_u128(0x1200 + n), 1200 + n as i64, chip));
        }
    }
    let (wbia, fake) = fake_wbia_with(0, extra).await;
    let (addr, state) = our_server(&format!("http://{wbia}")).await;
    let url = format!("http://{addr}/api/lightglue/match/");
    let client = reqwest::Client::new();
    let ask = |a: u128, b: u128, config: &str| {
        let form = reqwest::multipart::Form::new()
            .text("annot_uuid_0", Uuid::from_u128(a).to_string())
            .text("annot_uuid_1", Uuid::from_u128(b).to_string())
            .text("config_path", config.to_string())
            .text("format", "json");
        client.post(&url).multipart(form).send()
    };
    for round in 0..2 {
        let fetched = fake.chip_requests.load(Ordering::SeqCst);
        let extracted = state
            .engine()
            .cache_stats
            .extractions
            .load(Ordering::SeqCst);
        for (i, (name, _)) in pairs.iter().enumerate() {
            let first = 0x1200 + 2 * i as u128;
            let resp = ask(first, first + 1, "config.json").await.unwrap();
            assert_eq!(resp.status(), 200, "{name}");
            let body: Value = resp.json().await.unwrap();
            assert_matches_reference(name, &body["response"], &manifest);
        }
        let squares = &manifest["service_pairs"]["turtle_squares"];
        let resp = ask(0x5a1, 0x5a2, "plugin_defaults.json").await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let r = &body["response"];
        let (score, want) = (
            r["score"].as_f64().unwrap(),
            squares["score"].as_f64().unwrap(),
        );
        let rel = (score - want).abs() / want;
        let (matches, want_matches) = (
            r["matches"].as_array().unwrap().len() as i64,
            squares["num_matches"].as_i64().unwrap(),
        );
        println!(
            "turtle squares via WBIA by UUID: score rel {rel:.1e}, {matches} matches (reference \
             {want_matches})"
        );
        assert_eq!(r["num_keypoints"], json!([2048, 2048]));
        assert!(rel <= 2e-4, "score {score} against {want}");
        assert!(
            (matches - want_matches).abs() * 100 <= want_matches,
            "{matches} matches"
        );
        if round == 1 {
            assert_eq!(
                fake.chip_requests.load(Ordering::SeqCst),
                fetched + 2 * (pairs.len() + 1),
                "each chip is fetched again (a picture may be asked for), once"
            );
            assert_eq!(
                state
                    .engine()
                    .cache_stats
                    .extractions
                    .load(Ordering::SeqCst),
                extracted,
                "nothing is extracted twice"
            );
        }
    }

    // The picture of a pair: the chips side by side with the matches the JSON gave.
    let form = reqwest::multipart::Form::new()
        .text("annot_uuid_0", Uuid::from_u128(0x5a1).to_string())
        .text("annot_uuid_1", Uuid::from_u128(0x5a2).to_string())
        .text("config_path", "plugin_defaults.json");
    let resp = client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(
        resp.headers()["x-lightglue-matches"],
        manifest["service_pairs"]["turtle_squares"]["num_matches"]
            .to_string()
            .as_str()
    );
    let picture = wbia_lightglue_model::decode_image(&resp.bytes().await.unwrap()).unwrap();
    // Two 518 px squares side by side, 8 px apart, not enlarged.
    assert_eq!((picture.width, picture.height), (518 + 8 + 518, 518));

    // An unknown annotation: WBIA's 600; one annotation, or an image and an annotation: 400.
    let resp = ask(0x1200, 0xdead, "config.json").await.unwrap();
    assert_eq!(resp.status(), 600);
    let one =
        reqwest::multipart::Form::new().text("annot_uuid_0", Uuid::from_u128(0x1200).to_string());
    let resp = client.post(&url).multipart(one).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_message_names(resp, "annot_uuid_1").await;
    let mixed = reqwest::multipart::Form::new()
        .text("annot_uuid_0", Uuid::from_u128(0x1200).to_string())
        .part("image1", reqwest::multipart::Part::bytes(vec![1, 2, 3]));
    let resp = client.post(&url).multipart(mixed).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let not_uuid = reqwest::multipart::Form::new()
        .text("annot_uuid_0", "turtle")
        .text("annot_uuid_1", Uuid::from_u128(0x1200).to_string());
    let resp = client.post(&url).multipart(not_uuid).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_message_names(resp, "annot_uuid_0").await;
    let twice = reqwest::multipart::Form::new()
        .text("annot_uuid_1", Uuid::from_u128(0x1200).to_string())
        .text("annot_uuid_1", Uuid::from_u128(0x1201).to_string());
    let resp = client.post(&url).multipart(twice).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_message_names(resp, "annot_uuid_1 given twice").await;
}

fn sweep_manifest() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/goldens/sweep_manifest.json")).unwrap(),
    )
    .unwrap()
}

/// The two sides of an image-to-image pair of the sweep: crops of fixture photos, as PNG.
fn i2i_sides(name: &str, pair: &Value) -> [Vec<u8>; 2] {
    // config.json (`our_server`) holds the recipe's settings.
    assert_eq!(
        (
            pair["image_size"].as_u64(),
            pair["max_num_keypoints"].as_i64()
        ),
        (Some(512), Some(512)),
        "{name}"
    );
    let side = |side: &Value| {
        let crop: Vec<u32> = side["crop"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(side["repeat"], 1, "{name}: only plain crops are used");
        let photo = wbia_lightglue_model::load_image(
            repo()
                .join("tests/fixtures")
                .join(side["fixture"].as_str().unwrap()),
        )
        .unwrap();
        let whole = image::RgbImage::from_raw(photo.width, photo.height, photo.data).unwrap();
        let part = image::imageops::crop_imm(&whole, crop[0], crop[1], crop[2], crop[3]).to_image();
        let mut png = std::io::Cursor::new(Vec::new());
        part.write_to(&mut png, image::ImageFormat::Png).unwrap();
        png.into_inner()
    };
    let sides = pair["sides"].as_array().unwrap();
    [side(&sides[0]), side(&sides[1])]
}

/// A `format=json` answer of `/api/lightglue/match/` against the reference's whole pipeline
/// on image-to-image pair `name`, match by match: matches paired by the positions of their
/// two keypoints (0.01 px), IoU ≥ 0.99 and the score within 0.5% (the promise); tight bounds
/// IoU ≥ 0.995, score 2e-4 and each paired match's confidence within 5e-4 (the sweep's).
fn assert_matches_reference(name: &str, r: &Value, manifest: &Value) {
    type Key = [[i64; 2]; 2];
    let key = |m: &[[f32; 2]; 2]| m.map(|p| p.map(|v| (v * 100.0).round() as i64));
    let ours: HashMap<Key, f32> = r["match_keypoints"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["match_scores"].as_array().unwrap())
        .map(|(m, s)| {
            let m: [[f32; 2]; 2] = serde_json::from_value(m.clone()).unwrap();
            (key(&m), s.as_f64().unwrap() as f32)
        })
        .collect();
    let golden =
        safetensors_f32(&repo().join(format!("tests/goldens/sweep/i2i_{name}.safetensors")));
    let (k0, k1, scores) = (
        &golden["keypoints0"],
        &golden["keypoints1"],
        &golden["scores"],
    );
    let reference: HashMap<Key, f32> = k0
        .chunks_exact(2)
        .zip(k1.chunks_exact(2))
        .zip(scores)
        .map(|((a, b), s)| (key(&[[a[0], a[1]], [b[0], b[1]]]), *s))
        .collect();
    let shared: Vec<&Key> = ours.keys().filter(|k| reference.contains_key(*k)).collect();
    let iou = shared.len() as f64 / (ours.len() + reference.len() - shared.len()) as f64;
    let worst = shared
        .iter()
        .map(|k| (ours[*k] - reference[*k]).abs())
        .fold(0f32, f32::max);
    let want = golden["score"][0];
    let score = r["score"].as_f64().unwrap() as f32;
    let rel = (score - want).abs() / want;
    println!(
        "{name}: {} matches (reference {}), IoU {iou:.4}, worst match {worst:.2e}, score rel {rel:.1e}",
        ours.len(),
        reference.len()
    );
    assert_eq!(
        manifest["image_to_image"][name]["num_matches"],
        reference.len()
    );
    assert!(iou >= 0.99 && rel <= 5e-3, "{name}: outside the promise");
    assert!(
        iou >= 0.995 && rel <= 2e-4 && worst <= 5e-4,
        "{name}: outside the tight bounds"
    );
}

/// Every tensor of a safetensors file of f32 tensors (the image-to-image goldens).
fn safetensors_f32(path: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            (name, values)
        })
        .collect()
}
