//! Reduced-precision matching against f32 on real pairs, with the tolerances the README
//! states: f16 (candle's) within 2%, bf16 on the CPU's AVX-512 BF16 kernels within 1% and the
//! same top-1. The GPU check runs the f16/bf16 comparison on CUDA.

mod common;

use common::{golden_features, repo_root};
use wbia_lightglue_model::{cpu, weights, LightGlue, MatchOptions, Precision};

fn matcher(precision: Precision) -> LightGlue {
    let path = weights::find_weights(Some(&repo_root().join("weights")), weights::LIGHTGLUE_FILE)
        .expect("weights/aliked-lightglue.safetensors");
    LightGlue::from_file_with_precision(path, &candle_core::Device::Cpu, precision)
        .expect("load LightGlue")
}

/// Relative difference of a pair score from f32's; scores below 1 are compared absolutely
/// (an impostor pair's 0.3 moving by 0.005 changes no ranking).
fn relative(s: f32, s_ref: f32) -> f32 {
    (s - s_ref).abs() / s_ref.max(1.0)
}

fn check(precision: Precision, tolerance: f32) {
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
        let rel = relative(s, s_ref);
        println!(
            "{precision} {a}-{b}: score {s:.3} vs f32 {s_ref:.3} (rel {rel:.2e}), {} vs {} matches, stop {} vs {}",
            ours.matches.len(),
            reference.matches.len(),
            ours.stop_layer,
            reference.stop_layer
        );
        assert!(
            rel <= tolerance,
            "{precision} {a}-{b}: score {s} vs f32 {s_ref}"
        );
    }
}

/// bf16 asked where the kernels are absent: the matcher says f32 and matches exactly as f32.
fn check_fallback_to_f32(bf16: &LightGlue) {
    assert_eq!(
        bf16.precision(),
        Precision::F32,
        "fallback without AVX-512 BF16"
    );
    let full = matcher(Precision::F32);
    for (a, b) in [
        ("turtle_a1", "turtle_a2"),
        ("turtle_a1", "turtle_b3"),
        ("sacre_coeur1_k512", "sacre_coeur2"),
    ] {
        let (f0, f1) = (golden_features(a), golden_features(b));
        let options = MatchOptions::default();
        let want = full.match_pair(&f0, &f1, &options).unwrap();
        let got = bf16.match_pair(&f0, &f1, &options).unwrap();
        assert!(!want.matches.is_empty(), "{a}-{b}: no matches to compare");
        assert_eq!(got.matches, want.matches, "{a}-{b}");
        assert_eq!(got.scores, want.scores, "{a}-{b}");
        assert_eq!(got.stop_layer, want.stop_layer, "{a}-{b}");
    }
}

#[test]
fn f16_scores_within_two_percent() {
    check(Precision::F16, 0.02);
}

/// bf16 on the CPU (AVX-512 BF16 products, f32 elsewhere): 4 queries (turtle, building at
/// 512 keypoints, DSC, graffiti) against 6 database images (their partners and impostors),
/// adaptive, and the turtle's 6 pairs at full depth too: every pair score within 1% of f32 or 1.0 absolute, whichever is
/// larger, and every query's top-1 unchanged. The absolute part is for impostor pairs: their
/// score is a handful of weak matches near the 0.1 filter, and one match more or less, or a
/// point pruned a layer earlier, moves it by 0.1–0.5 (matching pairs score in the hundreds
/// and stay within 1%).
///
/// Where dispatch has no AVX-512 BF16 the matcher falls back to f32: under
/// `WBIA_LIGHTGLUE_CPU=portable` (or `scalar`) this checks that fallback instead (bf16 asked,
/// f32 run, the same matches and scores as f32 on the 3 pairs of `check`, to the bit), the
/// native pass having tested the kernels; on a CPU that lacks the instructions without that
/// switch it checks the fallback and then fails, unless `WBIA_LIGHTGLUE_ALLOW_SKIP=1`.
#[test]
fn bf16_on_cpu_keeps_scores_and_top1() {
    let bf16 = matcher(Precision::Bf16);
    if !wbia_lightglue_model::ops::matmul::bf16_available() {
        check_fallback_to_f32(&bf16);
        if cpu::paths() < cpu::Paths::Avx512 {
            use std::io::Write;
            // Uncaptured, so that the log says what this pass did not test.
            let _ = writeln!(
                std::io::stderr(),
                "{}={}: bf16 runs f32 (checked, identical); the AVX-512 BF16 kernels are \
                 the native pass's subject",
                cpu::ENV,
                cpu::paths().name()
            );
        } else {
            cpu::skip_or_fail("this CPU has no AVX-512 BF16: the bf16 kernels cannot run");
        }
        return;
    }
    check(Precision::Bf16, 0.01);
    let f32 = matcher(Precision::F32);
    let queries = ["turtle_a1", "sacre_coeur1_k512", "DSC_0410", "graf1"];
    let database = [
        "turtle_a2",
        "turtle_b3",
        "turtle_b4",
        "sacre_coeur2",
        "DSC_0411",
        "graf3",
    ];
    let db: Vec<_> = database.iter().map(|n| golden_features(n)).collect();
    let (mut worst_genuine, mut worst_impostor) = (0f32, 0f32);
    // Adaptive (the plugin's settings) for every query; full depth for the turtle query.
    for (options, queries) in [
        (MatchOptions::default(), &queries[..]),
        (MatchOptions::full(), &queries[..1]),
    ] {
        for &q in queries {
            let fq = golden_features(q);
            let scores = |m: &LightGlue| -> Vec<f32> {
                db.iter()
                    .map(|f| m.match_pair(&fq, f, &options).unwrap().score())
                    .collect()
            };
            let (want, got) = (scores(&f32), scores(&bf16));
            for (i, (&s, &s_ref)) in got.iter().zip(&want).enumerate() {
                let pair = format!("{q}-{} ({options:?})", database[i]);
                println!("bf16 {pair}: {s:.3} vs f32 {s_ref:.3}");
                let diff = (s - s_ref).abs();
                if s_ref >= 100.0 {
                    worst_genuine = worst_genuine.max(diff / s_ref);
                } else {
                    worst_impostor = worst_impostor.max(diff);
                }
                assert!(
                    diff <= (0.01 * s_ref).max(1.0),
                    "{pair}: bf16 {s} vs f32 {s_ref}"
                );
            }
            let top = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            assert_eq!(top(&got), top(&want), "{q}: top-1 changed ({options:?})");
        }
    }
    println!(
        "bf16 over 30 pairs: pairs scoring ≥ 100 within {:.2}% of f32, the others within {worst_impostor:.3}",
        worst_genuine * 100.0
    );
}

#[test]
fn precision_names_parse() {
    assert_eq!("F16".parse::<Precision>().unwrap(), Precision::F16);
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
    assert!("int8".parse::<Precision>().is_err());
}
