//! The rotation sweep at the plugin's settings (aliked-n16, 2,048 keypoints, 512 px): a turtle
//! chip turned by 90° that the plain matcher ranks below both impostors is found again, at
//! the turn that undoes it, at about its unturned score; the sweep extracts the query's three
//! extra turns and nothing of the database again, and matches each pair four times.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use uuid::Uuid;
use wbia_lightglue_engine::{
    Annot, Chip, ChipSource, Config, Engine, EngineOptions, PairScore, Progress, SourceError,
};
use wbia_lightglue_model::{load_image, render, Rotation};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Chips as bytes in memory (the turned query is made by the test).
struct Chips(HashMap<Uuid, Bytes>);

impl ChipSource for Chips {
    async fn chip(&self, annot: Uuid) -> Result<Chip, SourceError> {
        self.0
            .get(&annot)
            .cloned()
            .map(Chip::Encoded)
            .ok_or(SourceError::Unknown)
    }
}

fn annot(n: u128) -> Annot {
    Annot {
        uuid: Uuid::from_u128(n),
        chip: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_finds_a_turned_chip_the_plain_matcher_misses() {
    let turtle = |n: &str| load_image(repo().join(format!("tests/fixtures/turtles/{n}.jpg")));
    // turtle_a1 photographed "sideways": turned 90° clockwise, stored as PNG.
    let turned = turtle("turtle_a1")
        .unwrap()
        .rotated(Rotation::Cw90)
        .unwrap();
    let mut chips = HashMap::from([(
        Uuid::from_u128(1),
        Bytes::from(render::encode_png(&turned).unwrap()),
    )]);
    for (i, name) in ["turtle_a2", "turtle_b3", "turtle_b4"].iter().enumerate() {
        let bytes = std::fs::read(repo().join(format!("tests/fixtures/turtles/{name}.jpg")));
        chips.insert(Uuid::from_u128(2 + i as u128), Bytes::from(bytes.unwrap()));
    }
    let source = Chips(chips);
    let engine = Engine::start(EngineOptions {
        weights_dir: Some(repo().join("weights")),
        ..EngineOptions::default()
    })
    .unwrap();
    let (query, database) = ([annot(1)], [annot(2), annot(3), annot(4)]);
    let run = |config: Config| {
        let (engine, source, query, database) = (&engine, &source, &query, &database);
        async move {
            let ticket = engine.admit(3).unwrap();
            let progress = Progress::default();
            let scores = engine
                .identify_with_rotations(&ticket, source, query, database, &config, &progress)
                .await
                .unwrap();
            scores.into_iter().next().unwrap()
        }
    };
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::SeqCst);

    let plain = run(Config::default()).await;
    let [a2, b3, b4]: [PairScore; 3] = plain.clone().try_into().unwrap();
    println!(
        "plain: genuine a2 {:.2}, impostors b3 {:.2}, b4 {:.2}",
        a2.score, b3.score, b4.score
    );
    assert!(
        a2.score < b3.score.min(b4.score),
        "the plain matcher should miss the turned chip: {plain:?}"
    );
    assert!(plain.iter().all(|p| p.rotation == Rotation::None));
    let (extracted, matched) = (
        stat(&engine.cache_stats.extractions),
        stat(&engine.cache_stats.pairs_matched),
    );
    assert_eq!((extracted, matched), (4, 3));

    let sweep = run(Config {
        rotation_sweep: true,
        ..Config::default()
    })
    .await;
    let [a2, b3, b4]: [PairScore; 3] = sweep.clone().try_into().unwrap();
    println!(
        "sweep: genuine a2 {:.2} at {}°, impostors b3 {:.2} at {}°, b4 {:.2} at {}°",
        a2.score,
        a2.rotation.degrees(),
        b3.score,
        b3.rotation.degrees(),
        b4.score,
        b4.rotation.degrees()
    );
    // Turning the query 270° clockwise undoes the 90° turn.
    assert_eq!(a2.rotation, Rotation::Cw270);
    assert!(
        a2.score > 10.0 * b3.score.max(b4.score),
        "the sweep should find the genuine pair: {sweep:?}"
    );
    // Each pair's best is at least its unturned score.
    for (s, p) in sweep.iter().zip(&plain) {
        assert!(s.score >= p.score);
    }
    // Three more turns of the query extracted, no database chip again; four matches a pair
    // (the unturned query's three re-matched: no store in this engine).
    assert_eq!(stat(&engine.cache_stats.extractions) - extracted, 3);
    assert_eq!(stat(&engine.cache_stats.pairs_matched) - matched, 12);

    // Turned back, the query is the original chip pixel for pixel (PNG is lossless), so the
    // sweep's genuine score is the unturned pair's score.
    let mut chips = source.0.clone();
    let original = std::fs::read(repo().join("tests/fixtures/turtles/turtle_a1.jpg")).unwrap();
    chips.insert(Uuid::from_u128(10), Bytes::from(original));
    let ticket = engine.admit(1).unwrap();
    let original = engine
        .identify(
            &ticket,
            &Chips(chips),
            &[annot(10)],
            &[annot(2)],
            &Config::default(),
            &Progress::default(),
        )
        .await
        .unwrap()[0][0];
    println!("unturned a1-a2: {original:.2}");
    assert!((a2.score - original).abs() <= 1e-4 * original);
}
