//! The client and the service against the real WBIA 4.0.4's recorded answers
//! (`common/replay.rs`): what the getters, chips and job routes of a real WBIA send, read as
//! the recording's database says they should be; then `chip/best`, a species-wide Wildbook
//! job and WBIA's GET form answered from those answers, with the database annotation whose
//! image file was deleted skipped and named.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::replay::{self, Replay};
use serde_json::{json, Value};
use uuid::Uuid;
use wbia_client::{fancy_uuid, ClientOptions, WbiaClient};
use wbia_lightglue_engine::EngineOptions;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The recorded database's annotation whose image file was deleted before recording.
const GONE: i64 = 14;

async fn replayed() -> (WbiaClient, Arc<Replay>, String) {
    let (url, replay) = replay::serve(Arc::new(Replay::load())).await;
    let client = WbiaClient::new(&url, ClientOptions::default()).unwrap();
    (client, replay, url)
}

#[tokio::test]
async fn the_client_reads_the_real_wbias_getters() {
    let (client, r, _) = replayed().await;
    let all: Vec<Uuid> = r.annots.iter().map(|a| a.uuid).collect();
    let (first, sixth) = (r.annots[0].clone(), r.annots[5].clone());
    let mixed = [first.uuid, r.unknown, sixth.uuid];
    assert!(client.heartbeat().await);

    let aids = client.annot_aids(&all).await.unwrap();
    assert_eq!(
        aids,
        r.annots.iter().map(|a| Some(a.aid)).collect::<Vec<_>>()
    );
    let aids = client.annot_aids(&mixed).await.unwrap();
    assert_eq!(aids, [Some(first.aid), None, Some(sixth.aid)]);

    // "____" is no name, for an unnamed annotation and for an unknown UUID alike.
    let names = client.annot_names(&all).await.unwrap();
    let want: Vec<Option<String>> = r
        .annots
        .iter()
        .map(|a| (a.name != "____").then(|| a.name.clone()))
        .collect();
    assert_eq!(names, want);
    assert_eq!(client.annot_names(&[r.unknown]).await.unwrap(), [None]);

    // Name rowids: `-aid` for the unnamed, nothing for an unknown UUID.
    let nids = client.annot_name_rowids(&all).await.unwrap();
    assert_eq!(
        nids,
        r.annots.iter().map(|a| Some(a.nid)).collect::<Vec<_>>()
    );
    assert!(r.annots.iter().any(|a| a.name == "____" && a.nid == -a.aid));
    let nids = client.annot_name_rowids(&mixed).await.unwrap();
    assert_eq!(nids, [Some(first.nid), None, Some(sixth.nid)]);

    let species = client.annot_species(&mixed).await.unwrap();
    assert_eq!(
        species,
        [
            Some(first.species.clone()),
            Some("____".to_string()),
            Some(sixth.species.clone())
        ]
    );

    let identities = client.annot_chip_identities(&all).await.unwrap();
    for (a, id) in r.annots.iter().zip(identities) {
        assert_eq!(id, Some((a.image_uuid, a.bbox, a.theta)), "aid {}", a.aid);
    }
    let identities = client.annot_chip_identities(&mixed).await.unwrap();
    assert_eq!(identities[1], None);

    // Ages never set are WBIA's -1; an unknown UUID has none.
    let ages = client.annot_age_months_min(&mixed).await.unwrap();
    assert_eq!(ages, [Some(-1), None, Some(-1)]);
    let sexes = client.annot_sex_texts(&mixed).await.unwrap();
    assert_eq!(
        sexes,
        [
            Some("UNKNOWN SEX".to_string()),
            Some("UNKNOWN NAME".to_string()),
            Some("UNKNOWN NAME".to_string())
        ],
        "WBIA's texts (the unnamed sixth has no individual, hence no sex)"
    );

    let by_aid = client
        .annot_uuids_by_aid(&[first.aid, sixth.aid, 9999])
        .await
        .unwrap();
    assert_eq!(by_aid, [Some(first.uuid), Some(sixth.uuid), None]);
    let mut listed = client.all_annot_uuids().await.unwrap();
    let mut want = all.clone();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "/api/annot/json/ lists every annotation");
}

#[tokio::test]
async fn the_client_reads_the_real_wbias_chips_and_their_errors() {
    let (client, r, _) = replayed().await;
    let first = &r.annots[0];
    let chip = client.chip_by_aid(first.uuid, first.aid).await.unwrap();
    assert!(wbia_lightglue_model::decode_image(&chip).is_ok());
    for (aid, says) in [(GONE, "does not exist"), (9999, "")] {
        match client.chip_by_aid(Uuid::nil(), aid).await {
            Err(wbia_client::Error::Wbia { message, .. }) => {
                assert!(message.contains(says), "aid {aid}: {message}")
            }
            other => panic!("aid {aid}: {other:?}"),
        }
    }
    // WBIA's own jobs, as its job list answered after the recording's jobs started.
    let jobs = client.job_ids().await.unwrap();
    assert!(!jobs.is_empty());
}

/// Our service in front of the replay, at 256 keypoints (quick in debug builds).
async fn ours(wbia: &str) -> String {
    common::serve_ours(
        wbia,
        r#"{"max_num_keypoints": 256}"#,
        EngineOptions::default(),
        ClientOptions::default(),
    )
    .await
}

fn uuid_of(v: &Value) -> Uuid {
    wbia_client::uuid_from_value(v).unwrap()
}

/// `chip/best`, a species-wide job and the GET form from the recorded answers: the deleted
/// image's annotation is skipped and named (WBIA's reason), the others are scored, names are
/// WBIA's (name rowids: these names are not UUIDs), the GET form's sex and age are WBIA's
/// texts for individuals whose sex and age were never set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_from_the_real_wbias_answers() {
    let (_, r, wbia) = replayed().await;
    let base = ours(&wbia).await;
    let client = reqwest::Client::new();
    let query = r.annot(1).clone();
    let turtles: Vec<_> = r
        .annots
        .iter()
        .filter(|a| a.species == query.species && a.aid != query.aid)
        .cloned()
        .collect();
    assert_eq!(
        turtles.iter().map(|a| a.aid).collect::<Vec<_>>(),
        [2, 3, 4, GONE]
    );
    let gone = r.annot(GONE).uuid;

    let answer: Value = client
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            ("query_annot_uuid_list", json!([query.uuid]).to_string()),
            (
                "database_annot_uuid_list",
                json!(turtles.iter().map(|a| a.uuid).collect::<Vec<_>>()).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"]["code"], 200, "{answer}");
    let skipped = answer["response"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{answer}");
    assert_eq!(uuid_of(&skipped[0]["dannot_uuid"]), gone);
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let ranked = answer["response"]["query_results"][0]["ranked"]
        .as_array()
        .unwrap();
    let mut scored: Vec<Uuid> = ranked.iter().map(|s| uuid_of(&s["dannot_uuid"])).collect();
    scored.sort();
    let mut want: Vec<Uuid> = turtles[..3].iter().map(|a| a.uuid).collect();
    want.sort();
    assert_eq!(scored, want);

    // The species-wide job Wildbook starts (no database list).
    let jobid = "recorded-species-wide";
    let started: Value = client
        .post(format!("{base}/api/engine/query/graph/"))
        .form(&[
            (
                "query_annot_uuid_list",
                json!([fancy_uuid(&query.uuid)]).to_string(),
            ),
            (
                "query_config_dict",
                r#"{"pipeline_root": "LightGlue"}"#.to_string(),
            ),
            ("jobid", jobid.to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started["status"]["code"], 200, "{started}");
    let (status, _) = common::wait_for_job_progress(&client, &base, jobid, 300).await;
    assert_eq!(status, "completed");
    let result = common::job_result(&client, &base, jobid).await;
    let document = &result["response"]["json_result"];
    let cm = &document["cm_dict"][query.uuid.to_string()];
    assert_eq!(cm["qname"], "turtle_a");
    assert_eq!(cm["qname_uuid"], json!(query.nid));
    let listed: Vec<Uuid> = cm["dannot_uuid_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(
        listed,
        turtles[..3].iter().map(|a| a.uuid).collect::<Vec<_>>()
    );
    assert_eq!(
        cm["dname_uuid_list"],
        json!(turtles[..3].iter().map(|a| a.nid).collect::<Vec<_>>())
    );
    assert_eq!(
        cm["dname_list"],
        json!(turtles[..3]
            .iter()
            .map(|a| a.name.clone())
            .collect::<Vec<_>>())
    );
    let skipped = document["skipped_annot_list"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(uuid_of(&skipped[0]["dannot_uuid"]), gone);

    // WBIA's GET form: one rowid against every annotation (zebras too).
    let answer: Value = client
        .get(format!("{base}/api/review/query/chip/best/"))
        .query(&[
            ("aid", query.aid.to_string()),
            (
                "query_config_dict",
                r#"{"pipeline_root": "LightGlue"}"#.to_string(),
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"]["code"], 200, "{answer}");
    let best = &answer["response"];
    assert_eq!(best["name"], "turtle_a", "{answer}");
    assert_eq!(best["sex"], "Unknown Sex");
    assert_eq!(best["age"], "Unknown");
    assert_eq!(best["extern"]["qannot_uuid"], query.uuid.to_string());
    assert_eq!(best["extern"]["dannot_uuid"], r.annot(2).uuid.to_string());

    // WBIA's image paths (under its database folder, not here) cannot be read by this
    // service: its chips were downloaded, and it says so in /info and /metrics.
    let info: Value = client
        .get(format!("{base}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chips = &info["chips"];
    assert_eq!(chips["mode"], "auto", "{info}");
    assert_eq!(chips["made_from_image_files"], 0, "{info}");
    assert!(
        chips["image_files_unreadable"].as_u64().unwrap() > 0,
        "{info}"
    );
    assert!(
        chips["last_unreadable"]
            .as_str()
            .unwrap()
            .contains("<DBDIR>"),
        "{info}"
    );
    let unreadable = common::metric(
        &client,
        &base,
        "wbia_lightglue_chips_image_file_unreadable_total",
    )
    .await;
    assert_eq!(
        unreadable,
        chips["image_files_unreadable"].as_u64().unwrap()
    );
}

/// WBIA's `_ibsdb/images/` as the recorded database had it, rebuilt from the repo: the files
/// WBIA copied unchanged are the fixtures they came from, the three it rewrote at import are
/// in `tests/fixtures/wbia_chips/`; the deleted one stays missing.
fn wbia_images(r: &Replay) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wbia-lg-recorded-images-{}-{}",
        std::process::id(),
        Uuid::new_v4()
    ));
    let images = dir.join("_ibsdb/images");
    std::fs::create_dir_all(&images).unwrap();
    for a in r.annots.iter().filter(|a| a.aid != GONE) {
        let rewritten = repo().join("tests/fixtures/wbia_chips").join(&a.image_file);
        let source = if rewritten.exists() {
            rewritten
        } else {
            repo().join("tests/fixtures").join(&a.fixture)
        };
        std::fs::copy(source, images.join(&a.image_file)).unwrap();
    }
    dir
}

/// SHA-256 of a chip's pixels in OpenCV's BGR order, as `chips.json` holds WBIA's.
fn bgr_sha256(image: &wbia_lightglue_model::RgbImage) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for px in image.data.chunks_exact(3) {
        h.update([px[2], px[1], px[0]]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Through the service's own lookup (recorded image paths under WBIA's database folder,
/// mapped with `--wbia-path-map`; recorded stored orientations, bboxes and thetas), every
/// chip made from WBIA's image files equals, bit for bit, what the real WBIA's
/// `ibs.get_annot_chips` returned for it (`chips.json`); the annotation whose file is gone
/// falls back to WBIA's download (which WBIA refuses). With `download`, nothing is made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chips_made_from_wbias_files_equal_wbias_own() {
    use wbia_lightglue_engine::{Chip, ChipPixels, ChipSource};
    use wbia_lightglue_service::{Annotations, ChipMode, ChipOptions};
    let (client, r, _) = replayed().await;
    let images = wbia_images(&r);
    let recorded = common::transcripts();
    let chips: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("crates/server/tests/data/real-wbia/chips.json"))
            .unwrap(),
    )
    .unwrap();
    let wbia_sha: std::collections::HashMap<i64, String> = chips["chips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            Some((
                c["aid"].as_i64()?,
                c["pixels"]["sha256"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(recorded["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "annot_image_file_path_known"));
    let options = ChipOptions {
        mode: ChipMode::Auto,
        path_map: Some(format!("<DBDIR>={}", images.display()).parse().unwrap()),
        ..ChipOptions::default()
    };
    let annotations = Annotations::new(client.clone(), options);
    let all: Vec<Uuid> = r.annots.iter().map(|a| a.uuid).collect();
    let resolved = annotations.resolve(&all).await.unwrap();
    let source = annotations.chips(&resolved);
    let mut compared = 0;
    for (a, recorded) in resolved.iter().zip(&r.annots) {
        let pixels = a.chip.as_ref().unwrap().pixels;
        if recorded.aid == GONE {
            assert_eq!(pixels, ChipPixels::Downloaded, "no file: downloaded");
            let refused = source.chip(a.uuid).await.unwrap_err();
            assert!(refused.to_string().contains("does not exist"), "{refused}");
            continue;
        }
        assert_eq!(pixels, ChipPixels::FromImage, "aid {}", recorded.aid);
        let chip = source.chip(a.uuid).await.unwrap();
        assert!(matches!(chip, Chip::FromImage { .. }));
        let made = chip.pixels().unwrap();
        assert_eq!(
            bgr_sha256(&made),
            wbia_sha[&recorded.aid],
            "aid {} ({})",
            recorded.aid,
            recorded.fixture
        );
        compared += 1;
    }
    assert_eq!(compared, r.annots.len() - 1);
    let stats = annotations.stats();
    assert_eq!(
        stats.from_images.load(std::sync::atomic::Ordering::Relaxed),
        compared as u64
    );
    assert_eq!(
        stats.unreadable.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(stats
        .last_unreadable()
        .unwrap()
        .contains(&r.annot(GONE).image_file));

    let downloading = Annotations::new(
        client,
        ChipOptions {
            mode: ChipMode::Download,
            ..ChipOptions::default()
        },
    );
    let resolved = downloading.resolve(&all).await.unwrap();
    assert!(resolved
        .iter()
        .all(|a| a.chip.as_ref().unwrap().pixels == ChipPixels::Downloaded));
    let chip = downloading.chips(&resolved).chip(all[0]).await.unwrap();
    assert!(matches!(chip, Chip::Encoded(_)));
    std::fs::remove_dir_all(images).unwrap();
}

/// The jobs the real WBIA ran with the real wbia-plugin-lightglue
/// (`tests/data/real-wbia/lightglue_job.json`), started here the same way against the
/// recorded database: every field of the result at every depth, of the same kind, and the
/// same values wherever they do not depend on the scores: the query, its name and name id,
/// the database annotations with their names and name ids in WBIA's order, the individuals,
/// the echoed lists and configuration. (Scores: here 256 keypoints on the fixture images;
/// `scripts/real-wbia/plugin_job.py` compares them at the plugin's defaults on WBIA's chips.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightglue_job_answers_as_the_real_plugins() {
    let (_, _, wbia) = replayed().await;
    let base = ours(&wbia).await;
    let client = reqwest::Client::new();
    let recorded = common::lightglue_jobs();
    for key in ["turtle", "zebra"] {
        let start = recorded["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == format!("lightglue_job_start_{key}"))
            .unwrap();
        let form = start["request"]["form"].as_object().unwrap();
        let jobid = format!("recorded-lightglue-{key}");
        let fields = [
            "query_annot_uuid_list",
            "database_annot_uuid_list",
            "query_config_dict",
        ];
        let mut body: Vec<(&str, String)> = fields
            .iter()
            .map(|f| (*f, form[*f].as_str().unwrap().to_string()))
            .collect();
        body.push(("jobid", jobid.clone()));
        let (_, started) =
            common::post_form(&client, &format!("{base}/api/engine/query/graph/"), &body).await;
        assert_eq!(started["status"]["code"], 200, "{key}: {started}");
        let (status, _) = common::wait_for_job_progress(&client, &base, &jobid, 600).await;
        assert_eq!(status, "completed", "{key}");
        let text = common::job_result_text(&client, &base, &jobid).await;
        let ours = common::parse_marking_nonfinite(&text);
        let mut theirs = common::recorded_lightglue_result(key);
        let want = &theirs["response"]["json_result"];
        let q = want["query_annot_uuid_list"][0]["__UUID__"]
            .as_str()
            .unwrap()
            .to_string();
        let got = &ours["response"]["json_result"];
        for k in ["query_annot_uuid_list", "query_config_dict"] {
            assert_eq!(got[k], want[k], "{key}: {k}");
        }
        // The echoed database with the query in it, by rowid as WBIA sorts it.
        assert_eq!(
            got["database_annot_uuid_list"], want["database_annot_uuid_list"],
            "{key}"
        );
        let (cm, want_cm) = (&got["cm_dict"][&q], &want["cm_dict"][&q]);
        for k in [
            "qannot_uuid",
            "qname",
            "qname_uuid",
            "dannot_uuid_list",
            "dname_list",
            "dname_uuid_list",
        ] {
            assert_eq!(cm[k], want_cm[k], "{key}: cm_dict.{k}");
        }
        // The individuals, by name id as WBIA lists them (`-aid` for the unnamed, so those
        // first), each with the same name.
        for k in ["unique_name_uuid_list", "unique_name_list"] {
            assert_eq!(cm[k], want_cm[k], "{key}: cm_dict.{k}");
        }
        let mut ours = ours.clone();
        common::drop_known_result_differences(&mut ours, &mut theirs);
        common::assert_same_shape(&ours, &theirs, key);
    }
}
