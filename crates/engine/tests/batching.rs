//! Matching jobs waiting in the queue share padded batches (`match_batch` > 1), and each
//! still gets its own scores: those of single full-depth pairs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use uuid::Uuid;
use wbia_lightglue_engine::{Config, Engine, EngineOptions};
use wbia_lightglue_model::{LightGlue, LightGlueConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chip(name: &str) -> bytes::Bytes {
    std::fs::read(repo().join("tests/fixtures/turtles").join(name))
        .unwrap()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_queries_share_batches_and_keep_their_scores() {
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
    let names = [
        "turtle_a1.jpg",
        "turtle_a2.jpg",
        "turtle_b3.jpg",
        "turtle_b4.jpg",
    ];
    let mut feats = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let uuid = Uuid::from_u128(i as u128 + 1);
        feats.push(engine.features(uuid, chip(n), &config).await.unwrap());
    }
    // An extraction keeps the worker busy while three queries queue up behind it; the worker
    // then takes the three together.
    let busy = engine.features(Uuid::from_u128(99), chip("turtle_a1.jpg"), &config);
    let db1 = [feats[2].clone(), feats[3].clone()];
    let (f, q0, q1, q2) = tokio::join!(
        busy,
        engine.scores(&feats[0], &feats[1..], &config),
        engine.scores(&feats[1], &db1, &config),
        engine.scores(&feats[3], &feats[..1], &config),
    );
    f.unwrap();
    let (q0, q1, q2) = (q0.unwrap(), q1.unwrap(), q2.unwrap());
    assert!(engine.cache_stats.match_jobs_joined.load(Ordering::Relaxed) >= 2);

    let single = LightGlue::from_file(
        repo().join("weights/aliked-lightglue.safetensors"),
        LightGlueConfig {
            depth_confidence: -1.0,
            width_confidence: -1.0,
            filter_threshold: 0.1,
        },
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let expect = |q: usize, d: usize| {
        single
            .match_pair(&feats[q].features, &feats[d].features)
            .unwrap()
            .score()
    };
    let want = [
        (q0, vec![expect(0, 1), expect(0, 2), expect(0, 3)]),
        (q1, vec![expect(1, 2), expect(1, 3)]),
        (q2, vec![expect(3, 0)]),
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
