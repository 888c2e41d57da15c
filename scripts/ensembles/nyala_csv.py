#!/usr/bin/env python3
"""Writes `wbia-lightglue evaluate` CSVs for a labelled set laid out as the Nyala set of
`tvanzyl/wildlife_reidentification` (`Nyala_Data_Zero/{train,test}/IDENTITY/N_{left,right}photo.jpg`).

Fetches nothing: give it a local copy. Per split and flank it keeps individuals with at least
two photos of that flank, at most `--per-identity` photos each, in a seeded order, until
`--photos` photos (never leaving an individual with one photo, so every query has a true
match to find). Columns: path (relative to the CSV's folder), identity, side; evaluate with
`--group-column side` so that left flanks are compared with left flanks only.

    nyala_csv.py NYALA_ROOT --split test --photos 50 --out NYALA_ROOT/test50.csv

`--exclude CSV` leaves out every individual listed in an earlier CSV (on either flank): a
fresh test subset, disjoint from one already looked at.
"""

import argparse
import csv
import os
import random
import re
import sys

PHOTO = re.compile(r"^(\d+)_(left|right)photo\.jpg$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder holding Nyala_Data_Zero/")
    ap.add_argument("--split", choices=["train", "test"], required=True)
    ap.add_argument("--photos", type=int, default=50, help="photos per flank")
    ap.add_argument("--per-identity", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude", help="a CSV written earlier: its individuals are left out")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    split_dir = os.path.join(args.root, "Nyala_Data_Zero", args.split)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    excluded = set()
    if args.exclude:
        with open(args.exclude, newline="") as f:
            excluded = {row["identity"] for row in csv.DictReader(f)}
    by_side = {"left": {}, "right": {}}
    for identity in sorted(os.listdir(split_dir)):
        folder = os.path.join(split_dir, identity)
        if not os.path.isdir(folder) or identity in excluded:
            continue
        for name in sorted(os.listdir(folder)):
            m = PHOTO.match(name)
            if m:
                path = os.path.relpath(os.path.join(folder, name), out_dir)
                by_side[m.group(2)].setdefault(identity, []).append(path)

    rows = []
    for side in ("left", "right"):
        rng = random.Random(f"{args.seed}/{args.split}/{side}")
        identities = [i for i, p in sorted(by_side[side].items()) if len(p) >= 2]
        rng.shuffle(identities)
        kept = 0
        for identity in identities:
            photos = sorted(by_side[side][identity])
            rng.shuffle(photos)
            take = min(len(photos), args.per_identity, args.photos - kept)
            if take < 2:
                break
            for path in sorted(photos[:take]):
                rows.append((path, identity, side))
            kept += take
        print(f"{args.split} {side}: {kept} photos of {len({r[1] for r in rows if r[2] == side})} "
              f"individuals", file=sys.stderr)

    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity", "side"])
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
