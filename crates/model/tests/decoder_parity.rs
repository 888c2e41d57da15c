//! Our decoders give exactly the pixels OpenCV gives the reference (the SHA-256 of the decoded
//! RGB bytes is recorded in `tests/goldens/manifest.json`).

mod common;

use common::*;
use sha2::{Digest, Sha256};

#[test]
fn decoded_pixels_equal_opencv() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/goldens/manifest.json")).unwrap(),
    )
    .unwrap();
    let images = manifest["images"].as_object().unwrap();
    assert!(images.len() >= 10);
    for (name, info) in images {
        let path = repo_root().join(info["fixture"].as_str().unwrap());
        let image = wbia_lightglue_model::load_image(&path).unwrap();
        let hw = info["height_width"].as_array().unwrap();
        assert_eq!(
            (image.height as u64, image.width as u64),
            (hw[0].as_u64().unwrap(), hw[1].as_u64().unwrap()),
            "{name}"
        );
        let digest = format!("{:x}", Sha256::digest(&image.data));
        assert_eq!(
            digest,
            info["decoded_rgb_sha256"].as_str().unwrap(),
            "{name}: pixels differ"
        );
    }
}
