//! Ensembles (`model_name` a list): each member runs exactly as that single model would, under
//! its own keys, and the pair's score is the members' fused. Covers the four fusion rules on
//! the four turtle chips (1 query × 3 candidates) with n16 + n16rot and n16 + n16rot + n32,
//! at 128 keypoints and 256 px, with a store on disk shared by a second engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use uuid::Uuid;
use wbia_lightglue_engine::{
    calibration::CalibrationMethod, Annot, Calibration, Config, Engine, EngineOptions, FileChips,
    Fusion, ModelName, Progress, UnusableChips,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn turtles() -> (Vec<Annot>, FileChips) {
    let names = [
        "turtle_a1.jpg",
        "turtle_a2.jpg",
        "turtle_b3.jpg",
        "turtle_b4.jpg",
    ];
    let mut files = HashMap::new();
    let annots = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let uuid = Uuid::from_u128(0xE000 + i as u128);
            files.insert(uuid, repo().join("tests/fixtures/turtles").join(name));
            Annot { uuid, chip: None }
        })
        .collect();
    (annots, FileChips(files))
}

/// Made-up member calibrations (slopes 2, 0.5, 1): what `log_odds` weighs members by.
fn member_calibrations(members: usize) -> Vec<Calibration> {
    [2.0, 0.5, 1.0][..members]
        .iter()
        .map(|&slope| Calibration {
            method: CalibrationMethod::LogisticLog1p,
            slope,
            intercept: -3.0,
            genuine_pairs: 10,
            impostor_pairs: 90,
        })
        .collect()
}

fn config(model_name: ModelName, fusion: Fusion) -> Config {
    let members = model_name.names().len();
    let config = Config {
        model_name,
        max_num_keypoints: 128,
        image_size: 256,
        fusion,
        member_calibrations: if fusion == Fusion::LogOdds {
            member_calibrations(members)
        } else {
            Vec::new()
        },
        ..Config::default()
    };
    config.validate().unwrap();
    config
}

fn engine(data_dir: &std::path::Path) -> Engine {
    Engine::start(EngineOptions {
        weights_dir: Some(repo().join("weights")),
        data_dir: Some(data_dir.to_path_buf()),
        ..EngineOptions::default()
    })
    .unwrap()
}

/// a1 against a2, b3, b4: each pair's score and member scores.
async fn scores(engine: &Engine, config: &Config) -> Vec<(f32, Vec<f32>)> {
    let (all, source) = turtles();
    let ticket = engine.admit(3).unwrap();
    let found = engine
        .identify_all(
            &ticket,
            &source,
            &all[..1],
            &all[1..],
            config,
            &Progress::default(),
            UnusableChips::Fail,
        )
        .await
        .unwrap();
    assert!(found.skipped.is_empty());
    found.scores[0]
        .iter()
        .map(|p| {
            let p = p.expect("every pair scored");
            (p.score, p.members.as_slice().to_vec())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_run_as_single_models_and_their_scores_are_fused() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-ensemble-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["aliked-n16", "aliked-n16rot", "aliked-n32"];
    let first = engine(&dir);
    let mut single: Vec<Vec<f32>> = Vec::new();
    for name in names {
        let got = scores(&first, &config(name.into(), Fusion::Sum)).await;
        // A single model reports no member scores.
        assert!(got.iter().all(|(_, m)| m.is_empty()));
        single.push(got.into_iter().map(|(s, _)| s).collect());
    }
    let extracted = first.cache_stats.extractions.load(Ordering::SeqCst);
    let matched = first.cache_stats.pairs_matched.load(Ordering::SeqCst);
    assert_eq!((extracted, matched), (12, 9));

    let pair = ModelName::Ensemble(vec![names[0].into(), names[1].into()]);
    let all_three = ModelName::Ensemble(names.iter().map(|n| n.to_string()).collect());
    for (model_name, members) in [(pair, 2), (all_three, 3)] {
        for fusion in [Fusion::Sum, Fusion::LogSum, Fusion::Max, Fusion::LogOdds] {
            let got = scores(&first, &config(model_name.clone(), fusion)).await;
            for (d, (score, m)) in got.iter().enumerate() {
                let expected: Vec<f32> = single[..members].iter().map(|s| s[d]).collect();
                assert_eq!(
                    m, &expected,
                    "{model_name} {fusion:?}: members as single models"
                );
                let fused = match fusion {
                    Fusion::Sum => expected.iter().sum::<f32>(),
                    Fusion::LogSum => expected.iter().map(|s| s.ln_1p()).sum(),
                    Fusion::Max => expected.iter().copied().fold(0.0, f32::max),
                    Fusion::LogOdds => member_calibrations(members)
                        .iter()
                        .zip(&expected)
                        .map(|(c, s)| c.slope * f64::from(*s).ln_1p())
                        .sum::<f64>() as f32,
                };
                assert_eq!(*score, fused, "{model_name} {fusion:?}");
            }
        }
    }
    // Every member's features and scores were the single models': nothing new was run.
    assert_eq!(first.cache_stats.extractions.load(Ordering::SeqCst), 12);
    assert_eq!(first.cache_stats.pairs_matched.load(Ordering::SeqCst), 9);
    drop(first);

    // A fresh engine on the same store: the ensemble is answered from the members' rows.
    let second = engine(&dir);
    let pair = ModelName::Ensemble(vec![names[0].into(), names[1].into()]);
    let got = scores(&second, &config(pair, Fusion::Sum)).await;
    for (d, (score, _)) in got.iter().enumerate() {
        assert_eq!(*score, single[0][d] + single[1][d]);
    }
    assert_eq!(second.cache_stats.pairs_matched.load(Ordering::SeqCst), 0);
    assert_eq!(
        second.cache_stats.score_store_hits.load(Ordering::SeqCst),
        6
    );
    drop(second);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_name_is_a_string_or_a_list_of_distinct_matchable_variants() {
    let one = Config::from_json(r#"{"model_name": "aliked-n16rot"}"#, "x").unwrap();
    assert_eq!(one.model_name, ModelName::One("aliked-n16rot".into()));
    // A single model writes back as the plugin's string, and without a fusion key.
    let written = serde_json::to_value(&one).unwrap();
    assert_eq!(written["model_name"], "aliked-n16rot");
    assert!(written.get("fusion").is_none());

    let text = r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "fusion": "log_sum"}"#;
    let pair = Config::from_json(text, "x").unwrap();
    assert_eq!(pair.fusion, Fusion::LogSum);
    let members = pair.members();
    assert_eq!(members.len(), 2);
    assert_eq!(
        members[1].model_name,
        ModelName::One("aliked-n16rot".into())
    );
    assert!(members.iter().all(|m| m.calibration.is_none()));
    // Members key their features as those single models do; the ensemble has no variant.
    assert_eq!(
        members[0].feature_key(Default::default()),
        Config::default().feature_key(Default::default())
    );
    assert!(pair.aliked_variant().is_err());
    assert_eq!(
        Config::from_json(&serde_json::to_string(&pair).unwrap(), "x").unwrap(),
        pair
    );

    for (bad, says) in [
        (r#"{"model_name": ["aliked-n16"]}"#, "at least two"),
        (r#"{"model_name": ["aliked-n16", "aliked-n16"]}"#, "twice"),
        (r#"{"model_name": ["aliked-n16", "aliked-t16"]}"#, "64-d"),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n64"]}"#,
            "aliked-n64",
        ),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-n16"]}"#,
            "at most 3",
        ),
        (r#"{"model_name": ["aliked-n16", 3]}"#, "expected a string"),
        (r#"{"fusion": "product"}"#, "product"),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "fusion": "log_odds"}"#,
            "needs member_calibrations, one per member (2), got 0",
        ),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "fusion": "log_odds",
                "member_calibrations": [{"method": "logistic-log1p", "slope": 1.0,
                "intercept": 0.0, "genuine_pairs": 1, "impostor_pairs": 1}]}"#,
            "got 1",
        ),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "member_calibrations": []}"#,
            "",
        ),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "member_calibrations": [
                {"method": "logistic-log1p", "slope": 1.0, "intercept": 0.0,
                 "genuine_pairs": 1, "impostor_pairs": 1},
                {"method": "logistic-log1p", "slope": 1.0, "intercept": 0.0,
                 "genuine_pairs": 1, "impostor_pairs": 1}]}"#,
            "read by an ensemble's fusion \"log_odds\" only",
        ),
        (
            r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "fusion": "log_odds",
                "member_calibrations": [
                {"method": "logistic-log1p", "slope": 1.0, "intercept": 0.0,
                 "genuine_pairs": 1, "impostor_pairs": 1},
                {"method": "logistic-log1p", "slope": -1.0, "intercept": 0.0,
                 "genuine_pairs": 1, "impostor_pairs": 1}]}"#,
            "slope must be positive",
        ),
    ] {
        if says.is_empty() {
            // An empty list is no list: accepted, and written back without the key.
            let config = Config::from_json(bad, "x.json").unwrap();
            let written = serde_json::to_value(&config).unwrap();
            assert!(written.get("member_calibrations").is_none());
            continue;
        }
        let e = Config::from_json(bad, "x.json").unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }

    // `evaluate --calibrate` fits the member calibrations itself: it may be given a
    // `log_odds` ensemble without them, and nothing else is let through.
    let text = r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "fusion": "log_odds"}"#;
    let to_fit = Config::from_json_to_calibrate(text, "x").unwrap();
    assert_eq!(to_fit.fusion, Fusion::LogOdds);
    assert!(to_fit.member_calibrations.is_empty());
    let e = Config::from_json_to_calibrate(
        r#"{"model_name": ["aliked-n16"], "fusion": "log_odds"}"#,
        "x",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least two"), "{e}");

    // The configuration the Nyala train split chose (scripts/ensembles/README.md) stays
    // loadable as the schema evolves.
    let path = repo().join("scripts/ensembles/nyala-train50-log_odds.json");
    let chosen = Config::from_json(&std::fs::read_to_string(&path).unwrap(), "chosen").unwrap();
    assert_eq!(chosen.fusion, Fusion::LogOdds);
    assert_eq!(chosen.member_calibrations.len(), 2);
    assert_eq!(
        chosen.max_num_keypoints,
        Config::default().max_num_keypoints
    );
}
