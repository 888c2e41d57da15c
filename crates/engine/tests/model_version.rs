//! Feature and score keys carry the digest of the weights that made them, per ALIKED variant:
//! new weights for one variant must never meet that variant's old rows, and must not
//! invalidate another variant's.

use std::path::{Path, PathBuf};
use wbia_lightglue_engine::{Engine, EngineOptions};
use wbia_lightglue_model::AlikedConfig;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn versions(weights: &Path) -> std::collections::BTreeMap<&'static str, String> {
    let engine = Engine::start(EngineOptions {
        weights_dir: Some(weights.to_path_buf()),
        ..EngineOptions::default()
    })
    .unwrap();
    engine.runtime.model_versions.clone()
}

/// A copy of the repo's weights where `aliked-n32`'s file changes by one byte: n32's keys
/// change, every other variant's stay (n16's are those of every earlier release).
#[test]
fn changing_one_variants_weights_changes_only_its_keys() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-model-version-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<&str> = AlikedConfig::ALL
        .iter()
        .map(|v| v.weights_file)
        .chain([wbia_lightglue_model::weights::LIGHTGLUE_FILE])
        .collect();
    for file in &files {
        std::fs::copy(repo().join("weights").join(file), dir.as_path().join(file)).unwrap();
    }
    let before = versions(dir.as_path());
    assert_eq!(
        before,
        versions(&repo().join("weights")),
        "same bytes, same keys"
    );
    let n32 = dir.as_path().join(AlikedConfig::n32().weights_file);
    let mut bytes = std::fs::read(&n32).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&n32, bytes).unwrap();
    let after = versions(dir.as_path());
    assert_eq!(before.len(), AlikedConfig::ALL.len());
    for variant in AlikedConfig::ALL {
        let (b, a) = (&before[variant.name], &after[variant.name]);
        if variant.name == "aliked-n32" {
            assert_ne!(b, a, "new n32 weights must give new keys");
        } else {
            assert_eq!(b, a, "{} must keep its keys", variant.name);
        }
    }
    // Variants never share a digest: their features are never taken for each other's.
    let distinct: std::collections::BTreeSet<&String> = after.values().collect();
    assert_eq!(distinct.len(), after.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
