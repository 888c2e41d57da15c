"""The pinned reference over a labelled CSV, as `wbia-lightglue evaluate` runs it: every
comparable pair (same `--group-column` value) scored once at the plugin's settings
(aliked-n16, 2,048 keypoints, threshold 0, long edge 512; LightGlue depth 0.95, width 0.99,
filter 0.1; images read as the plugin reads them), each image extracted once.

    python scripts/reference/evaluate_reference.py CSV --group-column side --out OUT.json

Writes every pair's score (keyed by the two paths as written in the CSV) and the CPU and
wall seconds of scoring (decoding, extraction, matching; models loaded before), for comparisons of scores and of cost with `evaluate`
on the same CSV (scripts/ensembles/README.md).
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_goldens import extract, load_image, make_extractor, make_matcher, match  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--group-column")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    base = Path(args.csv).resolve().parent
    rows = list(csv.DictReader(open(args.csv)))
    extractor = make_extractor(2048)
    matcher = make_matcher(0.95, 0.99)
    # Timed from here, models loaded, as `evaluate`'s time per pair: decoding, extraction
    # and matching.
    cpu0, wall0 = time.process_time(), time.perf_counter()
    features = [extract(extractor, load_image(base / r["path"])[1], 512) for r in rows]
    group = (lambda r: r[args.group_column]) if args.group_column else (lambda r: None)
    scores = {}
    for i, a in enumerate(rows):
        for j in range(i + 1, len(rows)):
            b = rows[j]
            if group(a) == group(b):
                s = float(match(matcher, features[i], features[j])["score"][0])
                scores[f"{a['path']} {b['path']}"] = s
    result = {
        "pairs": len(scores),
        "images": len(rows),
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.perf_counter() - wall0,
        "threads": args.threads,
        "scores": scores,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{len(scores)} pairs of {len(rows)} images: {result['cpu_seconds']:.1f} CPU s, "
          f"{result['wall_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
