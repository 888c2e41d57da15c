"""The service's pair scores against the real WBIA, and the chips to score them with elsewhere.

    VENV/bin/python scripts/real-wbia/chip_scores.py DBDIR --out OUT \
        [--bin target/release/wbia-lightglue] [--port 5077] [--ours-port 5078]

Serves a copy of DBDIR (made by make_db.py) with the real WBIA and runs the service in front
of it at the plugin's defaults (aliked-n16, 2,048 keypoints, long edge 512), twice: with
`--chips auto` (chips made from WBIA's image files, which this machine can read) and with
`--chips download` (WBIA's JPEG re-encodes). Each annotation is queried with `chip/best`
against the other annotations of its species. Then it saves, for the reference to score
(`scripts/reference/wbia_chip_scores.py OUT`):

- OUT/jpeg/<aid>.jpg: what WBIA's `/api/annot/src/<aid>/` sent;
- OUT/lossless/<aid>.png: `ibs.get_annot_chips([aid])` in-process (what the plugin scores),
  written losslessly;
- OUT/ours.json: the annotations and every pair's score in both modes.
"""
import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from live_check import Ours  # noqa: E402
from record import REPO, Wbia, WbiaProcess, log  # noqa: E402


def compact(v):
    return json.dumps(v, separators=(",", ":"))


def scores(ours, annots):
    """Every ordered pair within a species: chip/best of each query against the others."""
    out = {}
    t0 = time.monotonic()
    for q in annots:
        others = [a for a in annots if a["species"] == q["species"] and a is not q]
        if not others:
            continue
        status, body = ours.json("POST", "/api/review/query/chip/best/", form={
            "query_annot_uuid_list": compact([q["annot_uuid"]]),
            "database_annot_uuid_list": compact([a["annot_uuid"] for a in others]),
            "pipeline_root": "LightGlue"}, timeout=1800)
        if status != 200:
            raise SystemExit(f"chip/best for aid {q['aid']}: {status} {body}")
        for r in body["response"]["query_results"][0]["ranked"]:
            d = r["dannot_uuid"]["__UUID__"]
            out[f"{q['annot_uuid']} {d}"] = r["score"]
    return out, round(time.monotonic() - t0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dbdir", type=pathlib.Path)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--bin", type=pathlib.Path, default=REPO / "target/release/wbia-lightglue")
    ap.add_argument("--port", type=int, default=5077)
    ap.add_argument("--ours-port", type=int, default=5078)
    args = ap.parse_args()

    src = args.dbdir.resolve()
    manifest = json.loads((src / "manifest.json").read_text())
    gone = manifest["deleted_image_annotation"]
    gone_aid = gone["aid"] if isinstance(gone, dict) else gone
    annots = [a for a in manifest["annotations"] if a["aid"] != gone_aid]
    work = pathlib.Path(tempfile.mkdtemp(prefix="chip-scores-"))
    dbdir = work / src.name
    shutil.copytree(src, dbdir, symlinks=True)
    (work / "logs").mkdir()
    for sub in ("jpeg", "lossless"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    result = {"annotations": annots, "modes": {}}
    wbia_proc = WbiaProcess(dbdir, args.port, work / "logs")
    try:
        wbia_proc.start()
        wbia = Wbia(args.port)
        for a in annots:
            status, headers, body, _ = wbia.raw("GET", f"/api/annot/src/{a['aid']}/")
            if status != 200 or not body.startswith(b"\xff\xd8"):
                raise SystemExit(f"no JPEG chip for aid {a['aid']}: {status}")
            (args.out / "jpeg" / f"{a['aid']}.jpg").write_bytes(body)
        for mode in ("auto", "download"):
            run = work / mode
            run.mkdir()
            ours = Ours(args.bin.resolve(), args.ours_port, args.port, run, config=None,
                        extra=["--chips", mode])
            ours.start()
            try:
                pairs, seconds = scores(ours, annots)
                _, info = ours.json("GET", "/info")
            finally:
                ours.stop()
            result["modes"][mode] = {"pairs": pairs, "seconds": seconds, "chips": info["chips"]}
            log(f"{mode}: {len(pairs)} pair scores in {seconds} s; chips {info['chips']}")
    finally:
        wbia_proc.stop()

    import cv2
    import wbia as wbia_pkg

    ibs = wbia_pkg.opendb(dbdir=str(dbdir), web=False)
    for a in annots:
        chip = ibs.get_annot_chips([a["aid"]])[0]
        cv2.imwrite(str(args.out / "lossless" / f"{a['aid']}.png"), chip)
    (args.out / "ours.json").write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
