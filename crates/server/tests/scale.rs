//! Species scale through the real router: a fake WBIA serving 2,000 distinct annotations of
//! one species (64 × 48 PNG crops of a fixture, each its own image), a small configuration
//! (64 px, 32 keypoints) so that it runs in minutes on two cores, and the service's own
//! metrics as the evidence.
//!
//! Checked: a cold species-wide engine job (1 vs 1,999) completes with no 429, downloading
//! each chip exactly once; a 1-vs-1 query sent meanwhile answers within 20 s; two concurrent
//! species-wide jobs both complete, their scores (sampled) equal to a fresh process's; a
//! repeat downloads 0 chips, extracts 0 features and gives the cold job's scores; a hanging chip endpoint fails only its
//! own request, by timeout, while another request's chips flow; the process' peak RSS stays
//! under 1.5 GiB.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::{admissions_given_back, envelope, job_result, metric, wait_for_job_progress};
use serde_json::{json, Value};
use uuid::Uuid;
use wbia_client::{fancy_uuid, ClientOptions, WbiaClient};
use wbia_lightglue_engine::{ConfigDir, Engine, EngineOptions};
use wbia_lightglue_server::{router, AppState, ServerOptions};

const ANNOTS: usize = 2000;
/// The annotation whose chip endpoint never answers (not of the species).
const HANGING_AID: i64 = 9999;
/// Annotation UUIDs are this plus the rowid.
const UUID_BASE: u128 = 0x0005_ca1e_0000_0000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn uuid_of_aid(aid: i64) -> Uuid {
    Uuid::from_u128(UUID_BASE + aid as u128)
}

struct Fake {
    chips: HashMap<i64, Vec<u8>>,
    chip_requests: AtomicUsize,
    /// Downloads of each annotation's chip.
    per_chip: std::sync::Mutex<HashMap<i64, usize>>,
}

fn aids_of(q: &HashMap<String, String>) -> Vec<i64> {
    let v: Value = serde_json::from_str(&q["annot_uuid_list"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let u = wbia_client::uuid_from_value(u).unwrap().as_u128();
            (u - UUID_BASE) as i64
        })
        .collect()
}

/// 64 × 48 crops of sacre_coeur1 at distinct offsets, as PNG: 2,000 distinct chips.
fn chips() -> HashMap<i64, Vec<u8>> {
    let src =
        wbia_lightglue_model::load_image(repo().join("tests/fixtures/lightglue/sacre_coeur1.jpg"))
            .unwrap();
    let (w, h) = (64u32, 48u32);
    (1..=ANNOTS as i64)
        .map(|aid| {
            let i = aid as u32;
            let (x0, y0) = ((i * 37) % (src.width - w), (i * 23) % (src.height - h));
            let mut px = Vec::with_capacity((w * h * 3) as usize);
            for y in y0..y0 + h {
                let row = (y * src.width + x0) as usize * 3;
                px.extend_from_slice(&src.data[row..row + w as usize * 3]);
            }
            let img = image::RgbImage::from_raw(w, h, px).unwrap();
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png).unwrap();
            (aid, png.into_inner())
        })
        .collect()
}

async fn fake_wbia() -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(Fake {
        chips: chips(),
        chip_requests: AtomicUsize::new(0),
        per_chip: Default::default(),
    });
    let per_annot = |f: fn(i64) -> Value| {
        get(move |Query(q): Query<HashMap<String, String>>| async move {
            envelope(aids_of(&q).into_iter().map(f).collect())
        })
    };
    let app = Router::new()
        .route("/api/annot/rowid/uuid/json/", per_annot(|aid| json!(aid)))
        .route(
            "/api/annot/name/text/json/",
            per_annot(|aid| json!(format!("animal_{}", aid / 2))),
        )
        .route(
            "/api/annot/name/rowid/json/",
            per_annot(|aid| json!(aid / 2 + 1)),
        )
        .route(
            "/api/annot/image/uuid/json/",
            per_annot(|aid| json!(fancy_uuid(&Uuid::from_u128(0x1_0000 + aid as u128)))),
        )
        .route(
            "/api/annot/bbox/json/",
            per_annot(|_| json!([0, 0, 64, 48])),
        )
        .route("/api/annot/theta/json/", per_annot(|_| json!(0.0)))
        .route(
            "/api/annot/species/json/",
            per_annot(|aid| {
                json!(if aid == HANGING_AID {
                    "other"
                } else {
                    "zebra_plains"
                })
            }),
        )
        .route(
            "/api/annot/json/",
            get(|| async {
                envelope(
                    (1..=ANNOTS as i64)
                        .map(|a| fancy_uuid(&uuid_of_aid(a)))
                        .collect(),
                )
            }),
        )
        .route(
            "/api/annot/src/{aid}/",
            get(
                |State(f): State<Arc<Fake>>, Path(aid): Path<i64>| async move {
                    if aid == HANGING_AID {
                        std::future::pending::<()>().await;
                    }
                    f.chip_requests.fetch_add(1, Ordering::SeqCst);
                    *f.per_chip.lock().unwrap().entry(aid).or_default() += 1;
                    ([("content-type", "image/png")], f.chips[&aid].clone()).into_response()
                },
            ),
        )
        .route(
            "/api/test/heartbeat/",
            get(|| async { envelope(json!(true)) }),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, fake)
}

async fn our_server(wbia: SocketAddr) -> SocketAddr {
    let dir = std::env::temp_dir().join(format!("wbia-lg-scale-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"max_num_keypoints": 32, "image_size": 64}"#,
    )
    .unwrap();
    let options = ClientOptions {
        initial_backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        chip_deadline: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let state = Arc::new(AppState::new(
        Engine::start(EngineOptions {
            weights_dir: Some(repo().join("weights")),
            data_dir: Some(dir.join("data")),
            ..EngineOptions::default()
        })
        .unwrap(),
        WbiaClient::new(&format!("http://{wbia}"), options).unwrap(),
        ConfigDir::new(dir),
        ServerOptions::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    addr
}

/// Starts a species-wide job for the annotation `aid`; panics on anything but acceptance.
async fn start_job(client: &reqwest::Client, base: &str, aid: i64, jobid: &str) {
    let resp = client
        .post(format!("{base}/api/engine/query/graph/"))
        .form(&[
            (
                "query_annot_uuid_list",
                json!([uuid_of_aid(aid).to_string()]).to_string(),
            ),
            (
                "query_config_dict",
                r#"{"pipeline_root": "LightGlue"}"#.to_string(),
            ),
            ("jobid", jobid.to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
}

/// Waits (up to 10 minutes) for a job's end: its status and `json_result`.
async fn finished(client: &reqwest::Client, base: &str, jobid: &str) -> (String, Value) {
    let (status, _) = wait_for_job_progress(client, base, jobid, 600).await;
    let result = job_result(client, base, jobid).await;
    (status, result["response"]["json_result"].clone())
}

/// `chip/best` for the pair (q, d).
async fn pair_query(client: &reqwest::Client, base: &str, q: i64, d: i64) -> reqwest::Response {
    client
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            (
                "query_annot_uuid_list",
                json!([uuid_of_aid(q).to_string()]).to_string(),
            ),
            (
                "database_annot_uuid_list",
                json!([uuid_of_aid(d).to_string()]).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send()
        .await
        .unwrap()
}

async fn one_vs_one(client: &reqwest::Client, base: &str, q: i64, d: i64) -> (u16, Duration) {
    let started = Instant::now();
    let resp = pair_query(client, base, q, d).await;
    (resp.status().as_u16(), started.elapsed())
}

/// A job result's scores by database annotation.
fn scores_of(result: &Value, query: i64) -> HashMap<Uuid, f64> {
    let cm = &result["cm_dict"][uuid_of_aid(query).to_string()];
    cm["dannot_uuid_list"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cm["annot_score_list"].as_array().unwrap())
        .map(|(u, s)| {
            (
                wbia_client::uuid_from_value(u).unwrap(),
                s.as_f64().unwrap(),
            )
        })
        .collect()
}

/// The score of one pair, through `chip/best`.
async fn one_vs_one_score(client: &reqwest::Client, base: &str, q: i64, d: i64) -> f64 {
    let body: Value = pair_query(client, base, q, d).await.json().await.unwrap();
    body["response"]["query_results"][0]["ranked"][0]["score"]
        .as_f64()
        .unwrap_or_else(|| panic!("{body}"))
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn species_of_2000_annotations() {
    let (wbia, fake) = fake_wbia().await;
    let addr = our_server(wbia).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    // 1. Cold species-wide job, with a 1-vs-1 query sent while it works.
    let started = Instant::now();
    start_job(&client, &base, 1, "cold").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, took) = one_vs_one(&client, &base, 1990, 1991).await;
    assert_eq!(code, 200);
    println!("1-vs-1 during the cold job: {took:?}");
    assert!(took < Duration::from_secs(20), "1-vs-1 took {took:?}");
    let (status, result) = finished(&client, &base, "cold").await;
    assert_eq!(status, "completed", "{result}");
    let cold = started.elapsed();
    let ranked = result["cm_dict"][uuid_of_aid(1).to_string()]["dannot_uuid_list"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(ranked, ANNOTS - 1);
    let downloads = fake.chip_requests.load(Ordering::SeqCst);
    let extractions = metric(&client, &base, "wbia_lightglue_extractions_total").await;
    println!("cold job: {cold:?}, {downloads} chips downloaded, {extractions} extractions");
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_requests_refused_total").await,
        0
    );
    // Every chip of the species exactly once: the job's and the concurrent query's requests
    // for the same annotations share their downloads.
    {
        let per_chip = fake.per_chip.lock().unwrap();
        let twice: Vec<_> = per_chip.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "chips downloaded more than once: {twice:?}"
        );
        assert_eq!(per_chip.len(), ANNOTS);
    }
    assert_eq!(downloads, ANNOTS);
    let cold_scores = scores_of(&result, 1);

    // 2. Two species-wide jobs at once, for other queries: both complete; the chips are
    //    known by identity, so neither downloads nor extracts anything.
    start_job(&client, &base, 2, "twin-a").await;
    start_job(&client, &base, 3, "twin-b").await;
    let twins = [
        (2, finished(&client, &base, "twin-a").await),
        (3, finished(&client, &base, "twin-b").await),
    ];
    for (_, (status, result)) in &twins {
        assert_eq!(status, "completed", "{result}");
    }
    assert_eq!(
        fake.chip_requests.load(Ordering::SeqCst),
        downloads,
        "chips downloaded again"
    );
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_extractions_total").await,
        extractions
    );
    // Each twin's scores, on a sample of its database, equal a fresh process's (its own
    // store, nothing shared) for the same pairs.
    let fresh = format!("http://{}", our_server(wbia).await);
    for (query, (status, result)) in &twins {
        assert_eq!(status, "completed", "{result}");
        let scores = scores_of(result, *query);
        assert_eq!(scores.len(), ANNOTS - 1);
        for d in (1..=ANNOTS as i64).filter(|d| d != query).step_by(97) {
            let expected = one_vs_one_score(&client, &fresh, *query, d).await;
            assert_eq!(scores[&uuid_of_aid(d)], expected, "{query} vs {d}");
        }
    }
    // The fresh process downloaded its own chips.
    let downloads = fake.chip_requests.load(Ordering::SeqCst);

    // 3. The cold job repeated: no download, no extraction, no match (stored scores).
    let started = Instant::now();
    let matched = metric(&client, &base, "wbia_lightglue_pairs_matched_total").await;
    start_job(&client, &base, 1, "repeat").await;
    let (status, repeat) = finished(&client, &base, "repeat").await;
    assert_eq!(status, "completed");
    assert_eq!(
        scores_of(&repeat, 1),
        cold_scores,
        "the repeat's scores are the cold job's"
    );
    println!("repeat: {:?}", started.elapsed());
    // Every stored row read back intact (scores of 0, from pairs without matches, included).
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_store_corrupt_rows_total").await,
        0
    );
    assert_eq!(fake.chip_requests.load(Ordering::SeqCst), downloads);
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_extractions_total").await,
        extractions
    );
    assert_eq!(
        metric(&client, &base, "wbia_lightglue_pairs_matched_total").await,
        matched
    );

    // 4. A hanging chip endpoint: its request fails by timeout (per-chip deadline 5 s);
    //    another request's chips flow meanwhile.
    let hanging = client
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            (
                "query_annot_uuid_list",
                json!([uuid_of_aid(HANGING_AID).to_string()]).to_string(),
            ),
            (
                "database_annot_uuid_list",
                json!([uuid_of_aid(5).to_string()]).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send();
    let other = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        one_vs_one(&client, &base, 1500, 1501).await
    };
    let (hanging, (code, took)) = tokio::join!(hanging, other);
    assert_eq!(code, 200);
    assert!(
        took < Duration::from_secs(3),
        "other request waited {took:?}"
    );
    let hanging = hanging.unwrap();
    assert_eq!(hanging.status().as_u16(), 502);
    let body: Value = hanging.json().await.unwrap();
    assert!(
        body["status"]["message"]
            .as_str()
            .unwrap()
            .contains("within"),
        "{body}"
    );

    // Every ticket of every job and query above has been given back.
    admissions_given_back(&client, &base).await;
    let rss = peak_rss_mib();
    println!("peak RSS of the test process: {rss} MiB");
    assert!(rss < 1536, "peak RSS {rss} MiB");
}
