//! Reading and writing features as safetensors files.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use wbia_lightglue_model::Features;

/// Writes `keypoints` [N,2], `keypoint_scores` [N], `descriptors` [N,128] and `image_size`
/// [2] (width, height), all f32.
pub fn save_features(features: &Features, path: &Path) -> Result<()> {
    let n = features.len();
    let dev = Device::Cpu;
    let flat: Vec<f32> = features.keypoints.iter().flatten().copied().collect();
    let tensors: HashMap<String, Tensor> = [
        ("keypoints", Tensor::from_vec(flat, (n, 2), &dev)?),
        (
            "keypoint_scores",
            Tensor::from_slice(&features.scores, n, &dev)?,
        ),
        (
            "descriptors",
            Tensor::from_slice(&features.descriptors, (n, features.descriptor_dim()), &dev)?,
        ),
        (
            "image_size",
            Tensor::from_slice(&features.image_size, 2, &dev)?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}
