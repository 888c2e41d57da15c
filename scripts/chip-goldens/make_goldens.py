"""Records WBIA's own annotation chips as goldens for crates/model/tests/wbia_chip.rs.

    VENV/bin/python scripts/chip-goldens/make_goldens.py [DBDIR]

VENV: the real WBIA from scripts/real-wbia/install.sh (wildbook-ia 4.0.4, vtool 4.0.2,
opencv-python-headless 4.7.0.72). DBDIR (optional): a database built by
scripts/real-wbia/make_db.py; it is copied to a temporary folder and only the copy is opened
(WBIA rewrites files it touches). Writes crates/model/tests/data/wbia_chips.json and, for
database images that are not byte-identical to a repository fixture (WBIA rewrites rotated
and RGBA images at import), a copy under tests/fixtures/wbia_chips/.

Two kinds of case, both computed by WBIA's real code, not a re-implementation:

- "sweep": `wbia.core_annots.gen_chip_configure_and_compute`, the generator behind
  `ibs.get_annot_chips`, at the default ChipConfig, fed by a stand-in controller that names the
  fixture file and the stored orientation (0 or 1) of each image. Covers bboxes inside,
  touching and partly or wholly outside the image, thetas 0, ±0.25, ±π/2, π, tiny bboxes
  upscaled to 700 px and huge ones downscaled, every fixture of tests/fixtures/decoding.
- "db": `ibs.get_annot_chips(aids)` for every annotation of the copied database whose image
  file still exists.

For each case: the source file (relative to the repository root), stored orientation, bbox,
theta, chip size, the 2×3 image → chip affine WBIA built (repr of each float), SHA-256 of the
chip's RGB bytes and a few pixels. Cases where WBIA fails are recorded with "error".
"""
import hashlib
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
OUT = REPO / "crates" / "model" / "tests" / "data" / "wbia_chips.json"
DB_COPIES = FIXTURES / "wbia_chips"

PHOTOS = ["turtles/turtle_a1.jpg", "wbia/2014_000001.jpg", "wbia/2014_000003.jpg"]
DECODING = [
    "decoding/cmyk.jpg",
    "decoding/exif_orientation_1.jpg",
    "decoding/exif_orientation_3.jpg",
    "decoding/exif_orientation_6.jpg",
    "decoding/exif_orientation_6.png",
    "decoding/exif_orientation_8.jpg",
    "decoding/gray.jpg",
    "decoding/gray.png",
    "decoding/gray16.png",
    "decoding/gray_alpha.png",
    "decoding/palette.png",
    "decoding/progressive.jpg",
    "decoding/rgb16.png",
    "decoding/rgba.png",
    "decoding/subsampling_444.jpg",
]
THETAS = [0.0, 0.25, -0.25, math.pi / 2, -math.pi / 2, math.pi]


def photo_bboxes(w, h):
    """(label, bbox) for a camera-sized image."""
    return [
        ("whole", [0, 0, w, h]),
        ("inside", [w // 4, h // 4, w // 2, h // 3]),
        ("touch_br", [w // 2, h // 2, w - w // 2, h - h // 2]),
        ("out_tl", [-(w // 5), -(h // 6), w // 2, h // 2]),
        ("out_br", [2 * w // 3, h // 2, w // 2, h]),
        ("tiny", [w // 3, h // 3, 3, 2]),
        ("huge", [-w, -h, 3 * w, 3 * h]),
        ("keep700", [10, 10, 700, 480]),
        ("sliver", [0, h // 2, w, 2]),
        ("outside", [w + 10, h + 10, 40, 30]),
    ]


def sweep_cases(cv2):
    """(name, fixture, stored orientation, bbox, theta)."""
    cases = []
    for rel in PHOTOS:
        img = cv2.imread(str(FIXTURES / rel))
        h, w = img.shape[:2]
        for label, bbox in photo_bboxes(w, h):
            for theta in THETAS:
                # Every theta for the main shapes, two for the rest: keeps the file small.
                if label not in ("whole", "inside", "out_tl", "tiny") and theta not in (
                    0.0,
                    0.25,
                ):
                    continue
                if rel != PHOTOS[1] and label in ("keep700", "sliver") and theta != 0.0:
                    continue
                cases.append((f"{rel}:{label}:{theta:.4f}", rel, 0, bbox, theta))
    for rel in DECODING:
        img = cv2.imread(str(FIXTURES / rel))
        h, w = img.shape[:2]
        orients = [0, 1]
        for orient in orients:
            cases.append((f"{rel}:o{orient}:whole:0", rel, orient, [0, 0, w, h], 0.0))
            cases.append((f"{rel}:o{orient}:out:0.25", rel, orient, [-8, 5, w // 2, h], 0.25))
        cases.append((f"{rel}:o0:crop:pi/2", rel, 0, [w // 4, h // 5, w // 2, h // 2], math.pi / 2))
    # Stored orientations of databases older than WBIA's rewrite at import (OpenCV applies the
    # EXIF orientation, then vtool turns again), and a flip, which vtool ignores.
    for rel in ["turtles/turtle_a1.jpg", "decoding/exif_orientation_6.jpg"]:
        img = cv2.imread(str(FIXTURES / rel))
        h, w = img.shape[:2]
        for orient in [2, 3, 6, 8]:
            cases.append((f"{rel}:o{orient}:whole:0", rel, orient, [0, 0, w, h], 0.0))
            cases.append((f"{rel}:o{orient}:inside:0.25", rel, orient, [w // 4, h // 4, w // 2, h // 3], 0.25))
    # Degenerate bboxes. WBIA refuses a zero side, but makes a chip of the whole image's size
    # (cv2.warpAffine's answer to an empty dsize) for a negative side or a chip side that
    # rounds to 0. Ours refuses all three; the goldens mark them "degenerate".
    for label, bbox in [("zero_w", [10, 10, 0, 5]), ("neg_h", [10, 10, 5, -3]), ("flat", [0, 0, 2000, 1])]:
        cases.append((f"wbia/2014_000001.jpg:{label}:0", "wbia/2014_000001.jpg", 0, bbox, 0.0))
    return cases


class StandInController:
    """What gen_chip_configure_and_compute asks of `ibs`, for fixture files."""

    force_serial = True
    _parallel_chips = True

    def __init__(self, paths, orients):
        self.paths = paths
        self.orients = orients

    def get_image_paths(self, gids):
        return [self.paths[g] for g in gids]

    def get_image_orientation(self, gids):
        return [self.orients[g] for g in gids]


def record(chip_bgr, extra):
    rgb = chip_bgr[:, :, ::-1].copy() if chip_bgr.ndim == 3 else chip_bgr
    h, w = rgb.shape[:2]
    samples = []
    for y, x in [(0, 0), (h // 2, w // 2), (h - 1, w - 1), (h // 3, (2 * w) // 3)]:
        samples.append([x, y] + [int(v) for v in rgb[y, x]])
    extra.update(
        width=int(w),
        height=int(h),
        sha256=hashlib.sha256(rgb.tobytes()).hexdigest(),
        samples=samples,
    )
    return extra


def affine(m):
    return [repr(float(v)) for v in list(m[0]) + list(m[1])]


def main():
    import cv2
    import numpy as np

    os.environ.setdefault("UTOOL_NO_CNN", "True")
    import vtool
    import wbia
    from wbia import core_annots

    goldens = {
        "about": "chips of WBIA's default ChipConfig, recorded by scripts/chip-goldens/make_goldens.py",
        "wbia_version": wbia.__version__,
        "opencv_version": cv2.__version__,
        "numpy_version": np.__version__,
        "cases": [],
    }

    cases = sweep_cases(cv2)
    paths = [str(FIXTURES / c[1]) for c in cases]
    orients = [c[2] for c in cases]
    ibs = StandInController(paths, orients)
    config = core_annots.ChipConfig()
    for i, (name, rel, orient, bbox, theta) in enumerate(cases):
        entry = {
            "kind": "sweep",
            "name": name,
            "source": f"tests/fixtures/{rel}",
            "orientation": orient,
            "bbox": bbox,
            "theta": theta,
        }
        w_, h_ = bbox[2], bbox[3]
        if w_ <= 0 or h_ <= 0 or min(vtool.ScaleStrat.maxwh(700, (w_, h_))) <= 0:
            entry["degenerate"] = True
        try:
            [(chip, w, h, m)] = list(
                core_annots.gen_chip_configure_and_compute(
                    ibs, [i], [i], [tuple(bbox)], [theta], config
                )
            )
            entry["m"] = affine(m)
            goldens["cases"].append(record(chip, entry))
        except Exception as ex:  # WBIA refuses it: record why
            entry["error"] = f"{type(ex).__name__}: {ex}"[:200]
            goldens["cases"].append(entry)

    if len(sys.argv) > 1:
        goldens["cases"] += db_cases(pathlib.Path(sys.argv[1]).resolve())

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(goldens, indent=1) + "\n")
    ok = sum("sha256" in c for c in goldens["cases"])
    print(f"wrote {OUT.relative_to(REPO)}: {len(goldens['cases'])} cases, {ok} chips", file=sys.stderr)


def db_cases(dbdir):
    import wbia

    by_digest = {}
    for f in sorted(FIXTURES.rglob("*")):
        if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
            by_digest.setdefault(hashlib.sha256(f.read_bytes()).hexdigest(), f)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="chipdb-"))
    copy = tmp / dbdir.name
    shutil.copytree(dbdir, copy, symlinks=True)
    out = []
    try:
        ibs = wbia.opendb(dbdir=str(copy))
        for aid in ibs.get_valid_aids():
            gid = ibs.get_annot_gids(aid)
            gpath = pathlib.Path(ibs.get_image_paths(gid))
            entry = {
                "kind": "db",
                "name": f"db:aid{aid}",
                "annot_uuid": str(ibs.get_annot_uuids(aid)),
                "orientation": int(ibs.get_image_orientation(gid)),
                "bbox": [int(v) for v in ibs.get_annot_bboxes(aid)],
                "theta": float(ibs.get_annot_thetas(aid)),
            }
            if not gpath.exists():
                continue  # the annotation whose image make_db.py deletes: no chip
            data = gpath.read_bytes()
            src = by_digest.get(hashlib.sha256(data).hexdigest())
            if src is None:
                # WBIA's own rewrite of a fixture at import: keep that file as a fixture.
                DB_COPIES.mkdir(parents=True, exist_ok=True)
                src = DB_COPIES / gpath.name
                src.write_bytes(data)
            entry["source"] = str(src.relative_to(REPO))
            try:
                [chip] = ibs.get_annot_chips([aid])
                out.append(record(chip, entry))
            except Exception as ex:
                entry["error"] = f"{type(ex).__name__}: {ex}"[:200]
                out.append(entry)
        ibs.close() if hasattr(ibs, "close") else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
