//! Our own extractor and matcher together on real photographs: known geometry and known
//! identities.

mod common;

use common::*;
use wbia_lightglue_model::{load_image, DetectOptions, Features, MatchOptions};

/// graf1 → graf3 has a ground-truth homography (`H1to3p.xml`); matched keypoints must agree.
#[test]
fn graffiti_matches_follow_the_homography() {
    let xml = std::fs::read_to_string(fixture("opencv/H1to3p.xml")).unwrap();
    let data = xml
        .split("<data>")
        .nth(1)
        .unwrap()
        .split("</data>")
        .next()
        .unwrap();
    let h: Vec<f64> = data
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(h.len(), 9);

    let extractor = aliked(DetectOptions::default());
    let f1 = extractor
        .extract(&load_image(fixture("opencv/graf1.png")).unwrap())
        .unwrap();
    let f3 = extractor
        .extract(&load_image(fixture("opencv/graf3.png")).unwrap())
        .unwrap();
    let result = lightglue()
        .match_pair(&f1, &f3, &MatchOptions::default())
        .unwrap();
    let mut errors: Vec<f64> = result
        .matches
        .iter()
        .map(|&[i, j]| {
            let [x, y] = f1.keypoints[i].map(|v| v as f64);
            let w = h[6] * x + h[7] * y + h[8];
            let (px, py) = (
                (h[0] * x + h[1] * y + h[2]) / w,
                (h[3] * x + h[4] * y + h[5]) / w,
            );
            let [qx, qy] = f3.keypoints[j].map(|v| v as f64);
            ((px - qx).powi(2) + (py - qy).powi(2)).sqrt()
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    let within3 = errors.iter().filter(|&&e| e < 3.0).count() as f64 / errors.len() as f64;
    println!("graf1→graf3: {} matches, median reprojection error {median:.3} px, {within3:.3} under 3 px", errors.len());
    assert!(errors.len() > 200);
    assert!(median < 2.0, "median error {median}");
}

/// Genuine sea-turtle pairs must outscore every impostor pair.
#[test]
fn genuine_turtles_outscore_impostors() {
    let extractor = aliked(DetectOptions::default());
    let matcher = lightglue();
    let load = |n: &str| -> Features {
        extractor
            .extract(&load_image(fixture(&format!("turtles/{n}.jpg"))).unwrap())
            .unwrap()
    };
    let (a1, a2, b3, b4) = (
        load("turtle_a1"),
        load("turtle_a2"),
        load("turtle_b3"),
        load("turtle_b4"),
    );
    let score = |x: &Features, y: &Features| {
        matcher
            .match_pair(x, y, &MatchOptions::default())
            .unwrap()
            .score()
    };
    let genuine = [score(&a1, &a2), score(&b3, &b4)];
    let impostor = [
        score(&a1, &b3),
        score(&a1, &b4),
        score(&a2, &b3),
        score(&a2, &b4),
    ];
    println!("genuine {genuine:?}, impostor {impostor:?}");
    let worst_genuine = genuine.iter().copied().fold(f32::INFINITY, f32::min);
    let best_impostor = impostor.iter().copied().fold(0.0, f32::max);
    assert!(worst_genuine > best_impostor);
}
