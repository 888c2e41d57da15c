//! ALIKED on the real weights against the PyTorch reference, on real photographs.
//!
//! Tolerances (issue #3): ≥99% of reference keypoints have one of ours within 0.01 px; on those
//! pairs the descriptor cosine is ≥0.9999 and the keypoint score differs by ≤1e-4; plus tight
//! bounds a little above what is measured (issue #15). Keypoints are
//! compared as sets, since near-tied keypoints may swap order.

mod common;

use common::*;
use wbia_lightglue_model::{load_image, DetectOptions};

fn check(image: &str, golden: &str, config: DetectOptions) {
    let model = aliked(config);
    let ours = model.extract(&load_image(fixture(image)).unwrap()).unwrap();
    let reference = golden_features(golden);
    assert_eq!(
        ours.image_size, reference.image_size,
        "{golden}: image size"
    );
    assert_eq!(ours.len(), reference.len(), "{golden}: keypoint count");
    let p = compare_features(&ours, &reference);
    println!(
        "{golden}: {:.4} of keypoints within 0.01 px, min cosine {:.7}, max score diff {:.2e}",
        p.matched_fraction, p.min_cosine, p.max_score_diff
    );
    assert!(
        p.matched_fraction >= 0.99,
        "{golden}: {:.4} matched",
        p.matched_fraction
    );
    assert!(p.min_cosine >= 0.9999, "{golden}: cosine {}", p.min_cosine);
    assert!(
        p.max_score_diff <= 1e-4,
        "{golden}: score diff {}",
        p.max_score_diff
    );
    // Tight bounds near the measured worst (1.0 matched, cosine 0.9999993, score 1.5e-5), so
    // that a regression well inside the promise above is still seen.
    assert!(
        p.matched_fraction >= 0.995 && p.min_cosine >= 0.999995 && p.max_score_diff <= 5e-5,
        "{golden}: outside the tight bounds"
    );
    let norms_ok = (0..ours.len()).all(|i| {
        let n: f32 = ours.descriptor(i).iter().map(|v| v * v).sum();
        (n.sqrt() - 1.0).abs() < 1e-4
    });
    assert!(norms_ok, "{golden}: descriptors are not unit length");
}

macro_rules! parity_test {
    ($name:ident, $image:expr, $golden:expr) => {
        #[test]
        fn $name() {
            check($image, $golden, DetectOptions::default());
        }
    };
}

parity_test!(sacre_coeur1, "lightglue/sacre_coeur1.jpg", "sacre_coeur1");
parity_test!(
    sacre_coeur2_portrait,
    "lightglue/sacre_coeur2.jpg",
    "sacre_coeur2"
);
parity_test!(dsc_0410, "lightglue/DSC_0410.JPG", "DSC_0410");
parity_test!(dsc_0411, "lightglue/DSC_0411.JPG", "DSC_0411");
parity_test!(graf1_png, "opencv/graf1.png", "graf1");
parity_test!(graf3_png, "opencv/graf3.png", "graf3");
parity_test!(turtle_a1, "turtles/turtle_a1.jpg", "turtle_a1");
parity_test!(turtle_a2, "turtles/turtle_a2.jpg", "turtle_a2");
parity_test!(turtle_b3, "turtles/turtle_b3.jpg", "turtle_b3");
parity_test!(turtle_b4, "turtles/turtle_b4.jpg", "turtle_b4");
parity_test!(wbia_zebra, "wbia/2014_000001.jpg", "wbia_000001");

#[test]
fn fewer_keypoints() {
    let config = DetectOptions {
        max_num_keypoints: 512,
        ..DetectOptions::default()
    };
    check("lightglue/sacre_coeur1.jpg", "sacre_coeur1_k512", config);
}

#[test]
fn smaller_image_size() {
    let config = DetectOptions {
        image_size: 320,
        ..DetectOptions::default()
    };
    check("lightglue/sacre_coeur1.jpg", "sacre_coeur1_s320", config);
}
