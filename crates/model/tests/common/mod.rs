//! Helpers shared by the parity tests: repository paths and golden files.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use wbia_lightglue_model::{weights, Aliked, AlikedConfig, Features};

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
    let g = golden(&format!("aliked/{name}.safetensors"));
    let kp = vec1(&g["keypoints"]);
    let size = vec1(&g["image_size"]);
    Features {
        keypoints: kp.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
        scores: vec1(&g["keypoint_scores"]),
        descriptors: vec1(&g["descriptors"]),
        image_size: [size[0], size[1]],
    }
}

pub fn aliked(config: AlikedConfig) -> Aliked {
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

pub fn lightglue(config: wbia_lightglue_model::LightGlueConfig) -> wbia_lightglue_model::LightGlue {
    let path = weights::find_weights(Some(&repo_root().join("weights")), weights::LIGHTGLUE_FILE)
        .expect("weights/aliked-lightglue.safetensors");
    wbia_lightglue_model::LightGlue::from_file(path, config, &Device::Cpu).expect("load LightGlue")
}
