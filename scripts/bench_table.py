#!/usr/bin/env python3
"""Turn the JSON of bench_reference.py and `wbia-lightglue bench` into Markdown rows."""
import json
import sys

ref = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))

rows = [("extraction, 512 px, 2048 kpts (ms/image)", "extract_ms")]
for k in (2048, 512):
    for mode in ("adaptive", "full"):
        rows.append((f"matching, {k} kpts, {mode} (ms/pair)", f"match_ms_{k}_{mode}"))

print("| measurement | wbia-lightglue | PyTorch reference | ratio |")
print("| --- | ---: | ---: | ---: |")
for label, key in rows:
    if key in ref and key in ours:
        print(f"| {label} | {ours[key]:.1f} | {ref[key]:.1f} | {ours[key] / ref[key]:.2f}× |")
if "one_vs_n_pairs_per_s" in ref and "one_vs_n_pairs_per_s" in ours:
    n = ours["one_vs_n_n"]
    r = ref["one_vs_n_pairs_per_s"]
    o = ours["one_vs_n_pairs_per_s"]
    print(f"| 1-vs-{n}, 2048 kpts, sequential adaptive (pairs/s) | {o:.2f} | {r:.2f} | {r / o:.2f}× time |")
    if "one_vs_n_batched_pairs_per_s" in ours:
        b = ours["one_vs_n_batched_pairs_per_s"]
        bs = ours["one_vs_n_batched_batch_size"]
        print(f"| 1-vs-{n}, 2048 kpts, batched ({bs}/batch, full depth) (pairs/s) | {b:.2f} | — | — |")
print()
for name, d in (("wbia-lightglue", ours), ("reference", ref)):
    peaks = {k: d[k] for k in d if k.startswith("peak_rss")}
    print(f"- peak RSS, {name}: " + ", ".join(f"{k.removeprefix('peak_rss_mb_after_')} {v} MiB" for k, v in peaks.items()))
