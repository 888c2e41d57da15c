//! Match pictures (`render::draw_matches`) on synthetic features: lines end on the scaled
//! keypoints in the colour of their confidence, the rest of the chips is left alone, and the
//! caption is written even with no match.

use wbia_lightglue_model::render::{confidence_colour, draw_matches, match_caption, side_by_side};
use wbia_lightglue_model::{Features, MatchResult, RgbImage};

const BLUE: [u8; 3] = [0, 0, 255];
const GREY: [u8; 3] = [128, 128, 128];
/// Asked height; both chips are at most 100 px high, so 100 it is.
const HEIGHT: usize = 300;

fn solid(width: u32, height: u32, rgb: [u8; 3]) -> RgbImage {
    RgbImage::new(width, height, rgb.repeat((width * height) as usize)).unwrap()
}

fn features(keypoints: Vec<[f32; 2]>, image: &RgbImage) -> Features {
    let n = keypoints.len();
    Features {
        keypoints,
        scores: vec![1.0; n],
        descriptors: vec![0.0; n * Features::DESCRIPTOR_DIM],
        image_size: [image.width as f32, image.height as f32],
    }
}

fn pixel(image: &RgbImage, (x, y): (f32, f32)) -> [u8; 3] {
    let (x, y) = (x.round() as usize, y.round() as usize);
    let at = (y * image.width as usize + x) * 3;
    image.data[at..at + 3].try_into().unwrap()
}

/// Left 120×80 → 150×100 (×1.25), right 60×100 unscaled, 8 px gap: the right chip starts at
/// x = 158.
struct Scene {
    left: RgbImage,
    right: RgbImage,
    left_features: Features,
    right_features: Features,
}

fn scene() -> Scene {
    let (left, right) = (solid(120, 80, BLUE), solid(60, 100, GREY));
    let left_features = features(vec![[20.0, 20.0], [60.0, 40.0], [100.0, 70.0]], &left);
    let right_features = features(vec![[10.0, 30.0], [30.0, 60.0], [50.0, 85.0]], &right);
    Scene {
        left,
        right,
        left_features,
        right_features,
    }
}

/// Original pixel → picture pixel, pixel centres kept (as `draw_matches` scales).
fn scaled(p: [f32; 2], scale: f32, dx: f32) -> (f32, f32) {
    ((p[0] + 0.5) * scale - 0.5 + dx, (p[1] + 0.5) * scale - 0.5)
}

#[test]
fn lines_end_on_the_keypoints_in_their_confidence_colour() {
    let s = scene();
    let result = MatchResult {
        matches: vec![[0, 2], [1, 0], [2, 1]],
        scores: vec![0.0, 0.5, 1.0],
        stop_layer: 9,
    };
    let picture = draw_matches(
        &s.left,
        &s.left_features,
        &s.right,
        &s.right_features,
        &result,
        HEIGHT,
    )
    .unwrap();
    let plain = side_by_side(&s.left, &s.right, HEIGHT).unwrap();
    assert_eq!((picture.width, picture.height), (150 + 8 + 60, 100));
    assert_eq!((picture.width, picture.height), (plain.width, plain.height));

    let expected = [[255, 0, 0], [255, 255, 0], [0, 255, 0]];
    for (m, &[i, j]) in result.matches.iter().enumerate() {
        let colour = confidence_colour(result.scores[m]);
        assert_eq!(colour, expected[m]);
        let a = scaled(s.left_features.keypoints[i], 1.25, 0.0);
        let b = scaled(s.right_features.keypoints[j], 1.0, 158.0);
        assert_eq!(pixel(&picture, a), colour, "match {m}, left end {a:?}");
        assert_eq!(pixel(&picture, b), colour, "match {m}, right end {b:?}");
        // Halfway along the line as well (no other line passes there in this scene), within
        // a pixel: the rasterised line need not hit the rounded midpoint itself.
        let mid = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
        let near = [-1.0, 0.0, 1.0].map(|dy| pixel(&picture, (mid.0, mid.1 + dy)));
        assert!(
            near.contains(&colour),
            "match {m}, middle {mid:?}: {near:?}"
        );
    }
    // Far from every line, below the caption: the chips and the gap are untouched.
    for (at, background) in [
        ((4.0, 96.0), BLUE),
        ((145.0, 4.0 + 20.0), BLUE),
        ((215.0, 4.0), GREY),
        ((153.0, 5.0), [255; 3]),
    ] {
        assert_eq!(pixel(&picture, at), background, "{at:?}");
        assert_eq!(pixel(&plain, at), background, "{at:?}");
    }
}

#[test]
fn no_match_still_gives_the_picture_with_its_caption() {
    let s = scene();
    let none = MatchResult {
        matches: vec![],
        scores: vec![],
        stop_layer: 3,
    };
    assert_eq!(match_caption(&none), "score 0.00 \u{b7} 0 matches");
    let picture = draw_matches(
        &s.left,
        &s.left_features,
        &s.right,
        &s.right_features,
        &none,
        HEIGHT,
    )
    .unwrap();
    let plain = side_by_side(&s.left, &s.right, HEIGHT).unwrap();
    assert_eq!((picture.width, picture.height), (plain.width, plain.height));
    // The caption: white glyphs on a black box in the top left corner, 11 px high at this
    // size (7 px glyphs, 2 px padding); below it the picture is the plain side by side.
    let caption: Vec<[u8; 3]> = (0..11)
        .flat_map(|y| (0..picture.width).map(move |x| (x as f32, y as f32)))
        .map(|at| pixel(&picture, at))
        .collect();
    assert!(caption.contains(&[0; 3]) && caption.contains(&[255; 3]));
    let white = caption.iter().filter(|p| **p == [255; 3]).count();
    assert!(white > 100, "{white} caption pixels");
    let row = picture.width as usize * 3;
    assert_eq!(picture.data[11 * row..], plain.data[11 * row..]);
    // Its PNG decodes to the same pixels.
    let png = wbia_lightglue_model::render::encode_png(&picture).unwrap();
    let decoded = wbia_lightglue_model::decode_image(&png).unwrap();
    assert_eq!(decoded.data, picture.data);
}

#[test]
fn captions_say_score_and_count() {
    let one = MatchResult {
        matches: vec![[0, 0]],
        scores: vec![0.75],
        stop_layer: 9,
    };
    assert_eq!(match_caption(&one), "score 0.75 \u{b7} 1 match");
    let two = MatchResult {
        matches: vec![[0, 0], [1, 1]],
        scores: vec![0.5, 0.25],
        stop_layer: 9,
    };
    assert_eq!(match_caption(&two), "score 0.75 \u{b7} 2 matches");
}

#[test]
fn matches_out_of_range_are_an_error() {
    let s = scene();
    let bad = MatchResult {
        matches: vec![[0, 3]],
        scores: vec![0.9],
        stop_layer: 9,
    };
    let err = draw_matches(
        &s.left,
        &s.left_features,
        &s.right,
        &s.right_features,
        &bad,
        HEIGHT,
    )
    .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}
