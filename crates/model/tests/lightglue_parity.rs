//! LightGlue on the real weights against the PyTorch reference, fed the reference's own ALIKED
//! features so that only the matcher is compared.
//!
//! Tolerances (issue #4): match-set IoU ≥ 0.99 and pair-score relative error ≤ 0.5%, with
//! adaptive depth/width on and off.

mod common;

use std::collections::HashSet;

use common::*;
use wbia_lightglue_model::{LightGlueConfig, MatchResult};

struct Reference {
    matches: HashSet<[usize; 2]>,
    score: f32,
    stop: usize,
}

fn reference(pair: &str, mode: &str) -> Reference {
    let g = golden(&format!("lightglue/{pair}_{mode}.safetensors"));
    let flat = g["matches"].flatten_all().unwrap().to_vec1::<i64>().unwrap();
    Reference {
        matches: flat.chunks_exact(2).map(|c| [c[0] as usize, c[1] as usize]).collect(),
        score: vec1(&g["score"])[0],
        stop: g["stop"].to_vec1::<i64>().unwrap()[0] as usize,
    }
}

fn iou(ours: &MatchResult, reference: &HashSet<[usize; 2]>) -> f64 {
    let ours: HashSet<[usize; 2]> = ours.matches.iter().copied().collect();
    let union = ours.union(reference).count();
    if union == 0 {
        return 1.0;
    }
    ours.intersection(reference).count() as f64 / union as f64
}

fn check(pair: &str, a: &str, b: &str, mode: &str) {
    let config = match mode {
        "adaptive" => LightGlueConfig::default(),
        _ => LightGlueConfig::full(),
    };
    let matcher = lightglue(config);
    let (f0, f1) = (golden_features(a), golden_features(b));
    let ours = matcher.match_pair(&f0, &f1).unwrap();
    let r = reference(pair, mode);
    let iou = iou(&ours, &r.matches);
    let rel = ((ours.score() - r.score) / r.score.max(1e-6)).abs();
    println!(
        "{pair} {mode}: {} matches (ref {}), IoU {iou:.4}, score {:.4} (ref {:.4}, rel err {rel:.2e}), stop {} (ref {})",
        ours.matches.len(),
        r.matches.len(),
        ours.score(),
        r.score,
        ours.stop_layer,
        r.stop
    );
    assert!(iou >= 0.99, "{pair} {mode}: IoU {iou}");
    assert!(rel <= 5e-3, "{pair} {mode}: relative score error {rel}");
    assert_eq!(ours.stop_layer, r.stop, "{pair} {mode}: stop layer");
}

macro_rules! pair_tests {
    ($adaptive:ident, $full:ident, $pair:expr, $a:expr, $b:expr) => {
        #[test]
        fn $adaptive() {
            check($pair, $a, $b, "adaptive");
        }
        #[test]
        fn $full() {
            check($pair, $a, $b, "full");
        }
    };
}

pair_tests!(sacre_coeur_adaptive, sacre_coeur_full, "sacre_coeur", "sacre_coeur1", "sacre_coeur2");
pair_tests!(graf_adaptive, graf_full, "graf", "graf1", "graf3");
pair_tests!(dsc_adaptive, dsc_full, "dsc", "DSC_0410", "DSC_0411");
pair_tests!(turtle_genuine_adaptive, turtle_genuine_full, "turtle_genuine", "turtle_a1", "turtle_a2");
pair_tests!(turtle_genuine2_adaptive, turtle_genuine2_full, "turtle_genuine2", "turtle_b3", "turtle_b4");
pair_tests!(turtle_impostor_adaptive, turtle_impostor_full, "turtle_impostor", "turtle_a1", "turtle_b3");
