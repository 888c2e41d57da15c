//! Two `wbia-lightglue serve` processes on loopback sharing one PostgreSQL database (the
//! server `scripts/test.sh` starts), in front of a fake WBIA: a job started on one is answered
//! by the other (status while it works, then the same result), its id is taken on both, and
//! the features and pair scores one replica computed serve the other without extraction or
//! matching.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query};
use axum::routing::get;
use serde_json::{json, Value};

mod support;

use support::{
    fetch, json_of, metric, serve, serve_with_data, wait_ready, PrivatePostgres, Replica,
};

const URL_VAR: &str = "WBIA_LIGHTGLUE_TEST_DATABASE_URL";
/// Small settings: these tests are about sharing, not about the models.
const SMALL: &str = r#"{"max_num_keypoints": 128, "image_size": 256}"#;
/// Annotations the fake WBIA holds (the four turtle chips, repeated).
const ANNOTS: u128 = 12;
/// An annotation whose chip the fake WBIA serves as HTML.
const BROKEN: u128 = 999;
/// An annotation whose chip the fake WBIA answers with HTTP 500 (WBIA failing, not the chip).
const FAILING: u128 = 998;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn uuid(n: u128) -> String {
    format!("00000000-0000-0000-0000-{n:012x}")
}

/// A new database on the test server; its URL.
fn fresh_database(tag: &str) -> String {
    let url = std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!("{URL_VAR} is not set: run the tests with scripts/test.sh, which starts PostgreSQL")
    });
    let name = format!("lg_replicas_{tag}_{}", std::process::id());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("test server");
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&statement).unwrap();
    }
    let (server, _) = url.split('?').next().unwrap().rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// WBIA's getters over `ANNOTS` annotations (rowid n, chip n mod 4), one envelope each; the
/// chip of [`BROKEN`] is not an image.
fn fake_wbia(runtime: &tokio::runtime::Runtime) -> String {
    fake_wbia_with_chip_delay(runtime, Duration::ZERO)
}

/// As [`fake_wbia`], each chip sent after `delay`.
fn fake_wbia_with_chip_delay(runtime: &tokio::runtime::Runtime, delay: Duration) -> String {
    let chips = [
        "turtle_a1.jpg",
        "turtle_a2.jpg",
        "turtle_b3.jpg",
        "turtle_b4.jpg",
    ];
    let envelope =
        |v: Value| axum::Json(json!({"status": {"success": true, "code": 200}, "response": v}));
    let per_annot = move |q: HashMap<String, String>, f: fn(u128) -> Value| {
        let list: Vec<Value> = serde_json::from_str(&q["annot_uuid_list"]).unwrap();
        let out: Vec<Value> = list
            .iter()
            .map(|u| {
                let s = u["__UUID__"].as_str().or(u.as_str()).unwrap();
                f(u128::from_str_radix(&s.replace('-', ""), 16).unwrap())
            })
            .collect();
        envelope(Value::Array(out))
    };
    let app = axum::Router::new()
        .route(
            "/api/test/heartbeat/",
            get(move || async move { envelope(json!(true)) }),
        )
        .route(
            "/api/annot/rowid/uuid/json/",
            get(move |Query(q)| async move { per_annot(q, |n| json!(n as i64)) }),
        )
        .route(
            "/api/annot/name/text/json/",
            get(
                move |Query(q)| async move { per_annot(q, |n| json!(format!("turtle_{}", n % 2))) },
            ),
        )
        .route(
            "/api/annot/name/rowid/json/",
            get(move |Query(q)| async move { per_annot(q, |n| json!(n as i64 % 2 + 1)) }),
        )
        .route(
            "/api/annot/src/{aid}/",
            get(move |Path(aid): Path<u128>| async move {
                use axum::response::IntoResponse;
                tokio::time::sleep(delay).await;
                if aid == BROKEN {
                    return b"<html>not a chip</html>".to_vec().into_response();
                }
                if aid == FAILING {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "crashed")
                        .into_response();
                }
                std::fs::read(fixture(&format!("turtles/{}", chips[(aid % 4) as usize])))
                    .unwrap()
                    .into_response()
            }),
        );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn replica(name: &str, wbia: &str, database: &str, extra: &[&str]) -> Replica {
    serve(name, wbia, Some(database), extra, SMALL)
}

/// An independent baseline: one process with its own fresh SQLite store, sharing nothing
/// with the replicas, so that a wrong shared row cannot agree with itself.
fn baseline(name: &str, wbia: &str) -> Replica {
    serve(name, wbia, None, &[], SMALL)
}

#[test]
fn replicas_share_jobs_features_and_scores() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia(&runtime);
    let database = fresh_database("share");
    let (a, b) = (
        replica("a", &wbia, &database, &[]),
        replica("b", &wbia, &database, &[]),
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    for r in [&a, &b] {
        while fetch(&client, &format!("{}/health", r.base)).0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{} never ready",
                r.base
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let fancy = |n: u128| json!({"__UUID__": uuid(n)});
    let database_list: Vec<Value> = (2..=ANNOTS).map(fancy).collect();
    let form = [
        ("query_annot_uuid_list", json!([fancy(1)]).to_string()),
        ("database_annot_uuid_list", json!(database_list).to_string()),
        (
            "query_config_dict",
            r#"{"pipeline_root":"LightGlue"}"#.to_string(),
        ),
        ("jobid", "shared-job".to_string()),
    ];
    let started = client
        .post(format!("{}/api/engine/query/graph/", a.base))
        .form(&form)
        .send()
        .unwrap();
    assert_eq!(started.status(), 200, "{}", started.text().unwrap());

    // Replica b answers for a's job from the start (the claim is the first thing shared).
    let status_url = format!("{}/api/engine/job/status/?jobid=shared-job", b.base);
    let first = json_of(&fetch(&client, &status_url).1);
    assert_eq!(first["response"]["jobid"], "shared-job", "{first}");
    let mut states = vec![first["response"]["jobstatus"].as_str().unwrap().to_string()];
    let waited = Instant::now();
    while states.last().unwrap() == "working" {
        assert!(waited.elapsed() < Duration::from_secs(300), "{states:?}");
        std::thread::sleep(Duration::from_millis(250));
        let s = json_of(&fetch(&client, &status_url).1);
        states.push(s["response"]["jobstatus"].as_str().unwrap().to_string());
    }
    println!(
        "b saw a's job as {:?} … {:?}",
        states.first(),
        states.last()
    );
    assert_eq!(states.last().unwrap(), "completed");

    // The same result from either replica, byte for byte.
    let result = |r: &Replica| {
        fetch(
            &client,
            &format!("{}/api/engine/job/result/?jobid=shared-job", r.base),
        )
    };
    let (from_a, from_b) = (result(&a), result(&b));
    assert_eq!(from_a.0, 200);
    assert_eq!(from_a, from_b);
    let doc = json_of(&from_b.1);
    let cm = &doc["response"]["json_result"]["cm_dict"][uuid(1)];
    assert_eq!(
        cm["annot_score_list"].as_array().unwrap().len(),
        (ANNOTS - 1) as usize
    );
    // Chip 1 is turtle_a2 (n mod 4 = 1): its duplicates (5, 9) outscore every other chip.
    let best = &doc["response"]["json_result"]["summary_annot"][0]["duuid"]["__UUID__"];
    assert!(
        [uuid(5), uuid(9)].contains(&best.as_str().unwrap().to_string()),
        "{best}"
    );

    // Both list it; neither accepts the id again.
    for r in [&a, &b] {
        let list = json_of(&fetch(&client, &format!("{}/api/engine/job/", r.base)).1);
        assert_eq!(list["response"], json!(["shared-job"]), "{}", r.base);
        let again = client
            .post(format!("{}/api/engine/query/graph/", r.base))
            .form(&form)
            .send()
            .unwrap();
        assert_eq!(again.status(), 409, "{}", r.base);
    }
    // Cancelling another replica's job says where it runs.
    let cancel = client
        .post(format!(
            "{}/api/engine/job/cancel/?jobid=shared-job",
            b.base
        ))
        .send()
        .unwrap();
    assert_eq!(cancel.status(), 409);

    // What a computed, b reuses: the same query on b extracts and matches nothing new (its
    // counters hold only its start-up warm-up's one extraction and one match).
    let before = (
        metric(&client, &b.base, "wbia_lightglue_extractions_total"),
        metric(&client, &b.base, "wbia_lightglue_pairs_matched_total"),
    );
    let ranked = ranked_by_plain_query(&client, &b.base, ANNOTS);
    assert_eq!(ranked.len(), (ANNOTS - 1) as usize);
    let after = (
        metric(&client, &b.base, "wbia_lightglue_extractions_total"),
        metric(&client, &b.base, "wbia_lightglue_pairs_matched_total"),
    );
    assert_eq!(before, (1.0, 1.0), "b's warm-up only");
    assert_eq!(after, before, "b extracted or matched what a had stored");
    assert_eq!(
        metric(
            &client,
            &b.base,
            "wbia_lightglue_pair_score_store_hits_total"
        ),
        (ANNOTS - 1) as f64
    );
}

/// Starts a LightGlue engine job on `base`: annotation 1 against `database`; the answer.
fn start_job(
    client: &reqwest::blocking::Client,
    base: &str,
    jobid: &str,
    database: &[String],
) -> reqwest::blocking::Response {
    client
        .post(format!("{base}/api/engine/query/graph/"))
        .form(&[
            ("query_annot_uuid_list", json!([uuid(1)]).to_string()),
            ("database_annot_uuid_list", json!(database).to_string()),
            (
                "query_config_dict",
                r#"{"pipeline_root":"LightGlue"}"#.to_string(),
            ),
            ("jobid", jobid.to_string()),
        ])
        .send()
        .unwrap()
}

/// Annotations 2..=`ANNOTS`, as plain UUID strings.
fn the_rest() -> Vec<String> {
    (2..=ANNOTS).map(uuid).collect()
}

/// Annotation 1 against 2..=n through `chip/best` on `base`: the ranked candidates.
fn ranked_by_plain_query(client: &reqwest::blocking::Client, base: &str, n: u128) -> Vec<Value> {
    let query = client
        .post(format!("{base}/api/review/query/chip/best/"))
        .form(&[
            ("query_annot_uuid_list", json!([uuid(1)]).to_string()),
            (
                "database_annot_uuid_list",
                json!((2..=n).map(uuid).collect::<Vec<_>>()).to_string(),
            ),
            ("pipeline_root", "LightGlue".to_string()),
        ])
        .send()
        .unwrap();
    assert_eq!(query.status(), 200);
    let answer = json_of(&query.text().unwrap());
    answer["response"]["query_results"][0]["ranked"]
        .as_array()
        .unwrap()
        .clone()
}

/// A job of 29 database annotations split in chunks of 3 (10 chunks) over two replicas:
/// both take chunks; one is killed while it holds a chunk; its lease (3 s) expires, the other
/// takes that chunk again, and the job completes with every annotation scored as an
/// independent process with its own store scores it.
#[test]
fn a_split_job_survives_a_replica_dying_mid_chunk() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia(&runtime);
    let database = fresh_database("split");
    let split = ["--chunk-annotations", "3", "--chunk-lease-secs", "3"];
    let a = replica("split-a", &wbia, &database, &split);
    let mut b = Some(replica("split-b", &wbia, &database, &split));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_ready(&client, &[&a, b.as_ref().unwrap()]);
    let n = 30u128;
    let fancy = |n: u128| json!({"__UUID__": uuid(n)});
    let form = [
        ("query_annot_uuid_list", json!([fancy(1)]).to_string()),
        (
            "database_annot_uuid_list",
            json!((2..=n).map(fancy).collect::<Vec<_>>()).to_string(),
        ),
        (
            "query_config_dict",
            r#"{"pipeline_root":"LightGlue"}"#.to_string(),
        ),
        ("jobid", "split-job".to_string()),
    ];
    let started = client
        .post(format!("{}/api/engine/query/graph/", a.base))
        .form(&form)
        .send()
        .unwrap();
    assert_eq!(started.status(), 200);

    // Kill b while it holds a chunk it has not finished (after it finished at least one).
    let waited = Instant::now();
    let b_done = loop {
        let base = &b.as_ref().unwrap().base;
        let taken = metric(&client, base, "wbia_lightglue_chunks_taken_total");
        let done = metric(&client, base, "wbia_lightglue_chunks_done_total");
        if done >= 1.0 && taken > done {
            break done;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "b never took a second chunk"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(b.take());
    println!("b killed holding a chunk, after finishing {b_done}");

    let status_url = format!("{}/api/engine/job/status/?jobid=split-job", a.base);
    let waited = Instant::now();
    loop {
        let s = json_of(&fetch(&client, &status_url).1);
        match s["response"]["jobstatus"].as_str().unwrap() {
            "working" => {}
            "completed" => break,
            other => panic!("job {other}: {s}"),
        }
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "job never completed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let a_done = metric(&client, &a.base, "wbia_lightglue_chunks_done_total");
    let retaken = metric(&client, &a.base, "wbia_lightglue_chunks_retaken_total");
    println!("a finished {a_done} chunks, {retaken} of them taken again from b");
    assert!(
        retaken >= 1.0,
        "a took b's chunk again after its lease expired"
    );
    assert!(
        a_done >= 1.0 && b_done >= 1.0,
        "both replicas matched chunks"
    );
    // Ten chunks, each finished once: b may have finished one more between the last look
    // and the kill.
    assert!(
        (9.0..=10.0).contains(&(a_done + b_done)),
        "{a_done} + {b_done}"
    );

    // Every annotation scored, each as an independent baseline scores it.
    let job_scores = job_scores(&client, &a.base, "split-job");
    assert_eq!(job_scores.len(), (n - 1) as usize);
    assert_equals_baseline(&client, &wbia, "split", &job_scores, n);
}

/// A job's scores (annotation UUID → score) equal a plain query's on an independent
/// baseline process, annotation for annotation.
fn assert_equals_baseline(
    client: &reqwest::blocking::Client,
    wbia: &str,
    tag: &str,
    job_scores: &HashMap<String, f64>,
    n: u128,
) {
    let reference = baseline(&format!("{tag}-baseline"), wbia);
    wait_ready(client, &[&reference]);
    let ranked = ranked_by_plain_query(client, &reference.base, n);
    assert_eq!(ranked.len(), (n - 1) as usize);
    assert_eq!(job_scores.len(), ranked.len());
    for r in ranked {
        let d = r["dannot_uuid"]["__UUID__"].as_str().unwrap();
        // Both answers write the f32 score as its shortest decimal: the same number.
        assert_eq!(job_scores[d], r["score"].as_f64().unwrap(), "{d}");
    }
}

/// A job's scores by database annotation, from its result on `base` (query: annotation 1).
fn job_scores(client: &reqwest::blocking::Client, base: &str, jobid: &str) -> HashMap<String, f64> {
    support::job_scores(client, base, jobid, &uuid(1))
}

/// A replica on PostgreSQL stops on SIGTERM (what `docker stop` sends) with exit 0, with
/// connections open from a query it answered: closing them as the server's state went used
/// to panic inside the runtime and abort (exit 139).
#[cfg(unix)]
#[test]
fn a_replica_on_postgresql_exits_cleanly_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia(&runtime);
    let database = fresh_database("sigterm");
    let mut a = replica("sigterm", &wbia, &database, &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_ready(&client, &[&a]);
    assert!(!ranked_by_plain_query(&client, &a.base, 4).is_empty());
    let killed = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 40 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

/// The replica coordinating a job is killed while the job works: the other replica answers
/// `working` until the job's lease (3 s here) lapses with no word from it, then `exception`,
/// and the result says why. Nothing stays `working` for Wildbook to poll for ever.
#[test]
fn a_job_whose_replica_dies_ends_as_exception_after_its_lease() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia(&runtime);
    let database = fresh_database("orphan");
    let lease = ["--job-lease-secs", "3"];
    let (mut a, b) = (
        replica("orphan-a", &wbia, &database, &lease),
        replica("orphan-b", &wbia, &database, &lease),
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_ready(&client, &[&a, &b]);
    let started = start_job(&client, &a.base, "orphan", &the_rest());
    assert_eq!(started.status(), 200, "{}", started.text().unwrap());
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();

    let status_url = format!("{}/api/engine/job/status/?jobid=orphan", b.base);
    let mut states = Vec::new();
    loop {
        let s = json_of(&fetch(&client, &status_url).1);
        let state = s["response"]["jobstatus"].as_str().unwrap().to_string();
        if state != "working" {
            states.push(state);
            break;
        }
        states.push(state);
        assert!(killed.elapsed() < Duration::from_secs(30), "{states:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "after the kill: {} × working, then {:?} after {:.1} s",
        states.len() - 1,
        states.last(),
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(states[0], "working", "a's job was working when a died");
    assert_eq!(states.last().unwrap(), "exception");
    let result = json_of(
        &fetch(
            &client,
            &format!("{}/api/engine/job/result/?jobid=orphan", b.base),
        )
        .1,
    );
    assert_eq!(result["response"]["status"], "exception", "{result}");
    let reason = result["response"]["json_result"].as_str().unwrap();
    assert!(reason.contains("stopped running this job"), "{reason}");
}

/// PostgreSQL crashes while a job works and comes back 4 s later. Meanwhile a new job is
/// refused in bounded time with 503 and Retry-After (its id cannot be claimed), while the
/// running job goes on (store reads and writes fail or wait; they fail no request). The job
/// completes with the scores of an independent baseline, and its final state reaches the
/// database, so a replica started afterwards answers it too.
#[test]
fn postgresql_restarted_mid_job_loses_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia_with_chip_delay(&runtime, Duration::from_millis(700));
    let pg = PrivatePostgres::new("restart");
    let a = replica("restart-a", &wbia, &pg.url(), &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    wait_ready(&client, &[&a]);
    let started = start_job(&client, &a.base, "through-restart", &the_rest());
    assert_eq!(started.status(), 200, "{}", started.text().unwrap());
    pg.stop();
    let down = Instant::now();

    let refused = start_job(&client, &a.base, "while-down", &the_rest());
    let waited = down.elapsed();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().unwrap();
    assert_eq!(body["status"]["code"], 503, "{body}");
    assert!(
        body["status"]["message"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL"),
        "{body}"
    );
    assert!(waited < Duration::from_secs(30), "refused after {waited:?}");
    println!("a job started while PostgreSQL was down: 503 after {waited:.1?}");

    std::thread::sleep(Duration::from_secs(4).saturating_sub(down.elapsed()));
    pg.start();
    let status_url = format!("{}/api/engine/job/status/?jobid=through-restart", a.base);
    loop {
        let s = json_of(&fetch(&client, &status_url).1);
        match s["response"]["jobstatus"].as_str().unwrap() {
            "working" => {}
            "completed" => break,
            other => panic!("job {other}: {s}"),
        }
        assert!(
            down.elapsed() < Duration::from_secs(180),
            "job never completed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("the job completed {:.1?} after the crash", down.elapsed());
    let scores = job_scores(&client, &a.base, "through-restart");
    assert_equals_baseline(&client, &wbia, "restart", &scores, ANNOTS);

    // Its final state is in the database: a replica that never saw it answers the same.
    let b = replica("restart-b", &wbia, &pg.url(), &[]);
    wait_ready(&client, &[&b]);
    let result = |r: &Replica| {
        fetch(
            &client,
            &format!("{}/api/engine/job/result/?jobid=through-restart", r.base),
        )
    };
    assert_eq!(result(&a), result(&b));
}

/// Without PostgreSQL, engine jobs are kept in the SQLite store: a job that finished before a
/// restart is answered after it (status, the same result, the job list), its id stays taken;
/// one cut off by the stop ends as `exception` saying so, instead of being forgotten (before,
/// status and result went to WBIA, which knew nothing of the job).
#[cfg(unix)]
#[test]
fn jobs_outlive_a_restart_with_the_sqlite_store() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia_with_chip_delay(&runtime, Duration::from_millis(300));
    let data = std::env::temp_dir().join(format!("wbia-lg-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let start = |base: &str, jobid: &str| {
        start_job(&client, base, jobid, &the_rest())
            .status()
            .as_u16()
    };
    let status = |base: &str, jobid: &str| {
        let (_, text) = fetch(
            &client,
            &format!("{base}/api/engine/job/status/?jobid={jobid}"),
        );
        json_of(&text)["response"]["jobstatus"].clone()
    };
    let result = |base: &str, jobid: &str| {
        fetch(
            &client,
            &format!("{base}/api/engine/job/result/?jobid={jobid}"),
        )
    };

    let mut first = serve_with_data("restart-1", &wbia, None, &[], SMALL, Some(&data));
    wait_ready(&client, &[&first]);
    assert_eq!(start(&first.base, "before"), 200);
    let waited = Instant::now();
    while status(&first.base, "before") == "working" {
        assert!(waited.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&first.base, "before"), "completed");
    let before = result(&first.base, "before");
    // A second job, cut off by the stop (each chip takes 300 ms).
    assert_eq!(start(&first.base, "cut-off"), 200);
    let stopped = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(first.child.wait().unwrap().success());

    let second = serve_with_data("restart-2", &wbia, None, &[], SMALL, Some(&data));
    wait_ready(&client, &[&second]);
    assert_eq!(status(&second.base, "before"), "completed");
    assert_eq!(result(&second.base, "before"), before);
    assert_eq!(status(&second.base, "cut-off"), "exception");
    let (_, text) = result(&second.base, "cut-off");
    let reason = json_of(&text)["response"]["json_result"].clone();
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("stopped while this job ran"),
        "{reason}"
    );
    let list = json_of(&fetch(&client, &format!("{}/api/engine/job/", second.base)).1);
    assert_eq!(list["response"], json!(["before", "cut-off"]));
    assert_eq!(start(&second.base, "before"), 409, "ids are never reused");
    let _ = std::fs::remove_dir_all(&data);
}

/// A chunk holding an annotation whose chip is not an image completes without it: the job's
/// result names it as skipped and scores the rest. A chunk that fails (WBIA answers 500 for
/// a chip, after retries) ends its split job as `exception` naming the chunk and the
/// annotation, on every replica, with no chunk left behind; the other replica's worker goes
/// on to later jobs.
#[test]
fn a_failed_chunk_ends_its_split_job_with_the_reason() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia(&runtime);
    let database = fresh_database("failed_chunk");
    let split = ["--chunk-annotations", "3"];
    let (a, b) = (
        replica("failed-chunk-a", &wbia, &database, &split),
        replica("failed-chunk-b", &wbia, &database, &split),
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_ready(&client, &[&a, &b]);
    let start = |jobid: &str, database: Vec<String>| {
        assert_eq!(start_job(&client, &a.base, jobid, &database).status(), 200);
    };
    let ended = |base: &str, jobid: &str| {
        let waited = Instant::now();
        loop {
            let (_, text) = fetch(
                &client,
                &format!("{base}/api/engine/job/result/?jobid={jobid}"),
            );
            let result = json_of(&text);
            if result["response"]["status"] != "working" {
                return result;
            }
            assert!(waited.elapsed() < Duration::from_secs(120), "{jobid}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut with_broken = the_rest();
    with_broken.insert(7, uuid(BROKEN));
    start("with-broken", with_broken);
    for base in [&a.base, &b.base] {
        let result = ended(base, "with-broken");
        assert_eq!(result["response"]["status"], "completed", "{result}");
        let document = &result["response"]["json_result"];
        let skipped = document["skipped_annot_list"].as_array().unwrap();
        assert_eq!(skipped.len(), 1, "{document}");
        assert_eq!(skipped[0]["dannot_uuid"]["__UUID__"], uuid(BROKEN));
        assert!(
            skipped[0]["reason"].as_str().unwrap().contains("image"),
            "{skipped:?}"
        );
        let matched = &document["cm_dict"][uuid(1)]["dannot_uuid_list"];
        let matched: Vec<&str> = matched
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["__UUID__"].as_str().unwrap())
            .collect();
        assert_eq!(
            matched,
            the_rest(),
            "every other annotation scored, in order"
        );
    }
    let mut with_failing = the_rest();
    with_failing.insert(7, uuid(FAILING));
    start("with-failing", with_failing);
    for base in [&a.base, &b.base] {
        let result = ended(base, "with-failing");
        assert_eq!(result["response"]["status"], "exception", "{result}");
        let reason = result["response"]["json_result"].as_str().unwrap();
        assert!(
            reason.contains("chunk 2 of the job failed") && reason.contains(&uuid(FAILING)),
            "{reason}"
        );
    }
    let mut db = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    let chunks: i64 = db
        .query_one("SELECT COUNT(*) FROM lightglue_chunks", &[])
        .unwrap()
        .get(0);
    assert_eq!(chunks, 0, "no chunk left behind");
    // Both workers still take chunks: the next job completes.
    start("after", the_rest());
    assert_eq!(ended(&b.base, "after")["response"]["status"], "completed");
}
