//! Matching jobs of concurrent requests share batches (`match_batch` > 1: padded on a GPU,
//! pair by pair on the CPU's host layers), and each still gets its own scores: those of
//! single full-depth pairs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use uuid::Uuid;
use wbia_lightglue_engine::{Annot, Config, Engine, EngineOptions, FileChips, Progress};
use wbia_lightglue_model::{load_image, Aliked, LightGlue, MatchOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const NAMES: [&str; 4] = [
    "turtle_a1.jpg",
    "turtle_a2.jpg",
    "turtle_b3.jpg",
    "turtle_b4.jpg",
];

fn annot(i: u128) -> Annot {
    Annot {
        uuid: Uuid::from_u128(i),
        chip: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_share_batches_and_keep_their_scores() {
    let engine = Engine::start(EngineOptions {
        weights_dir: Some(repo().join("weights")),
        match_batch: 4,
        ..EngineOptions::default()
    })
    .unwrap();
    let config = Config {
        max_num_keypoints: 256,
        ..Config::default()
    };
    let path = |n: &str| repo().join("tests/fixtures/turtles").join(n);
    let mut files: HashMap<Uuid, PathBuf> = (0..4)
        .map(|i| (Uuid::from_u128(i as u128 + 1), path(NAMES[i])))
        .collect();
    files.insert(Uuid::from_u128(99), path(NAMES[0]));
    let source = FileChips(files);
    let p = Progress::default();
    // Features of 1..4 cached first, so that the queries below only match.
    let all: Vec<Annot> = (1..=4).map(annot).collect();
    let t = engine.admit(3).unwrap();
    engine
        .identify(&t, &source, &all[..1], &all, &config, &p)
        .await
        .unwrap();
    // A cold extraction (annotation 99) keeps the worker busy while three queries queue up
    // behind it; the worker then takes their matching jobs together.
    // The queries start only once the worker has begun that extraction (its counter moves
    // as it starts), so they queue behind it whatever the machine's load.
    let tickets: Vec<_> = (0..4).map(|_| engine.admit(3).unwrap()).collect();
    let busy = [annot(99)];
    let extractions = || engine.cache_stats.extractions.load(Ordering::SeqCst);
    let before = extractions();
    let queries = async {
        while extractions() == before {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::join!(
            engine.identify(&tickets[1], &source, &all[..1], &all[1..], &config, &p),
            engine.identify(&tickets[2], &source, &all[1..2], &all[2..], &config, &p),
            engine.identify(&tickets[3], &source, &all[3..], &all[..1], &config, &p),
        )
    };
    let (f, (q0, q1, q2)) = tokio::join!(
        engine.identify(&tickets[0], &source, &busy, &all[..1], &config, &p),
        queries
    );
    f.unwrap();
    let (q0, q1, q2) = (q0.unwrap(), q1.unwrap(), q2.unwrap());
    assert!(engine.cache_stats.match_jobs_joined.load(Ordering::Relaxed) >= 2);

    let aliked = Aliked::from_file(
        repo().join("weights/aliked-n16.safetensors"),
        config.aliked(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let feats: Vec<_> = NAMES
        .iter()
        .map(|n| aliked.extract(&load_image(path(n)).unwrap()).unwrap())
        .collect();
    let single = LightGlue::from_file(
        repo().join("weights/aliked-lightglue.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let full = MatchOptions::full();
    let expect = |q: usize, d: usize| {
        single
            .match_pair(&feats[q], &feats[d], &full)
            .unwrap()
            .score()
    };
    let want = [
        (&q0[0], vec![expect(0, 1), expect(0, 2), expect(0, 3)]),
        (&q1[0], vec![expect(1, 2), expect(1, 3)]),
        (&q2[0], vec![expect(3, 0)]),
    ];
    for (got, want) in want {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * w.max(1.0),
                "batched {g} vs single {w}"
            );
        }
    }
}
