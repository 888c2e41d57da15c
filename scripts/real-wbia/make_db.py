"""Builds a small WBIA database from the repository's fixture images.

    VENV/bin/python scripts/real-wbia/make_db.py DBDIR

Run with the venv's Python from install.sh. DBDIR must not hold a database yet (delete it to
rebuild). Writes DBDIR/manifest.json: every annotation (its UUID, rowid, image, bbox, theta,
species, name, what it exercises) and the annotation whose image file is deleted afterwards,
so that WBIA cannot make its chip.

Annotation and name UUIDs are fixed (uuid5 of a label), image UUIDs are WBIA's own (derived
from the pixels), so the database and the transcripts recorded from it are the same on every
run.
"""
import json
import math
import os
import pathlib
import shutil
import sys
import uuid

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
NAMESPACE = uuid.UUID("6c0d9a4e-5b7e-4f5e-9f3a-2d1c0b9a8e7f")  # this script's own namespace

# (label, fixture image, bbox or None for the whole image, theta, species, name or None,
#  what it exercises). Bboxes are [x, y, w, h] in the image as WBIA stores it (EXIF applied).
ANNOTS = [
    ("turtle_a1_whole", "turtles/turtle_a1.jpg", None, 0.0, "turtle_sea", "turtle_a",
     "whole image, theta 0"),
    ("turtle_a2_crop_cw", "turtles/turtle_a2.jpg", [60, 80, 380, 420], 0.25, "turtle_sea",
     "turtle_a", "cropped, theta 0.25"),
    ("turtle_b3_crop_ccw", "turtles/turtle_b3.jpg", [40, 30, 480, 440], -0.25, "turtle_sea",
     "turtle_b", "cropped, theta -0.25"),
    ("turtle_b4_outside", "turtles/turtle_b4.jpg", [300, 250, 500, 400], 0.0, "turtle_sea",
     "turtle_b", "partly outside the image (right and bottom)"),
    ("zebra_01_quarter", "wbia/2014_000001.jpg", [200, 150, 400, 300], math.pi / 2,
     "zebra_plains", "zebra_1", "cropped, theta pi/2"),
    ("zebra_01_whole", "wbia/2014_000001.jpg", None, 0.0, "zebra_plains", None,
     "whole image, second annotation of the same image, unnamed"),
    ("zebra_03_half", "wbia/2014_000003.jpg", [100, 200, 350, 500], math.pi, "zebra_plains",
     "zebra_1", "cropped, theta pi"),
    ("zebra_03_topleft_out", "wbia/2014_000003.jpg", [-60, -40, 300, 260], 0.0,
     "zebra_plains", None, "partly outside the image (negative x and y), unnamed"),
    ("exif6_whole", "decoding/exif_orientation_6.jpg", None, 0.0, "zebra_plains", "zebra_2",
     "whole image of a JPEG with EXIF orientation 6 (stored 96x64, shown 64x96)"),
    ("exif3_crop", "decoding/exif_orientation_3.jpg", [10, 8, 60, 40], 0.0, "zebra_plains",
     None, "crop of a JPEG with EXIF orientation 3, unnamed"),
    ("gray_whole", "decoding/gray.jpg", None, 0.0, "zebra_plains", "zebra_2",
     "whole image of a greyscale JPEG"),
    ("rgba_whole", "decoding/rgba.png", None, 0.0, "zebra_plains", None,
     "whole image of an RGBA PNG, unnamed"),
    ("cmyk_whole", "decoding/cmyk.jpg", None, 0.0, "zebra_plains", "zebra_3",
     "whole image of a CMYK JPEG"),
    ("gone_image", "square/turtle_a1_square.jpg", None, 0.0, "turtle_sea", "turtle_a",
     "its image file is deleted from _ibsdb/images after the database is built"),
]
DELETED = "gone_image"


def uuid_for(kind, label):
    return uuid.uuid5(NAMESPACE, f"{kind}:{label}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_db.py DBDIR")
    dbdir = pathlib.Path(sys.argv[1]).resolve()
    if (dbdir / "_ibsdb").exists():
        sys.exit(f"{dbdir} already holds a WBIA database; delete it to rebuild")
    dbdir.mkdir(parents=True, exist_ok=True)

    import wbia

    ibs = wbia.opendb(dbdir=str(dbdir), allow_newdir=True)

    fixture_list = sorted({a[1] for a in ANNOTS})
    # WBIA was seen to rewrite some of the files it is given (the EXIF-oriented and RGBA
    # fixtures of tests/fixtures/decoding/ changed after a run): it gets copies.
    originals = dbdir.parent / (dbdir.name + "-originals")
    originals.mkdir(exist_ok=True)
    copies = []
    for f in fixture_list:
        copy = originals / f.replace("/", "__")
        shutil.copyfile(FIXTURES / f, copy)
        copies.append(str(copy))
    gid_list = ibs.add_images(copies)
    if None in gid_list:
        bad = [f for f, g in zip(fixture_list, gid_list) if g is None]
        sys.exit(f"WBIA refused images: {bad}")
    gid_of = dict(zip(fixture_list, gid_list))

    names = sorted({a[5] for a in ANNOTS if a[5]})
    nid_list = ibs.add_names(names, name_uuid_list=[uuid_for("name", n) for n in names])
    nid_of = dict(zip(names, nid_list))

    gids = [gid_of[a[1]] for a in ANNOTS]
    sizes = ibs.get_image_sizes(gids)
    bboxes = [a[2] if a[2] is not None else [0, 0, w, h] for a, (w, h) in zip(ANNOTS, sizes)]
    aid_list = ibs.add_annots(
        gids,
        bbox_list=bboxes,
        theta_list=[a[3] for a in ANNOTS],
        species_list=[a[4] for a in ANNOTS],
        nid_list=[nid_of[a[5]] if a[5] else 0 for a in ANNOTS],
        annot_uuid_list=[uuid_for("annot", a[0]) for a in ANNOTS],
    )
    if None in aid_list or len(set(aid_list)) != len(aid_list):
        sys.exit(f"WBIA did not add every annotation: {aid_list}")

    # What WBIA stored, read back (not what was asked for).
    annots = []
    for (label, fixture, _, _, _, _, note), aid in zip(ANNOTS, aid_list):
        gid = ibs.get_annot_gids(aid)
        annots.append({
            "label": label,
            "note": note,
            "fixture": fixture,
            "aid": int(aid),
            "annot_uuid": str(ibs.get_annot_uuids(aid)),
            "gid": int(gid),
            "image_uuid": str(ibs.get_image_uuids(gid)),
            "image_size": [int(v) for v in ibs.get_image_sizes(gid)],
            "image_orientation": ibs.get_image_orientation(gid),
            "image_file": os.path.basename(ibs.get_image_paths(gid)),
            "bbox": [int(v) for v in ibs.get_annot_bboxes(aid)],
            "theta": float(ibs.get_annot_thetas(aid)),
            "species": ibs.get_annot_species_texts(aid),
            "name": ibs.get_annot_name_texts(aid),
            "name_uuid": (str(ibs.get_name_uuids(ibs.get_annot_nids(aid)))
                          if ibs.get_annot_nids(aid) > 0 else None),
            "nid": int(ibs.get_annot_nids(aid)),
        })

    # Delete the image file of one annotation (no other annotation uses that image).
    gone = next(a for a in annots if a["label"] == DELETED)
    assert sum(a["gid"] == gone["gid"] for a in annots) == 1
    gone_path = pathlib.Path(ibs.get_image_paths(gone["gid"]))
    gone_path.unlink()

    manifest = {
        "about": "WBIA database built by scripts/real-wbia/make_db.py from tests/fixtures",
        "wbia_version": wbia.__version__,
        "dbname": ibs.get_dbname(),
        "db_init_uuid": str(ibs.get_db_init_uuid()),
        "annotations": annots,
        "deleted_image_annotation": {
            "label": gone["label"],
            "aid": gone["aid"],
            "annot_uuid": gone["annot_uuid"],
            "gid": gone["gid"],
            "deleted_file": f"_ibsdb/images/{gone_path.name}",
        },
        "names": {n: {"nid": int(nid_of[n]), "name_uuid": str(uuid_for("name", n))}
                  for n in names},
    }
    out = dbdir / "manifest.json"
    out.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
