//! Which chip a feature set belongs to, when WBIA's annotations change under the service.
//!
//! By default a chip is known by its identity in WBIA (image UUID, bbox, theta), so a stored
//! feature set is reused without downloading the chip; `--verify-chip-bytes` downloads every
//! chip and keys features by its bytes. Checked against a fake WBIA whose annotations are
//! edited between queries: a re-cropped or turned annotation is downloaded and extracted
//! again, and scores as a separate annotation with the same chip does; a chip whose bytes
//! change under an unchanged identity keeps its old features by default and is re-extracted
//! with verification; a chip over `--max-chip-bytes` is refused with the limit named.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Router;
use common::envelope;
use serde_json::{json, Value};
use uuid::Uuid;
use wbia_client::{fancy_uuid, ClientOptions};
use wbia_lightglue_engine::EngineOptions;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn turtle(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/turtles").join(name)).unwrap()
}

/// One annotation as WBIA holds it.
#[derive(Clone)]
struct Annot {
    image: Uuid,
    bbox: [i64; 4],
    theta: f64,
    chip: Vec<u8>,
}

/// What WBIA 4.0.4 sent for a chip it could not make (its image file deleted), as recorded:
/// HTTP 200, `text/html`, an error envelope as the body.
fn missing_file_chip() -> (String, Vec<u8>) {
    let entry = common::recorded("annot_src_aid_14");
    let response = &entry["response"];
    assert_eq!(response["status"], 200, "{entry}");
    (
        response["content_type"].as_str().unwrap().to_string(),
        serde_json::to_vec(&response["json"]).unwrap(),
    )
}

#[derive(Default)]
struct Fake {
    annots: Mutex<HashMap<i64, Annot>>,
    downloads: Mutex<HashMap<i64, usize>>,
}

impl Fake {
    fn edit(&self, aid: i64, f: impl FnOnce(&mut Annot)) {
        f(self.annots.lock().unwrap().get_mut(&aid).unwrap());
    }

    fn downloads(&self, aid: i64) -> usize {
        self.downloads
            .lock()
            .unwrap()
            .get(&aid)
            .copied()
            .unwrap_or(0)
    }
}

fn uuid_of(aid: i64) -> Uuid {
    Uuid::from_u128(0xc41f_0000 + aid as u128)
}

fn aids_of(q: &HashMap<String, String>) -> Vec<i64> {
    let v: Value = serde_json::from_str(&q["annot_uuid_list"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|u| (wbia_client::uuid_from_value(u).unwrap().as_u128() - 0xc41f_0000) as i64)
        .collect()
}

/// Annotations 1–4 hold the four turtle chips (a1, a2, b3, b4), each its own image; WBIA
/// cannot make annotation 5's chip.
async fn fake_wbia() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    for (aid, chip) in [
        (1, "turtle_a1.jpg"),
        (2, "turtle_a2.jpg"),
        (3, "turtle_b3.jpg"),
        (4, "turtle_b4.jpg"),
        (5, ""),
    ] {
        fake.annots.lock().unwrap().insert(
            aid,
            Annot {
                image: Uuid::from_u128(0x1_0000 + aid as u128),
                bbox: [0, 0, 100, 100],
                theta: 0.0,
                chip: if chip.is_empty() {
                    missing_file_chip().1
                } else {
                    turtle(chip)
                },
            },
        );
    }
    type Getter = fn(i64, &Annot) -> Value;
    let getter = |f: Getter| {
        get(
            move |State(fake): State<Arc<Fake>>, Query(q): Query<HashMap<String, String>>| async move {
                let annots = fake.annots.lock().unwrap();
                envelope(
                    aids_of(&q)
                        .into_iter()
                        .map(|aid| annots.get(&aid).map_or(Value::Null, |a| f(aid, a)))
                        .collect(),
                )
            },
        )
    };
    let app = Router::new()
        .route("/api/annot/rowid/uuid/json/", getter(|aid, _| json!(aid)))
        .route("/api/annot/name/text/json/", getter(|_, _| json!("____")))
        .route("/api/annot/name/rowid/json/", getter(|aid, _| json!(-aid)))
        .route(
            "/api/annot/species/json/",
            getter(|_, _| json!("turtle_green")),
        )
        .route(
            "/api/annot/image/uuid/json/",
            getter(|_, a| json!(fancy_uuid(&a.image))),
        )
        .route("/api/annot/bbox/json/", getter(|_, a| json!(a.bbox)))
        .route("/api/annot/theta/json/", getter(|_, a| json!(a.theta)))
        .route(
            "/api/annot/src/{aid}/",
            get(
                |State(fake): State<Arc<Fake>>, Path(aid): Path<i64>| async move {
                    *fake.downloads.lock().unwrap().entry(aid).or_default() += 1;
                    let chip = fake.annots.lock().unwrap()[&aid].chip.clone();
                    let kind = if chip.starts_with(b"{") {
                        missing_file_chip().0
                    } else {
                        "image/jpeg".to_string()
                    };
                    ([("content-type", kind)], chip)
                },
            ),
        )
        .route(
            "/api/test/heartbeat/",
            get(|| async { envelope(json!(true)) }),
        )
        // For WBIA's GET form: every annotation, and rowids back to UUIDs.
        .route(
            "/api/annot/json/",
            get(|| async {
                envelope(
                    (1..=4)
                        .map(|aid| json!(fancy_uuid(&uuid_of(aid))))
                        .collect(),
                )
            }),
        )
        .route(
            "/api/annot/uuid/",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let aids: Vec<i64> = serde_json::from_str(&q["aid_list"]).unwrap();
                envelope(
                    aids.iter()
                        .map(|&aid| json!(fancy_uuid(&uuid_of(aid))))
                        .collect(),
                )
            }),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

/// The service on its own store, at 256 keypoints.
async fn ours(wbia: &str, verify_chip_bytes: bool, max_chip_bytes: usize) -> String {
    let data = std::env::temp_dir().join(format!("wbia-lg-chip-identity-{}", Uuid::new_v4()));
    common::serve_ours(
        wbia,
        r#"{"max_num_keypoints": 256}"#,
        EngineOptions {
            data_dir: Some(data),
            verify_chip_bytes,
            ..EngineOptions::default()
        },
        ClientOptions {
            max_chip_bytes,
            retries: 0,
            ..ClientOptions::default()
        },
    )
    .await
}

/// `chip/best` for one pair: HTTP status and body.
async fn query(base: &str, q: i64, d: i64) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            (
                "query_annot_uuid_list",
                json!([uuid_of(q).to_string()]).to_string(),
            ),
            (
                "database_annot_uuid_list",
                json!([uuid_of(d).to_string()]).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn score(base: &str, q: i64, d: i64) -> f64 {
    let (status, body) = query(base, q, d).await;
    assert_eq!(status, 200, "{body}");
    body["response"]["query_results"][0]["ranked"][0]["score"]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recropped_or_turned_annotation_is_extracted_again() {
    let (wbia, fake) = fake_wbia().await;
    let base = ours(&wbia, false, 32 << 20).await;
    let (with_b3, with_b4) = (score(&base, 1, 3).await, score(&base, 1, 4).await);
    let original = score(&base, 1, 2).await;
    assert_eq!(score(&base, 1, 2).await, original);
    assert_eq!(
        fake.downloads(2),
        1,
        "an unchanged annotation is known by identity"
    );

    // Re-cropped in WBIA: its chip is now b3's pixels.
    fake.edit(2, |a| {
        a.bbox = [10, 10, 80, 80];
        a.chip = turtle("turtle_b3.jpg");
    });
    assert_eq!(score(&base, 1, 2).await, with_b3);
    assert_eq!(fake.downloads(2), 2);
    // Turned in WBIA: b4's pixels.
    fake.edit(2, |a| {
        a.theta = 0.25;
        a.chip = turtle("turtle_b4.jpg");
    });
    assert_eq!(score(&base, 1, 2).await, with_b4);
    assert_eq!(fake.downloads(2), 3);
    // Moved to another image.
    fake.edit(2, |a| {
        a.image = Uuid::from_u128(0x2_0002);
        a.chip = turtle("turtle_a2.jpg");
    });
    assert_eq!(score(&base, 1, 2).await, original);
    assert_eq!(fake.downloads(2), 4);
    assert_ne!(original, with_b3);
    assert_ne!(with_b3, with_b4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_chip_bytes_under_one_identity_need_verification() {
    let (wbia, fake) = fake_wbia().await;
    let trusting = ours(&wbia, false, 32 << 20).await;
    let verifying = ours(&wbia, true, 32 << 20).await;
    let with_b3 = score(&trusting, 1, 3).await;
    let original = score(&trusting, 1, 2).await;
    assert_eq!(score(&verifying, 1, 2).await, original);
    assert_eq!(fake.downloads(2), 2, "one download by each");

    // Same image UUID, bbox and theta; other pixels (WBIA's chip settings changed, say).
    fake.edit(2, |a| a.chip = turtle("turtle_b3.jpg"));
    assert_eq!(
        score(&trusting, 1, 2).await,
        original,
        "trusted identity: the stored features, no download"
    );
    assert_eq!(fake.downloads(2), 2);
    assert_eq!(
        score(&verifying, 1, 2).await,
        with_b3,
        "verified: the new pixels"
    );
    assert_eq!(fake.downloads(2), 3);
    // Verification downloads every time; unchanged bytes reuse their features.
    assert_eq!(score(&verifying, 1, 2).await, with_b3);
    assert_eq!(fake.downloads(2), 4);
}

/// The database annotations an answer skipped, and why.
fn skipped(body: &Value) -> Vec<(Uuid, String)> {
    body["response"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                wbia_client::uuid_from_value(&s["dannot_uuid"]).unwrap(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A query chip over the limit fails the request (422, the limit named); a database chip
/// over it is skipped and named with the same reason. Neither is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chip_over_max_chip_bytes_is_refused_naming_the_limit() {
    let (wbia, fake) = fake_wbia().await;
    // a1 and a2 are 32,254 and 25,253 bytes; b3 50,589.
    let base = ours(&wbia, false, 40_000).await;
    assert!(score(&base, 1, 2).await > 0.0);
    let (status, body) = query(&base, 3, 1).await;
    assert_eq!(status, 422, "{body}");
    let message = body["status"]["message"].as_str().unwrap();
    assert!(message.contains("40000"), "{message}");
    assert_eq!(fake.downloads(3), 1, "refused at once, not retried");
    let (status, body) = query(&base, 1, 3).await;
    assert_eq!(status, 200, "{body}");
    let skipped = skipped(&body);
    assert_eq!(skipped.len(), 1, "{body}");
    assert_eq!(skipped[0].0, uuid_of(3));
    assert!(skipped[0].1.contains("40000"), "{skipped:?}");
    assert_eq!(body["response"]["query_results"][0]["ranked"], json!([]));
    assert_eq!(fake.downloads(3), 2);
}

/// A chip WBIA cannot make comes back as HTTP 200 `text/html` holding an error envelope (the
/// real WBIA's answer, recorded): as the query's chip, the answer is 502 with WBIA's reason,
/// not 422 "unsupported image format", and it is not retried (WBIA said why); as a database
/// annotation it is skipped with that reason while the rest are scored, as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chip_wbia_cannot_make_is_502_with_its_reason() {
    let (wbia, fake) = fake_wbia().await;
    let base = ours(&wbia, false, 32 << 20).await;
    let (status, body) = query(&base, 5, 1).await;
    assert_eq!(status, 502, "{body}");
    let message = body["status"]["message"].as_str().unwrap();
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(fake.downloads(5), 1);

    let alone = score(&base, 1, 2).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            (
                "query_annot_uuid_list",
                json!([uuid_of(1).to_string()]).to_string(),
            ),
            (
                "database_annot_uuid_list",
                json!([uuid_of(5).to_string(), uuid_of(2).to_string()]).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let skipped = skipped(&body);
    assert_eq!(skipped.len(), 1, "{body}");
    assert_eq!(skipped[0].0, uuid_of(5));
    assert!(skipped[0].1.contains("does not exist"), "{skipped:?}");
    let ranked = &body["response"]["query_results"][0]["ranked"];
    assert_eq!(ranked.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(ranked[0]["score"].as_f64().unwrap(), alone);
    let skipped_total = common::metric(
        &reqwest::Client::new(),
        &base,
        "wbia_lightglue_annotations_skipped_total",
    )
    .await;
    assert_eq!(skipped_total, 1);
}

/// WBIA's GET form when no candidate has a name (every annotation here is "____"): every
/// field null and `extern` an object of nulls, as WBIA 4.0.4's `review_query_chips_best`
/// writes it (it was `extern: null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_form_without_named_candidates_answers_nulls_as_wbia() {
    let (wbia, _) = fake_wbia().await;
    let base = ours(&wbia, false, 32 << 20).await;
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/review/query/chip/best/"))
        .query(&[
            ("aid", "1"),
            ("query_config_dict", r#"{"pipeline_root": "LightGlue"}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["response"],
        json!({
            "name": null,
            "sex": null,
            "age": null,
            "extern": {"reference": null, "qannot_uuid": null, "dannot_uuid": null},
        }),
        "{body}"
    );
}
