//! One store test suite, run against both backends: SQLite in a temporary directory, and
//! PostgreSQL in a fresh database on the server that `scripts/test.sh` starts
//! (`WBIA_LIGHTGLUE_TEST_DATABASE_URL`). Round trips, key separation, pair scores in order,
//! thousands of rows, concurrent writers, damaged rows, and (PostgreSQL) shared jobs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wbia_lightglue_engine::job_board::{ChunkQueue, JobBoard, JobStatus};
use wbia_lightglue_engine::pg_store::PgStore;
use wbia_lightglue_engine::store::{FeatureStore, Store};
use wbia_lightglue_engine::FeatureKey;
use wbia_lightglue_model::Features;

/// A lease no test outlives.
const LEASE: Duration = Duration::from_secs(3600);
const URL_VAR: &str = "WBIA_LIGHTGLUE_TEST_DATABASE_URL";

/// The PostgreSQL server's URL. Missing, the test fails: PostgreSQL is part of what this
/// project supports, and `scripts/test.sh` (the README's test command) provides one.
pub fn server_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!("{URL_VAR} is not set: run the tests with scripts/test.sh, which starts PostgreSQL")
    })
}

/// A new, empty database on the test server; its URL.
pub fn fresh_database() -> String {
    let url = server_url();
    let name = format!("lg_test_{}", Uuid::new_v4().simple());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("test server");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url.as_str(), String::new()),
    };
    let (server, _) = base.rsplit_once('/').expect("postgres://host/database");
    format!("{server}/{name}{query}")
}

struct Sqlite(PathBuf);

impl Drop for Sqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The backends under test, each with a way to damage one stored value behind the store's
/// back (as a disk or a hand edit would).
enum Backend {
    Sqlite(Sqlite, Arc<FeatureStore>),
    Postgres(String, Arc<PgStore>),
}

impl Backend {
    fn all() -> Vec<Backend> {
        let dir = std::env::temp_dir().join(format!("wbia-lg-backends-{}", Uuid::new_v4()));
        let sqlite = Arc::new(FeatureStore::open(&dir).unwrap());
        let url = fresh_database();
        let pg = Arc::new(PgStore::connect(&url).expect("connect and migrate"));
        vec![
            Backend::Sqlite(Sqlite(dir), sqlite),
            Backend::Postgres(url, pg),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(..) => "sqlite",
            Backend::Postgres(..) => "postgres",
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(_, s) => s.clone(),
            Backend::Postgres(_, s) => s.clone(),
        }
    }

    /// Changes every stored descriptor blob (zeroes, or the first byte plus one) and shifts
    /// every stored score.
    fn damage_everything(&self) {
        match self {
            Backend::Sqlite(dir, _) => {
                let conn = rusqlite::Connection::open(dir.0.join("features.sqlite3")).unwrap();
                conn.execute_batch(
                    "UPDATE lightglue_features SET descriptors = zeroblob(length(descriptors));
                     UPDATE lightglue_scores SET score = score + 1;",
                )
                .unwrap();
            }
            Backend::Postgres(url, _) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.batch_execute(
                    "UPDATE lightglue_features
                         SET descriptors = set_byte(descriptors, 0, (get_byte(descriptors, 0) + 1) % 256);
                     UPDATE lightglue_scores SET score = score + 1;",
                )
                .unwrap();
            }
        }
    }
}

fn key(i: u128, settings: &str) -> FeatureKey {
    FeatureKey::for_chip_bytes(Uuid::from_u128(i), settings, [i as u8; 32], "model")
}

/// Finite, distinct per `seed`, `n` keypoints.
fn features(seed: u32, n: usize) -> Features {
    let v = |i: usize| ((seed as usize * 7919 + i) % 1000) as f32 / 1000.0;
    Features {
        keypoints: (0..n).map(|i| [v(i) * 100.0, v(i + 1) * 100.0]).collect(),
        scores: (0..n).map(v).collect(),
        descriptors: (0..n * Features::DESCRIPTOR_DIM).map(v).collect(),
        image_size: [640.0, 480.0 + seed as f32],
    }
}

#[test]
fn features_round_trip_bit_for_bit_and_keys_stay_apart() {
    for backend in Backend::all() {
        let (name, store) = (backend.name(), backend.store());
        let f = features(1, 2048);
        store.put(&key(1, "a"), &f).unwrap();
        assert_eq!(
            store.get(&key(1, "a")).unwrap().as_ref(),
            Some(&f),
            "{name}"
        );
        // Another setting, chip, annotation or model version: a miss.
        assert_eq!(store.get(&key(1, "b")).unwrap(), None, "{name}");
        assert_eq!(store.get(&key(2, "a")).unwrap(), None, "{name}");
        let other_model =
            FeatureKey::for_chip_bytes(Uuid::from_u128(1), "a", [1; 32], "other model");
        assert_eq!(store.get(&other_model).unwrap(), None, "{name}");
        // Replacing keeps one row.
        let g = features(2, 17);
        store.put(&key(1, "a"), &g).unwrap();
        assert_eq!(
            store.get(&key(1, "a")).unwrap().as_ref(),
            Some(&g),
            "{name}"
        );
        // An empty feature set (a blank chip) is a value, not a miss.
        let empty = features(3, 0);
        store.put(&key(3, "a"), &empty).unwrap();
        assert_eq!(store.get(&key(3, "a")).unwrap(), Some(empty), "{name}");
        assert_eq!(store.len().unwrap(), 2, "{name}");
    }
}

#[test]
fn pair_scores_come_back_in_order_with_misses() {
    for backend in Backend::all() {
        let (name, store) = (backend.name(), backend.store());
        let rows: Vec<(String, String, f32)> = (0..10)
            .map(|i| ("q".to_string(), format!("d{i}"), i as f32 * 1.5))
            .chain([("q".to_string(), "zero".to_string(), -0.0)])
            .collect();
        store.put_scores("m", &rows).unwrap();
        let asked: Vec<String> = ["d3", "missing", "d0", "zero", "d9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = store.scores("q", &asked, "m").unwrap();
        assert_eq!(
            got,
            vec![Some(4.5), None, Some(0.0), Some(0.0), Some(13.5)],
            "{name}"
        );
        assert!(
            got[3].unwrap().is_sign_positive(),
            "{name}: -0.0 reads as +0.0"
        );
        // Another matcher or query: misses.
        assert_eq!(store.scores("q", &asked[..1], "other").unwrap(), vec![None]);
        assert_eq!(store.scores("x", &asked[..1], "m").unwrap(), vec![None]);
        // Rewriting a score replaces it.
        store
            .put_scores("m", &[("q".into(), "d3".into(), 99.0)])
            .unwrap();
        assert_eq!(
            store.scores("q", &asked[..1], "m").unwrap(),
            vec![Some(99.0)]
        );
        assert_eq!(store.score_count().unwrap(), 11, "{name}");
    }
}

/// 2,000 feature sets (64 keypoints) and 20,000 pair scores written in chunks of 500, then
/// every 97th read back exactly.
#[test]
fn thousands_of_rows() {
    for backend in Backend::all() {
        let (name, store) = (backend.name(), backend.store());
        for i in 0..2_000u32 {
            store.put(&key(i as u128, "s"), &features(i, 64)).unwrap();
        }
        let rows: Vec<(String, String, f32)> = (0..20_000)
            .map(|i| (format!("q{}", i % 40), format!("d{i}"), i as f32))
            .collect();
        for chunk in rows.chunks(500) {
            store.put_scores("m", chunk).unwrap();
        }
        assert_eq!(store.len().unwrap(), 2_000, "{name}");
        assert_eq!(store.score_count().unwrap(), 20_000, "{name}");
        for i in (0..2_000u32).step_by(97) {
            assert_eq!(
                store.get(&key(i as u128, "s")).unwrap(),
                Some(features(i, 64)),
                "{name} {i}"
            );
        }
        for i in (0..20_000).step_by(97) {
            let got = store
                .scores(&format!("q{}", i % 40), &[format!("d{i}")], "m")
                .unwrap();
            assert_eq!(got, vec![Some(i as f32)], "{name} {i}");
        }
    }
}

/// Eight threads writing and reading at once (the blocking pool does this), 50 feature sets
/// and 50 scores each: everything written is read back.
#[test]
fn concurrent_writers() {
    for backend in Backend::all() {
        let name = backend.name();
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let store = backend.store();
                std::thread::spawn(move || {
                    for i in 0..50u32 {
                        let n = t * 1000 + i;
                        store.put(&key(n as u128, "c"), &features(n, 32)).unwrap();
                        store
                            .put_scores("m", &[(format!("q{t}"), format!("d{i}"), n as f32)])
                            .unwrap();
                        assert_eq!(
                            store.get(&key(n as u128, "c")).unwrap(),
                            Some(features(n, 32))
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = backend.store();
        assert_eq!(store.len().unwrap(), 400, "{name}");
        assert_eq!(store.score_count().unwrap(), 400, "{name}");
    }
}

/// Values damaged behind the store's back fail their checksums: misses, counted, deleted, so
/// the next computation rewrites them.
#[test]
fn damaged_rows_are_misses_counted_and_dropped() {
    for backend in Backend::all() {
        let (name, store) = (backend.name(), backend.store());
        for i in 0..3 {
            store.put(&key(i, "d"), &features(i as u32, 16)).unwrap();
        }
        let rows: Vec<(String, String, f32)> =
            (0..4).map(|i| ("q".into(), format!("d{i}"), 2.0)).collect();
        store.put_scores("m", &rows).unwrap();
        backend.damage_everything();
        let counter = store.corrupt_rows_counter();
        for i in 0..3 {
            let got = store.get(&key(i, "d")).unwrap();
            assert!(got.is_none(), "{name}: damaged features {i} were served");
        }
        let asked: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        assert_eq!(
            store.scores("q", &asked, "m").unwrap(),
            vec![None; 4],
            "{name}"
        );
        assert_eq!(counter.load(Ordering::SeqCst), 7, "{name}");
        assert_eq!(
            (store.len().unwrap(), store.score_count().unwrap()),
            (0, 0),
            "{name}"
        );
        // Rewritten, they serve again.
        store.put(&key(0, "d"), &features(0, 16)).unwrap();
        assert_eq!(store.get(&key(0, "d")).unwrap(), Some(features(0, 16)));
    }
}

/// Jobs as replicas share them: an id is claimed once across replicas, its state is read back
/// as written, and every replica's ids are listed.
#[test]
fn shared_jobs_are_claimed_once() {
    let url = fresh_database();
    let (a, b) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    assert!(a.claim_job("job-1", "replica-a").unwrap());
    assert!(
        !b.claim_job("job-1", "replica-b").unwrap(),
        "taken on another replica"
    );
    assert!(b.claim_job("job-2", "replica-b").unwrap());
    let seen = b.job("job-1", LEASE).unwrap().unwrap();
    assert_eq!(
        (seen.replica.as_str(), seen.status.as_str()),
        ("replica-a", "working")
    );
    assert_eq!((seen.progress, seen.result), (None, None));
    a.update_job(
        "job-1",
        JobStatus::Working,
        Some(r#"{"pairs_scored":3}"#),
        None,
    )
    .unwrap();
    assert_eq!(
        b.job("job-1", LEASE).unwrap().unwrap().progress.as_deref(),
        Some(r#"{"pairs_scored":3}"#)
    );
    a.update_job(
        "job-1",
        JobStatus::Completed,
        None,
        Some(r#"{"cm_dict":{}}"#),
    )
    .unwrap();
    let done = b.job("job-1", LEASE).unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result.as_deref(), Some(r#"{"cm_dict":{}}"#));
    assert_eq!(a.job_ids().unwrap(), vec!["job-1", "job-2"]);
    assert_eq!(a.job("nope", LEASE).unwrap(), None);
}

/// A working job's replica that stops writing (killed, or cut off from the database) ends
/// the job as `exception` when another replica reads it after the lease, naming the replica;
/// its chunks are deleted with it. A job still publishing keeps working.
#[test]
fn a_silent_replicas_job_ends_as_exception_after_its_lease() {
    let url = fresh_database();
    let (a, b) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    for id in ["alive", "silent"] {
        assert!(a.claim_job(id, "replica-a").unwrap());
    }
    a.add_chunks("silent", &["c0".into(), "c1".into(), "c2".into()])
        .unwrap();
    let taken = b.take_chunk("replica-b", Duration::from_secs(60)).unwrap();
    assert!(taken.is_some());
    // Within the lease both stay working.
    for id in ["alive", "silent"] {
        assert_eq!(
            b.job(id, Duration::from_secs(60)).unwrap().unwrap().status,
            JobStatus::Working
        );
    }
    std::thread::sleep(Duration::from_millis(2_200));
    a.update_job("alive", JobStatus::Working, Some("{}"), None)
        .unwrap();
    let lease = Duration::from_secs(2);
    assert_eq!(
        b.job("alive", lease).unwrap().unwrap().status,
        JobStatus::Working
    );
    let ended = b.job("silent", lease).unwrap().unwrap();
    assert_eq!(ended.status, JobStatus::Exception);
    let reason: String = serde_json::from_str(ended.result.as_deref().unwrap()).unwrap();
    assert!(
        reason.contains("replica-a") && reason.contains("2 s"),
        "{reason}"
    );
    assert_eq!(ended.progress, None);
    assert_eq!(a.chunks("silent").unwrap(), vec![], "its chunks are gone");
    assert!(b
        .take_chunk("replica-b", Duration::from_secs(60))
        .unwrap()
        .is_none());
    // Read again: the same ending, not a second one.
    assert_eq!(a.job("silent", lease).unwrap().unwrap(), ended);
    // The replica came back and finished after all: its result stands.
    a.update_job("silent", JobStatus::Completed, None, Some("{}"))
        .unwrap();
    assert_eq!(
        b.job("silent", lease).unwrap().unwrap().status,
        JobStatus::Completed
    );
}

/// Replicas starting together migrate the schema once between them (an advisory lock).
#[test]
fn replicas_starting_together_migrate_once() {
    let url = fresh_database();
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url).map(|_| ()))
        })
        .collect();
    for s in starts {
        s.join().unwrap().expect("every replica starts");
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let applied: i64 = c
        .query_one("SELECT COUNT(*) FROM refinery_schema_history", &[])
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files, "every migration, once");
}

#[test]
fn an_unreachable_database_is_a_clear_error_at_start() {
    let e = PgStore::connect("postgres://nobody@127.0.0.1:1/none")
        .err()
        .expect("nothing listens on port 1");
    assert!(e.to_string().contains("PostgreSQL"), "{e}");
    let e = PgStore::connect("mysql://x").err().unwrap();
    assert!(e.to_string().contains("database URL"), "{e}");
}

/// The last reference to the store may go on a thread that runs tokio (the server drops its
/// state as `serve` returns inside `block_on`): closing its connections there used to panic
/// ("Cannot start a runtime from within a runtime") and abort the process at every stop.
#[test]
fn the_store_closes_on_a_runtime_thread() {
    let url = fresh_database();
    let store = PgStore::connect(&url).unwrap();
    // Several connections open and idle in the pool.
    std::thread::scope(|s| {
        for i in 0..4 {
            let store = &store;
            s.spawn(move || store.claim_job(&format!("job-{i}"), "replica").unwrap());
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let dropped = runtime.block_on(async move { tokio::spawn(async move { drop(store) }).await });
    assert!(dropped.is_ok(), "dropping the store panicked: {dropped:?}");
}

/// With SQLite the board outlives the process: a finished job is answered after the store is
/// opened again, one still `working` when its process stopped ends as `exception` saying so,
/// ids stay taken, and the finished jobs kept are bounded (the newest 10,000).
#[test]
fn sqlite_jobs_outlive_the_process() {
    let dir = Sqlite(std::env::temp_dir().join(format!("wbia-lg-jobs-{}", Uuid::new_v4())));
    {
        let store = FeatureStore::open(&dir.0).unwrap();
        for id in ["done", "running"] {
            assert!(store.claim_job(id, "one").unwrap());
        }
        assert!(!store.claim_job("done", "one").unwrap(), "taken");
        store
            .update_job(
                "done",
                JobStatus::Completed,
                None,
                Some(r#"{"cm_dict":{}}"#),
            )
            .unwrap();
        store
            .update_job("running", JobStatus::Working, Some("{}"), None)
            .unwrap();
    }
    let store = FeatureStore::open(&dir.0).unwrap();
    let done = store.job("done", LEASE).unwrap().unwrap();
    assert_eq!(
        (done.status.as_str(), done.result.as_deref()),
        ("completed", Some(r#"{"cm_dict":{}}"#))
    );
    let stopped = store.job("running", LEASE).unwrap().unwrap();
    assert_eq!(stopped.status, JobStatus::Exception);
    let reason: String = serde_json::from_str(stopped.result.as_deref().unwrap()).unwrap();
    assert!(reason.contains("stopped while this job ran"), "{reason}");
    assert_eq!(stopped.progress, None);
    assert!(
        !store.claim_job("done", "two").unwrap(),
        "ids are never reused"
    );
    assert_eq!(store.job_ids().unwrap(), vec!["done", "running"]);
    assert_eq!(store.job("nope", LEASE).unwrap(), None);

    // 10,010 more finished jobs: the newest 10,000 finished ones are kept.
    for i in 0..10_010 {
        let id = format!("j{i:05}");
        assert!(store.claim_job(&id, "two").unwrap());
        store
            .update_job(&id, JobStatus::Completed, None, Some("{}"))
            .unwrap();
    }
    let ids = store.job_ids().unwrap();
    assert!((10_000..=10_001).contains(&ids.len()), "{}", ids.len());
    assert!(ids.contains(&"j10009".to_string()));
    assert!(!ids.contains(&"done".to_string()), "the oldest went first");
}
