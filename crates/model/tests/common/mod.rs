//! Helpers shared by the parity tests: repository paths and golden files.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use wbia_lightglue_model::{weights, Aliked, DetectOptions, Features};

/// The repository: `WBIA_LIGHTGLUE_REPO` when set (a prebuilt test binary run elsewhere, as
/// `scripts/gpu-check.sh` does), else where this crate was built.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("WBIA_LIGHTGLUE_REPO") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

pub fn golden(rel: &str) -> HashMap<String, Tensor> {
    let path = repo_root().join("tests/goldens").join(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("golden {}: {e}", path.display()))
}

pub fn vec1(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Reference features stored by `scripts/reference/make_goldens.py`.
pub fn golden_features(name: &str) -> Features {
    features_from(&golden(&format!("aliked/{name}.safetensors")))
}

pub fn aliked(config: DetectOptions) -> Aliked {
    let path = weights::find_weights(Some(&repo_root().join("weights")), weights::ALIKED_FILE)
        .expect("weights/aliked-n16.safetensors");
    Aliked::from_file(path, config, &Device::Cpu).expect("load ALIKED")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn lightglue() -> wbia_lightglue_model::LightGlue {
    let path = weights::find_weights(Some(&repo_root().join("weights")), weights::LIGHTGLUE_FILE)
        .expect("weights/aliked-lightglue.safetensors");
    wbia_lightglue_model::LightGlue::from_file(path, &Device::Cpu).expect("load LightGlue")
}

/// How closely our keypoints and descriptors follow the reference's, keypoints compared as
/// sets (near-tied keypoints may swap order): the share of reference keypoints with one of
/// ours within 0.01 px, and over those pairs the lowest descriptor cosine and the largest
/// keypoint-score difference.
pub struct FeatureParity {
    pub matched_fraction: f64,
    pub min_cosine: f32,
    pub max_score_diff: f32,
}

pub fn compare_features(ours: &Features, reference: &Features) -> FeatureParity {
    let mut matched = 0usize;
    let mut min_cosine = 1f32;
    let mut max_score_diff = 0f32;
    for (i, r) in reference.keypoints.iter().enumerate() {
        let Some((j, d2)) = ours
            .keypoints
            .iter()
            .enumerate()
            .map(|(j, o)| (j, (o[0] - r[0]).powi(2) + (o[1] - r[1]).powi(2)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
        else {
            break;
        };
        if d2.sqrt() <= 0.01 {
            matched += 1;
            let (a, b) = (ours.descriptor(j), reference.descriptor(i));
            let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
            let cos = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
            min_cosine = min_cosine.min(cos);
            max_score_diff = max_score_diff.max((ours.scores[j] - reference.scores[i]).abs());
        }
    }
    FeatureParity {
        matched_fraction: if reference.is_empty() {
            1.0
        } else {
            matched as f64 / reference.len() as f64
        },
        min_cosine,
        max_score_diff,
    }
}

/// Features in a golden file (descriptors stored as f32 or f16).
pub fn features_from(g: &HashMap<String, Tensor>) -> Features {
    let kp = vec1(&g["keypoints"]);
    let size = vec1(&g["image_size"]);
    let descriptors = g["descriptors"]
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    Features {
        keypoints: kp.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
        scores: vec1(&g["keypoint_scores"]),
        descriptors,
        image_size: [size[0], size[1]],
    }
}

/// How closely our matches follow the reference's.
pub struct MatchParity {
    pub iou: f64,
    pub rel_score: f32,
    pub max_match_score_diff: f32,
}

/// Matches compared as sets of keys; per-match confidences compared on the common ones.
pub fn match_parity<K: std::hash::Hash + Eq + Clone>(
    ours: &[(K, f32)],
    reference: &[(K, f32)],
) -> MatchParity {
    let ref_set: std::collections::HashSet<K> = reference.iter().map(|(k, _)| k.clone()).collect();
    let our_set: std::collections::HashSet<K> = ours.iter().map(|(k, _)| k.clone()).collect();
    let union = our_set.union(&ref_set).count();
    let common = our_set.intersection(&ref_set).count();
    let iou = if union == 0 {
        1.0
    } else {
        common as f64 / union as f64
    };
    let mut max_diff = 0f32;
    for (k, s) in ours {
        if let Some((_, r)) = reference.iter().find(|(rk, _)| rk == k) {
            max_diff = max_diff.max((s - r).abs());
        }
    }
    let (so, sr): (f32, f32) = (
        ours.iter().map(|(_, s)| s).sum(),
        reference.iter().map(|(_, s)| s).sum(),
    );
    MatchParity {
        iou,
        rel_score: (so - sr).abs() / sr.abs().max(1e-6),
        max_match_score_diff: max_diff,
    }
}

/// A golden's matches as `(index pair, confidence)`.
pub fn golden_matches(g: &HashMap<String, Tensor>) -> Vec<([usize; 2], f32)> {
    let idx = g["matches"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    idx.chunks_exact(2)
        .map(|c| [c[0] as usize, c[1] as usize])
        .zip(vec1(&g["scores"]))
        .collect()
}

/// Our matches in the same form.
pub fn our_matches(r: &wbia_lightglue_model::MatchResult) -> Vec<([usize; 2], f32)> {
    r.matches
        .iter()
        .copied()
        .zip(r.scores.iter().copied())
        .collect()
}

/// The sweep's recipes (`tests/goldens/sweep_manifest.json`).
pub fn sweep_manifest() -> serde_json::Value {
    let path = repo_root().join("tests/goldens/sweep_manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn usize_at(v: &serde_json::Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
}

/// The recipe's input: a crop of the decoded fixture, each pixel repeated `repeat` times.
pub fn make_input(
    rel: &str,
    crop: &serde_json::Value,
    repeat: usize,
) -> wbia_lightglue_model::RgbImage {
    let src = wbia_lightglue_model::load_image(fixture(rel)).unwrap();
    let c: Vec<usize> = crop
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (x0, y0, w, h) = (c[0], c[1], c[2], c[3]);
    let (ow, oh) = (w * repeat, h * repeat);
    let mut data = Vec::with_capacity(ow * oh * 3);
    for y in 0..oh {
        for x in 0..ow {
            let at = ((y0 + y / repeat) * src.width as usize + x0 + x / repeat) * 3;
            data.extend_from_slice(&src.data[at..at + 3]);
        }
    }
    wbia_lightglue_model::RgbImage::new(ow as u32, oh as u32, data).unwrap()
}

/// A sweep case's golden features.
pub fn sweep_features(case: &str) -> Features {
    features_from(&golden(&format!("sweep/{case}.safetensors")))
}

/// A sweep case's extraction settings.
pub fn sweep_options(case: &serde_json::Value) -> DetectOptions {
    DetectOptions {
        max_num_keypoints: case["max_num_keypoints"].as_i64().unwrap(),
        detection_threshold: case["detection_threshold"].as_f64().unwrap() as f32,
        image_size: usize_at(case, "image_size"),
        ..DetectOptions::default()
    }
}

/// A sweep case's input, rebuilt from its fixture.
pub fn sweep_input(case: &serde_json::Value) -> wbia_lightglue_model::RgbImage {
    make_input(
        case["fixture"].as_str().unwrap(),
        &case["crop"],
        usize_at(case, "repeat"),
    )
}
