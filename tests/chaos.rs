//! Chaos across replicas: three `serve` processes on a PostgreSQL server of the test's own,
//! a species-wide engine job of 2,000 annotations split in chunks of 100, and a seeded
//! schedule of faults while the job works: a chunk-working replica killed (SIGKILL) and
//! started again, PostgreSQL crashed (immediate stop) and started again.
//!
//! Checked: the job ends, `completed`; each of its 1,999 scores equals an independent
//! baseline's (one process with its own SQLite store, nothing shared); the shared tables
//! hold each feature set and pair score exactly once, and no chunk is left behind.
//!
//! `CHAOS_SEEDS` (comma-separated) picks the schedules, `CHAOS_FAULTS` their length (CI: one
//! seed, 6 faults). With `CHAOS_KILL_COORDINATOR=1` the coordinating replica may be killed
//! too: its job then ends `exception` after its lease and is started again on a live replica
//! until one run completes (`scripts/chaos.sh` runs long schedules that way).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use support::{fetch, json_of, serve, wait_ready, PrivatePostgres, Replica};
use uuid::Uuid;

const ANNOTS: i64 = 2000;
const UUID_BASE: u128 = 0xc4a0_5000_0000;
/// Small settings, so that 2,000 extractions and 1,999 pairs take about a minute.
const TINY: &str = r#"{"max_num_keypoints": 32, "image_size": 64}"#;
const SPLIT: [&str; 6] = [
    "--chunk-annotations",
    "100",
    "--chunk-lease-secs",
    "3",
    "--job-lease-secs",
    "5",
];

fn uuid_of(aid: i64) -> Uuid {
    Uuid::from_u128(UUID_BASE + aid as u128)
}

/// 64 × 48 crops of a fixture at distinct offsets, as PNG: 2,000 distinct chips.
fn chips() -> HashMap<i64, Vec<u8>> {
    let src = wbia_lightglue_model::load_image(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lightglue/sacre_coeur1.jpg"),
    )
    .unwrap();
    let (w, h) = (64u32, 48u32);
    (1..=ANNOTS)
        .map(|aid| {
            let i = aid as u32;
            let (x0, y0) = ((i * 37) % (src.width - w), (i * 23) % (src.height - h));
            let mut px = Vec::with_capacity((w * h * 3) as usize);
            for y in y0..y0 + h {
                let row = (y * src.width + x0) as usize * 3;
                px.extend_from_slice(&src.data[row..row + w as usize * 3]);
            }
            let crop = wbia_lightglue_model::RgbImage::new(w, h, px).unwrap();
            (
                aid,
                wbia_lightglue_model::render::encode_png(&crop).unwrap(),
            )
        })
        .collect()
}

/// WBIA's getters over `ANNOTS` annotations of one species.
fn fake_wbia(runtime: &tokio::runtime::Runtime) -> String {
    let chips = std::sync::Arc::new(chips());
    let aids_of = |q: &HashMap<String, String>| -> Vec<i64> {
        let v: Value = serde_json::from_str(&q["annot_uuid_list"]).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| (wbia_client::uuid_from_value(u).unwrap().as_u128() - UUID_BASE) as i64)
            .collect()
    };
    let envelope =
        |v: Value| axum::Json(json!({"status": {"success": true, "code": 200}, "response": v}));
    let per_annot = move |f: fn(i64) -> Value| {
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
            per_annot(|aid| {
                json!(wbia_client::fancy_uuid(&Uuid::from_u128(
                    0x1_0000 + aid as u128
                )))
            }),
        )
        .route(
            "/api/annot/bbox/json/",
            per_annot(|_| json!([0, 0, 64, 48])),
        )
        .route("/api/annot/theta/json/", per_annot(|_| json!(0.0)))
        .route(
            "/api/annot/species/json/",
            per_annot(|_| json!("zebra_plains")),
        )
        .route(
            "/api/annot/json/",
            get(move || async move {
                envelope(
                    (1..=ANNOTS)
                        .map(|a| wbia_client::fancy_uuid(&uuid_of(a)))
                        .collect(),
                )
            }),
        )
        .route(
            "/api/annot/src/{aid}/",
            get(
                |State(chips): State<std::sync::Arc<HashMap<i64, Vec<u8>>>>,
                 Path(aid): Path<i64>| async move {
                    ([("content-type", "image/png")], chips[&aid].clone()).into_response()
                },
            ),
        )
        .route(
            "/api/test/heartbeat/",
            get(move || async move { envelope(json!(true)) }),
        )
        .with_state(chips);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// xorshift64*: the schedule, reproducible from its seed.
struct Schedule(u64);

impl Schedule {
    /// Seeds the state through splitmix64, so that nearby seeds give unrelated schedules.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn start_job(client: &reqwest::blocking::Client, base: &str, jobid: &str) {
    let started = client
        .post(format!("{base}/api/engine/query/graph/"))
        .form(&[
            ("query_annot_uuid_list", json!([uuid_of(1)]).to_string()),
            (
                "query_config_dict",
                r#"{"pipeline_root":"LightGlue"}"#.to_string(),
            ),
            ("jobid", jobid.to_string()),
        ])
        .send()
        .unwrap();
    assert_eq!(started.status(), 200, "{}", started.text().unwrap());
}

/// `working`, `completed` or `exception`, as `base` answers; `None` when it does not answer.
fn job_status(client: &reqwest::blocking::Client, base: &str, jobid: &str) -> Option<String> {
    let (code, text) = fetch(
        client,
        &format!("{base}/api/engine/job/status/?jobid={jobid}"),
    );
    (code == 200).then(|| {
        json_of(&text)["response"]["jobstatus"]
            .as_str()
            .map(String::from)
    })?
}

fn scores(client: &reqwest::blocking::Client, base: &str, jobid: &str) -> HashMap<String, f64> {
    support::job_scores(client, base, jobid, &uuid_of(1).to_string())
}

fn wait_for_end(client: &reqwest::blocking::Client, base: &str, jobid: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(s) = job_status(client, base, jobid).filter(|s| s != "working") {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{jobid} never ended"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_split_job_through_killed_replicas_and_a_crashed_database() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wbia = fake_wbia(&runtime);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    // The independent baseline, first, alone on the machine.
    let started = Instant::now();
    let baseline_scores = {
        let baseline = serve("chaos-baseline", &wbia, None, &[], TINY);
        wait_ready(&client, &[&baseline]);
        start_job(&client, &baseline.base, "baseline");
        assert_eq!(
            wait_for_end(&client, &baseline.base, "baseline"),
            "completed"
        );
        scores(&client, &baseline.base, "baseline")
    };
    assert_eq!(baseline_scores.len(), (ANNOTS - 1) as usize);
    println!("baseline: {:.1?}", started.elapsed());

    let seeds: Vec<u64> = std::env::var("CHAOS_SEEDS")
        .unwrap_or_else(|_| "20261203".into())
        .split(',')
        .map(|s| s.trim().parse().expect("CHAOS_SEEDS: numbers"))
        .collect();
    let faults = env_or("CHAOS_FAULTS", 6usize);
    let kill_coordinator = env_or("CHAOS_KILL_COORDINATOR", 0u8) == 1;
    for seed in seeds {
        run_schedule(
            &client,
            &wbia,
            seed,
            faults,
            kill_coordinator,
            &baseline_scores,
        );
    }
}

fn run_schedule(
    client: &reqwest::blocking::Client,
    wbia: &str,
    seed: u64,
    faults: usize,
    kill_coordinator: bool,
    baseline: &HashMap<String, f64>,
) {
    let pg = PrivatePostgres::new(&format!("chaos-{seed}"));
    let url = pg.url();
    let mut started_replicas = 0;
    let mut start_replica = || {
        started_replicas += 1;
        serve(
            &format!("chaos-{seed}-{started_replicas}"),
            wbia,
            Some(&url),
            &SPLIT,
            TINY,
        )
    };
    let mut replicas: Vec<Replica> = (0..3).map(|_| start_replica()).collect();
    wait_ready(client, &replicas.iter().collect::<Vec<_>>());
    let mut schedule = Schedule::new(seed);
    let started = Instant::now();
    let mut log = Vec::new();
    // Replica 0 coordinates; the attempt's job id changes when a coordinator dies with it.
    let mut attempt = 1;
    let mut jobid = format!("chaos-{seed}-{attempt}");
    start_job(client, &replicas[0].base, &jobid);
    let mut faults_left = faults;
    let outcome = loop {
        std::thread::sleep(schedule.millis(1_000, 4_000));
        match job_status(client, &replicas[0].base, &jobid).as_deref() {
            Some("completed") => break "completed",
            Some("exception") => panic!("{jobid} ended as exception: {log:?}"),
            _ => {}
        }
        if faults_left == 0 {
            if wait_for_end(client, &replicas[0].base, &jobid) == "completed" {
                break "completed";
            }
            panic!("{jobid} ended as exception: {log:?}");
        }
        faults_left -= 1;
        let at = started.elapsed();
        let choices = if kill_coordinator { 4 } else { 3 };
        match schedule.pick(choices) {
            victim @ (0 | 1) => {
                let i = victim + 1;
                replicas[i].child.kill().unwrap();
                replicas[i].child.wait().unwrap();
                let down = schedule.millis(500, 2_500);
                std::thread::sleep(down);
                replicas[i] = start_replica();
                log.push(format!("{at:.1?}: replica {i} killed, back after {down:?}"));
            }
            2 => {
                pg.stop();
                let down = schedule.millis(500, 3_000);
                std::thread::sleep(down);
                pg.start();
                log.push(format!("{at:.1?}: PostgreSQL crashed, back after {down:?}"));
            }
            _ => {
                replicas[0].child.kill().unwrap();
                replicas[0].child.wait().unwrap();
                log.push(format!("{at:.1?}: coordinator killed"));
                // Another replica ends the orphaned job once its lease lapses (or finds it
                // completed, if it ended just before the kill).
                let ended = wait_for_end(client, &replicas[1].base, &jobid);
                replicas[0] = start_replica();
                wait_ready(client, &[&replicas[0]]);
                if ended == "completed" {
                    break "completed";
                }
                assert_eq!(ended, "exception", "{jobid}");
                attempt += 1;
                jobid = format!("chaos-{seed}-{attempt}");
                start_job(client, &replicas[0].base, &jobid);
            }
        }
    };
    println!(
        "seed {seed}: {outcome} after {:.1?}, attempt {attempt}; {log:#?}",
        started.elapsed()
    );

    // Every score equal to the baseline's, from the job and from another replica alike.
    for base in [&replicas[0].base, &replicas[2].base] {
        let got = scores(client, base, &jobid);
        assert_eq!(got.len(), baseline.len(), "seed {seed}");
        for (d, score) in baseline {
            assert_eq!(got[d], *score, "seed {seed}: {d}");
        }
    }
    // Each feature set and pair score stored once; no chunk left behind.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let count =
        |db: &mut postgres::Client, sql: &str| -> i64 { db.query_one(sql, &[]).unwrap().get(0) };
    let features = count(&mut db, "SELECT COUNT(*) FROM lightglue_features");
    let annotated = count(
        &mut db,
        "SELECT COUNT(DISTINCT annot_uuid) FROM lightglue_features",
    );
    if features != ANNOTS {
        let stored: Vec<String> = db
            .query("SELECT annot_uuid FROM lightglue_features", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<i64> = (1..=ANNOTS)
            .filter(|&a| !stored.contains(&uuid_of(a).to_string()))
            .collect();
        println!("seed {seed}: features missing for {missing:?}");
    }
    assert_eq!((features, annotated), (ANNOTS, ANNOTS), "seed {seed}");
    assert_eq!(
        count(&mut db, "SELECT COUNT(*) FROM lightglue_scores"),
        ANNOTS - 1,
        "seed {seed}"
    );
    assert_eq!(
        count(&mut db, "SELECT COUNT(*) FROM lightglue_chunks"),
        0,
        "seed {seed}"
    );
    let working = count(
        &mut db,
        "SELECT COUNT(*) FROM lightglue_jobs WHERE status = 'working'",
    );
    assert_eq!(working, 0, "seed {seed}: no job left working");
}
