#!/usr/bin/env python3
"""Markdown rows of BENCHMARKS.md from the rounds of scripts/bench.sh.

    python3 scripts/bench_table.py target/bench/round-1 target/bench/round-2 ...

Each directory holds reference.json (scripts/reference/bench_reference.py), ours.json and
optionally ours-bf16.json (`wbia-lightglue bench`). Times are the median over the rounds of each
round's median; ratios are ours / reference per round, given as min / median over the rounds.
"""
import json
import statistics
import sys
from pathlib import Path

rounds = []
for d in sys.argv[1:]:
    d = Path(d)
    r = {"ref": json.load(open(d / "reference.json")), "ours": json.load(open(d / "ours.json"))}
    if (d / "ours-bf16.json").exists():
        r["bf16"] = json.load(open(d / "ours-bf16.json"))
    if (d / "ours-bf16-avx512.json").exists():
        r["bf16_avx512"] = json.load(open(d / "ours-bf16-avx512.json"))
    rounds.append(r)


def med(values):
    return statistics.median(values)


def row(label, ours_src, ours_key, ref_key):
    pairs = [(r[ours_src][ours_key], r["ref"][ref_key]) for r in rounds
             if ours_src in r and ours_key in r[ours_src] and ref_key in r["ref"]]
    if not pairs:
        return None
    ratios = [o / f for o, f in pairs]
    return (f"| {label} | {med([o for o, _ in pairs]):.1f} | {med([f for _, f in pairs]):.1f} "
            f"| {min(ratios):.2f}× / {med(ratios):.2f}× |")


print(f"{len(rounds)} rounds; ratio = ours / reference, min / median over the rounds.")
print()
print("| measurement | wbia-lightglue | PyTorch reference | ratio |")
print("| --- | ---: | ---: | ---: |")
lines = [row("extraction, 512 px, 2048 kpts, f32 (ms/image)", "ours", "extract_ms", "extract_ms")]
for k in (2048, 512):
    for mode in ("adaptive", "full"):
        key = f"match_ms_{k}_{mode}"
        lines.append(row(f"matching, {k} kpts, {mode}, f32 vs f32 (ms/pair)", "ours", key, key))
for k in (2048, 512):
    for mode in ("adaptive", "full"):
        key = f"match_ms_{k}_{mode}"
        lines.append(row(f"matching, {k} kpts, {mode}, our bf16 vs its f32 (ms/pair)",
                         "bf16", key, key))
        lines.append(row(f"matching, {k} kpts, {mode}, our bf16 vs its bf16 autocast (ms/pair)",
                         "bf16", key, key + "_bf16"))
        lines.append(row(f"matching, {k} kpts, {mode}, our bf16 without AMX vs its f32 (ms/pair)",
                         "bf16_avx512", key, key))
for line in lines:
    if line:
        print(line)
for k in (2048, 512):
    for mode in ("adaptive", "full"):
        errors = {r["ref"].get(f"match_ms_{k}_{mode}_bf16_error") for r in rounds} - {None}
        for e in errors:
            print(f"| matching, {k} kpts, {mode}, reference bf16 autocast | — | fails: {e} | — |")
ref_1vn = [r["ref"].get("one_vs_n_pairs_per_s") for r in rounds]
ours_1vn = [r["ours"].get("one_vs_n_pairs_per_s") for r in rounds]
if None not in ref_1vn + ours_1vn and ref_1vn:
    n = rounds[0]["ours"]["one_vs_n_n"]
    ratios = [f / o for f, o in zip(ref_1vn, ours_1vn)]
    print(f"| 1-vs-{n}, 2048 kpts, sequential adaptive (pairs/s) | {med(ours_1vn):.2f} "
          f"| {med(ref_1vn):.2f} | {min(ratios):.2f}× / {med(ratios):.2f}× time |")
    full = [r["ours"].get("one_vs_n_full_pairs_per_s") for r in rounds]
    if None not in full:
        print(f"| 1-vs-{n}, 2048 kpts, sequential full depth (pairs/s) | {med(full):.2f} "
              f"| — | — |")
    batched = [r["ours"].get("one_vs_n_batched_pairs_per_s") for r in rounds]
    if None not in batched:
        bs = rounds[0]["ours"]["one_vs_n_batched_batch_size"]
        how = "padded" if rounds[0]["ours"].get("one_vs_n_batched_padded") else "as matched"
        print(f"| 1-vs-{n}, 2048 kpts, batched ({bs}/batch, full depth, {how}) (pairs/s) "
              f"| {med(batched):.2f} | — | — |")
print()
for name, src in (("wbia-lightglue f32", "ours"), ("wbia-lightglue bf16", "bf16"),
                  ("reference", "ref")):
    if src not in rounds[-1]:
        continue
    d = rounds[-1][src]
    peaks = {k: d[k] for k in d if k.startswith("peak_rss")}
    print(f"- peak RSS, {name} (last round): "
          + ", ".join(f"{k.removeprefix('peak_rss_mb_after_')} {v} MiB" for k, v in peaks.items()))
