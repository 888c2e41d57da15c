//! The identification pipeline at scale, on small settings (64 px, 32 keypoints) so that
//! hundreds of annotations run in seconds: admission, no failure for queue space, fairness
//! between requests, chips keyed without downloading, cancellation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wbia_lightglue_engine::{
    Annot, Chip, ChipPixels, ChipSource, Config, Engine, EngineOptions, Error, FileChips, Progress,
    SourceError, WbiaChip,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `n` annotations over the four turtle chips, each its own UUID (so its own features).
fn annots(n: usize, first: u128, with_identity: bool) -> (Vec<Annot>, HashMap<Uuid, PathBuf>) {
    let names = [
        "turtle_a1.jpg",
        "turtle_a2.jpg",
        "turtle_b3.jpg",
        "turtle_b4.jpg",
    ];
    let mut files = HashMap::new();
    let list = (0..n)
        .map(|i| {
            let uuid = Uuid::from_u128(first + i as u128);
            files.insert(
                uuid,
                repo().join("tests/fixtures/turtles").join(names[i % 4]),
            );
            Annot {
                uuid,
                chip: with_identity.then(|| WbiaChip {
                    image: Uuid::from_u128(0x1000 + (i % 4) as u128),
                    bbox: [0, 0, 500, 400],
                    theta: 0.0,
                    pixels: ChipPixels::Downloaded,
                }),
            }
        })
        .collect();
    (list, files)
}

/// Counts downloads; optionally never answers for some annotations.
struct Counting {
    files: FileChips,
    downloads: AtomicUsize,
    hang: Vec<Uuid>,
}

impl Counting {
    fn new(files: HashMap<Uuid, PathBuf>) -> Self {
        Self {
            files: FileChips(files),
            downloads: AtomicUsize::new(0),
            hang: Vec::new(),
        }
    }
}

impl ChipSource for Counting {
    async fn chip(&self, annot: Uuid) -> Result<Chip, SourceError> {
        if self.hang.contains(&annot) {
            std::future::pending::<()>().await;
        }
        self.downloads.fetch_add(1, Ordering::SeqCst);
        self.files.chip(annot).await
    }
}

fn small() -> Config {
    Config {
        max_num_keypoints: 32,
        image_size: 64,
        ..Config::default()
    }
}

fn engine(max_requests: usize) -> Engine {
    Engine::start(EngineOptions {
        weights_dir: Some(repo().join("weights")),
        max_requests,
        ..EngineOptions::default()
    })
    .unwrap()
}

/// 1 query against 600 cold annotations: nothing is refused once admitted (the old queue
/// refused any request with more than 64 cold chips); every pair is scored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_request_of_600_cold_chips_completes() {
    let engine = engine(4);
    let (all, files) = annots(601, 1, false);
    let source = Counting::new(files);
    let ticket = engine.admit(600).unwrap();
    let progress = Progress::default();
    let scores = engine
        .identify(&ticket, &source, &all[..1], &all[1..], &small(), &progress)
        .await
        .unwrap();
    assert_eq!(scores[0].len(), 600);
    assert_eq!(source.downloads.load(Ordering::SeqCst), 601);
    let p = progress.snapshot();
    assert_eq!((p.pairs_scored, p.pairs_total), (600, 600));
    assert_eq!(p.extracted, 601);
    // Features kept per request are bounded by what is in flight, not by the database.
    assert_eq!(engine.queue_depth(), 0);
}

/// With chip identities, a repeat downloads nothing and extracts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_chips_are_not_downloaded_again() {
    let engine = engine(4);
    let (all, files) = annots(201, 1, true);
    let source = Counting::new(files);
    let run = || async {
        let ticket = engine.admit(200).unwrap();
        engine
            .identify(
                &ticket,
                &source,
                &all[..1],
                &all[1..],
                &small(),
                &Progress::default(),
            )
            .await
            .unwrap()
    };
    let first = run().await;
    assert_eq!(source.downloads.load(Ordering::SeqCst), 201);
    let extracted = engine.cache_stats.extractions.load(Ordering::SeqCst);
    let progress = Progress::default();
    let ticket = engine.admit(200).unwrap();
    let second = engine
        .identify(&ticket, &source, &all[..1], &all[1..], &small(), &progress)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        source.downloads.load(Ordering::SeqCst),
        201,
        "no new downloads"
    );
    assert_eq!(
        engine.cache_stats.extractions.load(Ordering::SeqCst),
        extracted
    );
    assert_eq!(progress.snapshot().chips_cached, 201);
}

/// A 1-vs-1 query admitted while a 1-vs-800 request runs waits for a few of its work units,
/// not for the request: the big one scores at most a few chunks meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_query_is_not_starved_by_a_large_one() {
    let engine = Arc::new(engine(4));
    let (big, mut files) = annots(801, 1, false);
    let (small_set, small_files) = annots(2, 5000, false);
    files.extend(small_files);
    let source = Arc::new(Counting::new(files));
    let big_progress = Arc::new(Progress::default());
    let big_task = {
        let (engine, source, progress) = (engine.clone(), source.clone(), big_progress.clone());
        tokio::spawn(async move {
            let ticket = engine.admit(800).unwrap();
            engine
                .identify(&ticket, &*source, &big[..1], &big[1..], &small(), &progress)
                .await
                .map(|s| s[0].len())
        })
    };
    while big_progress.snapshot().pairs_scored < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = big_progress.snapshot();
    let ticket = engine.admit(1).unwrap();
    engine
        .identify(
            &ticket,
            &*source,
            &small_set[..1],
            &small_set[1..],
            &small(),
            &Progress::default(),
        )
        .await
        .unwrap();
    let after = big_progress.snapshot();
    let pairs = after.pairs_scored - before.pairs_scored;
    let extractions = after.extracted - before.extracted;
    println!("meanwhile the large request scored {pairs} pairs and extracted {extractions} chips");
    // Two extractions and a match for the small query, each behind at most one unit of the
    // large one per round: a handful of chunks of 4 pairs and a few extractions.
    assert!(pairs <= 4 * 4, "{pairs} pairs");
    assert!(extractions <= 3 * 4, "{extractions} extractions");
    assert!(
        after.pairs_scored < 800,
        "the large request had already finished"
    );
    assert_eq!(big_task.await.unwrap().unwrap(), 800);
}

/// Admission counts requests and pending pairs, and gives them back when a ticket ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_beyond_its_limits_and_recovers() {
    let engine = Engine::start(EngineOptions {
        weights_dir: Some(repo().join("weights")),
        max_requests: 2,
        max_pending_pairs: 1000,
        ..EngineOptions::default()
    })
    .unwrap();
    let a = engine.admit(600).unwrap();
    assert!(
        matches!(engine.admit(600), Err(Error::Busy { .. })),
        "pairs over the limit"
    );
    let b = engine.admit(400).unwrap();
    assert!(matches!(
        engine.admit(1),
        Err(Error::Busy {
            retry_after_secs: 5,
            ..
        })
    ));
    assert_eq!(engine.admitted(), (2, 1000));
    drop(a);
    // One request larger than the whole budget runs when it would be alone... not here.
    assert!(engine.admit(5000).is_err());
    drop(b);
    let alone = engine.admit(5000).unwrap();
    assert_eq!(engine.admitted(), (1, 5000));
    drop(alone);
    assert_eq!(engine.admitted(), (0, 0));
    assert_eq!(
        engine.cache_stats.requests_refused.load(Ordering::SeqCst),
        3
    );
}

/// A request dropped midway (client gone, job cancelled) leaves nothing running: its queued
/// model work is skipped and the worker goes idle at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_stops_its_work() {
    let engine = engine(4);
    let (all, files) = annots(401, 1, false);
    let source = Counting::new(files);
    let progress = Progress::default();
    {
        let ticket = engine.admit(400).unwrap();
        let config = small();
        let run = engine.identify(&ticket, &source, &all[..1], &all[1..], &config, &progress);
        let _ = tokio::time::timeout(Duration::from_millis(1500), run).await;
    }
    let at_drop = engine.cache_stats.extractions.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = engine.cache_stats.extractions.load(Ordering::SeqCst);
    assert!(at_drop < 401, "finished before the drop");
    assert!(
        later <= at_drop + 1,
        "work went on after the drop: {at_drop} → {later}"
    );
    assert_eq!(engine.queue_depth(), 0);
    assert_eq!(engine.admitted(), (0, 0));
}

/// A chip that never arrives holds up only its own request: another request's chips flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_chip_does_not_hold_other_requests() {
    let engine = Arc::new(engine(4));
    let (all, files) = annots(20, 1, false);
    let mut source = Counting::new(files);
    source.hang = vec![all[5].uuid];
    let source = Arc::new(source);
    let stuck = {
        let (engine, source, all) = (engine.clone(), source.clone(), all.clone());
        tokio::spawn(async move {
            let ticket = engine.admit(10).unwrap();
            engine
                .identify(
                    &ticket,
                    &*source,
                    &all[..1],
                    &all[1..11],
                    &small(),
                    &Progress::default(),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticket = engine.admit(8).unwrap();
    let other = tokio::time::timeout(
        Duration::from_secs(30),
        engine.identify(
            &ticket,
            &*source,
            &all[11..12],
            &all[12..],
            &small(),
            &Progress::default(),
        ),
    )
    .await
    .expect("the other request finished")
    .unwrap();
    assert_eq!(other[0].len(), 8);
    assert!(!stuck.is_finished());
    stuck.abort();
}

/// Every variant LightGlue takes runs through the pipeline, one model per variant whatever
/// the thresholds: n16, n16rot and n32 each rank the genuine turtle (a2) above the impostors
/// (b3, b4) for a1, and their features are kept apart (three variants: three extractions per
/// chip, none served from another variant's cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matchable_variant_ranks_the_genuine_turtle_first() {
    let engine = engine(4);
    let (all, files) = annots(4, 0x700, false);
    let source = Counting::new(files);
    for model_name in ["aliked-n16", "aliked-n16rot", "aliked-n32"] {
        let config = Config {
            model_name: model_name.into(),
            max_num_keypoints: 512,
            ..Config::default()
        };
        config.validate().unwrap();
        let ticket = engine.admit(3).unwrap();
        let scores = engine
            .identify(
                &ticket,
                &source,
                &all[..1],
                &all[1..],
                &config,
                &Progress::default(),
            )
            .await
            .unwrap();
        let [genuine, b3, b4] = scores[0][..] else {
            panic!("three scores")
        };
        println!("{model_name}: a2 {genuine:.2}, b3 {b3:.2}, b4 {b4:.2}");
        assert!(genuine > b3.max(b4), "{model_name}: {:?}", scores[0]);
    }
    assert_eq!(engine.cache_stats.extractions.load(Ordering::SeqCst), 12);
}
