//! Half-precision matching: pair scores within 2% of f32 on real pairs (the tolerance the
//! README states). Runs on CPU here; the GPU check runs the same comparison on CUDA.

mod common;

use common::{golden_features, repo_root};
use wbia_lightglue_model::{weights, LightGlue, MatchOptions, Precision};

fn matcher(precision: Precision) -> LightGlue {
    let path = weights::find_weights(Some(&repo_root().join("weights")), weights::LIGHTGLUE_FILE)
        .expect("weights/aliked-lightglue.safetensors");
    LightGlue::from_file_with_precision(path, &candle_core::Device::Cpu, precision)
        .expect("load LightGlue")
}

fn check(precision: Precision) {
    let full = matcher(Precision::F32);
    let half = matcher(precision);
    assert_eq!(half.precision(), precision);
    // A genuine pair, an impostor pair and a building pair, with the plugin's adaptive settings.
    for (a, b) in [
        ("turtle_a1", "turtle_a2"),
        ("turtle_a1", "turtle_b3"),
        ("sacre_coeur1_k512", "sacre_coeur2"),
    ] {
        let (f0, f1) = (golden_features(a), golden_features(b));
        let adaptive = MatchOptions::default();
        let reference = full.match_pair(&f0, &f1, &adaptive).unwrap();
        let ours = half.match_pair(&f0, &f1, &adaptive).unwrap();
        let (s_ref, s) = (reference.score(), ours.score());
        let rel = (s - s_ref).abs() / s_ref.max(1.0);
        println!(
            "{precision} {a}-{b}: score {s:.3} vs f32 {s_ref:.3} (rel {rel:.2e}), {} vs {} matches, stop {} vs {}",
            ours.matches.len(),
            reference.matches.len(),
            ours.stop_layer,
            reference.stop_layer
        );
        assert!(rel <= 0.02, "{precision} {a}-{b}: score {s} vs f32 {s_ref}");
    }
}

#[test]
fn f16_scores_within_two_percent() {
    check(Precision::F16);
}

/// candle has no CPU bf16 matrix product: refused at load with a clear error (the GPU check
/// covers bf16 on CUDA).
#[test]
fn bf16_on_cpu_is_refused() {
    let path = weights::find_weights(Some(&repo_root().join("weights")), weights::LIGHTGLUE_FILE)
        .expect("weights/aliked-lightglue.safetensors");
    let err = LightGlue::from_file_with_precision(path, &candle_core::Device::Cpu, Precision::Bf16)
        .err()
        .expect("bf16 on CPU must be refused");
    assert!(
        err.to_string().contains("bf16 needs a CUDA device"),
        "{err}"
    );
}

#[test]
fn precision_names_parse() {
    assert_eq!("F16".parse::<Precision>().unwrap(), Precision::F16);
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
    assert!("int8".parse::<Precision>().is_err());
}
