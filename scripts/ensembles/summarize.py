#!/usr/bin/env python3
"""Tables of `run_nyala.sh`'s results: per run CMC@1/5/10/20 and mAP with their 95% intervals
(bootstrap over queries, computed by `evaluate`) and time per pair; then, per split, each
ensemble against the plugin's single model (`*-n16-f32`, else `*-n16-bf16`) as paired
differences: the same resampled queries for both, 2,000 resamplings, 95% percentile interval.

Last, the fusion rule the train split chooses, by the rule fixed in scripts/ensembles/README.md:
among the ensembles whose CMC@1 is not below the single model's (n16 in bf16, the members'
precision), the highest mean of CMC@5 and CMC@10, ties broken by mAP.

    summarize.py OUT_DIR
"""
import json
import random
import sys
from pathlib import Path


def load(out):
    runs = {}
    for f in sorted(Path(out).glob("*.json")):
        if f.name.endswith(".config.json"):
            continue
        runs[f.stem] = json.loads(f.read_text())
    return runs


def hit_rate(first_hit, rank, sample):
    return sum(1 for q in sample if first_hit[q] is not None and first_hit[q] < rank) / len(sample)


def paired(a, b, rank, resamples=2000, seed=1):
    """(difference, low, high) of CMC@rank between runs a and b over the same queries."""
    n = len(a)
    rng = random.Random(seed)
    everyone = list(range(n))
    diffs = []
    for _ in range(resamples):
        s = [rng.randrange(n) for _ in range(n)]
        diffs.append(hit_rate(a, rank, s) - hit_rate(b, rank, s))
    diffs.sort()
    return (hit_rate(a, rank, everyone) - hit_rate(b, rank, everyone),
            diffs[int(0.025 * resamples)], diffs[min(int(0.975 * resamples), resamples - 1)])


def main():
    out = sys.argv[1]
    runs = load(out)
    print("| run | queries | CMC@1 | CMC@5 | CMC@10 | CMC@20 | mAP | ms/pair (matched here) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in runs.items():
        cells = [f"{v:.2f} ({lo:.2f}–{hi:.2f})"
                 for (_, v), (_, lo, hi) in zip(r["cmc"], r["cmc_interval"])]
        lo, hi = r["mean_average_precision_interval"]
        t = r["timing"]
        per_pair = f"{t['ms_per_pair']:.0f} ({t['matched']})" if t["matched"] else "from store"
        print(f"| {name} | {r['queries']} | " + " | ".join(cells)
              + f" | {r['mean_average_precision']:.2f} ({lo:.2f}–{hi:.2f}) | {per_pair} |")
    print()
    print("| ensemble vs plugin | ΔCMC@1 | ΔCMC@5 | ΔCMC@10 |")
    print("| --- | --- | --- | --- |")
    for split in ("train", "test"):
        base = runs.get(f"{split}-n16-f32") or runs.get(f"{split}-n16-bf16")
        base_name = f"{split}-n16-f32" if f"{split}-n16-f32" in runs else f"{split}-n16-bf16"
        if base is None:
            continue
        for name, r in runs.items():
            if not name.startswith(f"{split}-ens"):
                continue
            cells = []
            for rank in (1, 5, 10):
                d, lo, hi = paired(r["first_hit"], base["first_hit"], rank)
                cells.append(f"{d:+.2f} ({lo:+.2f} – {hi:+.2f})")
            print(f"| {name} − {base_name} | " + " | ".join(cells) + " |")
    print()
    print(f"chosen on train: {choose(runs) or 'nothing (no train runs)'}")


def cmc(run, rank):
    return dict((r, v) for r, v in run["cmc"])[rank]


def choose(runs):
    """The train split's choice; None without the runs it needs."""
    base = runs.get("train-n16-bf16")
    if base is None:
        return None
    eligible = [(name, r) for name, r in runs.items()
                if name.startswith("train-ens") and cmc(r, 1) >= cmc(base, 1)]
    if not eligible:
        return "none: every ensemble loses rank 1 to the single model"
    key = lambda nr: ((cmc(nr[1], 5) + cmc(nr[1], 10)) / 2, nr[1]["mean_average_precision"])
    return max(eligible, key=key)[0]


if __name__ == "__main__":
    main()
