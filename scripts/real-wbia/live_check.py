"""Runs wbia-lightglue in front of the real WBIA and checks the differences issue 25 found.

    VENV/bin/python scripts/real-wbia/live_check.py DBDIR --bin target/debug/wbia-lightglue \
        [--port 5077] [--ours-port 5078] [--out results.json]

DBDIR is a database made by make_db.py; it is copied first and WBIA serves the copy (as
record.py does). The service runs with a data directory of its own (SQLite store) and a
configuration of 256 keypoints (quick; the checks are about the API, not the scores). Each
check asks WBIA and the service the same thing where both answer it, and compares; it prints
PASS or FAIL with what it saw, and exits 1 if any check failed.
"""
import argparse
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from record import (  # noqa: E402  (the recorder's WBIA process, client and callback server)
    REPO,
    UNKNOWN_UUID,
    CallbackServer,
    Wbia,
    WbiaProcess,
    fancy,
    log,
)

RESULTS = []


def check(name, ok, seen):
    RESULTS.append({"check": name, "pass": bool(ok), "seen": seen})
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {json.dumps(seen)[:400]}", flush=True)


def compact(v):
    return json.dumps(v, separators=(",", ":"))


class Ours:
    """The service as a process, on its own data and configuration directories."""

    def __init__(self, binary, port, wbia_port, work, config='{"max_num_keypoints": 256}',
                 extra=()):
        """`config`: the default configuration's JSON (`None`: the plugin's defaults)."""
        self.binary, self.port, self.wbia_port = binary, port, wbia_port
        self.extra = list(extra)
        self.data = work / "ours-data"
        self.config = work / "ours-config"
        self.config.mkdir(exist_ok=True)
        if config is not None:
            (self.config / "config.json").write_text(config)
        self.logs = work / "ours.log"
        self.proc = None
        self.client = Wbia(port)

    def start(self):
        cmd = [str(self.binary), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--wbia-url", f"http://127.0.0.1:{self.wbia_port}", "--data-dir", str(self.data),
               "--config-dir", str(self.config)] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=open(self.logs, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status, _ = self.client.json("GET", "/health/live", timeout=2)
                if status == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise SystemExit("the service did not start; see " + str(self.logs))

    def raw(self, *args, **kw):
        return self.client.raw(*args, **kw)

    def json(self, *args, **kw):
        return self.client.json(*args, **kw)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def content_type(headers):
    return dict((k.lower(), v) for k, v in headers).get("content-type", "")


def wait_job(client, jobid, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = client.json("GET", "/api/engine/job/status/", query={"jobid": jobid})
        status = (body.get("response") or {}).get("jobstatus")
        if status in ("completed", "exception"):
            return status
        time.sleep(1)
    return "timeout"


def run_checks(wbia, ours, manifest, cb):
    annots = manifest["annotations"]
    by_label = {a["label"]: a for a in annots}
    query = by_label["turtle_a1_whole"]
    gone = next(a for a in annots if a["label"] == "gone_image")
    turtles = [a for a in annots if a["species"] == query["species"] and a is not query]
    q = [fancy(query["annot_uuid"])]
    d = [fancy(a["annot_uuid"]) for a in turtles]
    eng = "/api/engine/query/graph/"
    lightglue = compact({"pipeline_root": "LightGlue"})

    # 8. JSON content type.
    status, headers, _, _ = ours.raw("GET", "/api/test/heartbeat/")
    check("JSON answers carry charset=utf-8", "charset=utf-8" in content_type(headers),
          content_type(headers))

    # 1. Start-time checks: the same request to both, the same answer.
    cases = {
        "600 unknown database UUID": {"query_annot_uuid_list": compact(q),
                                      "database_annot_uuid_list": compact(d + [fancy(UNKNOWN_UUID)])},
        "601 duplicate database UUIDs": {"query_annot_uuid_list": compact(q),
                                         "database_annot_uuid_list": compact(d + d[:1])},
        # As recorded (`engine_608_not_a_uuid`): a plain string that is no UUID among fancy
        # ones. (A fancy object holding a bad UUID makes WBIA give up on the whole list and
        # report each comma-separated piece of its text: not mimicked, docs/wbia-api.md.)
        "608 not a UUID": {"query_annot_uuid_list": compact(q),
                           "database_annot_uuid_list": compact(d + ["not-a-uuid"])},
    }
    for name, form in cases.items():
        form = dict(form, query_config_dict=lightglue)
        answers = [c.json("POST", eng, form=form) for c in (wbia, ours)]
        (ws, wb), (os_, ob) = answers
        same = (ws == os_ and wb["status"]["code"] == ob["status"]["code"]
                and wb["response"] == ob["response"])
        if name.startswith("601"):
            # WBIA fills qdup_pos_map from the database list too (docs/wbia-api.md); ours
            # from the query list: compare the database map.
            same = (ws == os_ and wb["response"]["ddup_pos_map"] == ob["response"]["ddup_pos_map"])
        check(name, same, {"wbia": [ws, wb["response"]], "ours": [os_, ob["response"]]})

    # 3. Chips WBIA cannot make: the query's fails with WBIA's reason, a database one is skipped.
    status, body = ours.json("POST", "/api/review/query/chip/best/", form={
        "query_annot_uuid_list": compact([fancy(gone["annot_uuid"])]),
        "database_annot_uuid_list": compact(q), "pipeline_root": "LightGlue"})
    check("a query chip WBIA cannot make is 502 with its reason",
          status == 502 and "does not exist" in body["status"]["message"],
          [status, body["status"]["message"][:200]])
    status, body = ours.json("POST", "/api/review/query/chip/best/", form={
        "query_annot_uuid_list": compact(q), "database_annot_uuid_list": compact(d),
        "pipeline_root": "LightGlue"})
    skipped = [s["dannot_uuid"]["__UUID__"] for s in body["response"].get("skipped", [])] \
        if status == 200 else None
    ranked = len(body["response"]["query_results"][0]["ranked"]) if status == 200 else None
    check("a database chip WBIA cannot make is skipped and named",
          status == 200 and skipped == [gone["annot_uuid"]] and ranked == len(d) - 1,
          {"status": status, "skipped": skipped, "ranked": ranked})

    # 2. The GET aid form's extern reference is one our thumbnail route renders.
    status, body = ours.json("GET", "/api/review/query/chip/best/", query={
        "aid": str(query["aid"]), "query_config_dict": lightglue})
    ext = body["response"]["extern"] if status == 200 else {}
    check("GET aid form answers", status == 200 and body["response"]["name"] is not None,
          body.get("response"))
    if ext.get("reference"):
        t_status, t_headers, t_body, _ = ours.raw("GET", "/api/query/graph/match/thumb/", query={
            "extern_reference": ext["reference"], "query_annot_uuid": ext["qannot_uuid"],
            "database_annot_uuid": ext["dannot_uuid"], "version": "heatmask"})
        check("its extern reference renders a thumbnail here",
              t_status == 200 and content_type(t_headers) == "image/jpeg",
              [t_status, content_type(t_headers), len(t_body)])
    else:
        check("its extern reference renders a thumbnail here", False, ext)

    # 4, 5, 7. A species-wide job with a detailed callback, beside a job of WBIA's own.
    w_status, w_body = wbia.json("POST", eng, form={
        "query_annot_uuid_list": compact(q), "database_annot_uuid_list": compact(d[:2]),
        "query_config_dict": compact({"pipeline_root": "vsmany"})})
    wbia_job = w_body.get("response")
    jobid = "live-check-species-wide"
    status, body = ours.json("POST", eng, form={
        "query_annot_uuid_list": compact(q), "query_config_dict": lightglue, "jobid": jobid,
        "callback_url": cb.url("/callback/ours"), "callback_detailed": "true"})
    check("a species-wide job starts", status == 200, body)
    ended = wait_job(ours, jobid)
    check("it completes", ended == "completed", ended)
    _, listed = ours.json("GET", "/api/engine/job/")
    check("the job list holds WBIA's own job too",
          wbia_job in listed["response"] and jobid in listed["response"],
          {"wbia_job": wbia_job, "listed": listed["response"]})
    status, result = ours.json("GET", "/api/engine/job/result/", query={"jobid": jobid})
    doc = result["response"]["json_result"]
    cm = doc["cm_dict"][query["annot_uuid"]]
    nid = {a["annot_uuid"]: a["nid"] for a in annots}
    want_names = [nid[u["__UUID__"]] for u in cm["dannot_uuid_list"]]
    check("qname is the query's name", cm["qname"] == query["name"], cm["qname"])
    check("name ids are WBIA's (name rowids; -aid unnamed)",
          cm["dname_uuid_list"] == want_names and cm["qname_uuid"] == query["nid"],
          {"dname_uuid_list": cm["dname_uuid_list"], "want": want_names,
           "qname_uuid": cm["qname_uuid"]})
    deadline = time.monotonic() + 30
    while not cb.for_path("/callback/ours") and time.monotonic() < deadline:
        time.sleep(0.5)
    got = cb.for_path("/callback/ours")
    fields = [k for k, _ in got[0]["form"]] if got else None
    check("the detailed callback has WBIA's fields", fields == ["jobid", "status", "json_result"],
          fields)

    # 6. A finished job is answered after a restart (SQLite store).
    ours.stop()
    ours.start()
    _, after = ours.json("GET", "/api/engine/job/status/", query={"jobid": jobid})
    _, result_after = ours.json("GET", "/api/engine/job/result/", query={"jobid": jobid})
    check("after a restart the job is still completed, with the same result",
          after["response"].get("jobstatus") == "completed"
          and result_after["response"]["json_result"] == doc,
          after["response"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dbdir", type=pathlib.Path)
    ap.add_argument("--bin", type=pathlib.Path, default=REPO / "target/debug/wbia-lightglue")
    ap.add_argument("--port", type=int, default=5077)
    ap.add_argument("--ours-port", type=int, default=5078)
    ap.add_argument("--out", type=pathlib.Path)
    args = ap.parse_args()

    src = args.dbdir.resolve()
    manifest = json.loads((src / "manifest.json").read_text())
    work = pathlib.Path(tempfile.mkdtemp(prefix="live-check-"))
    dbdir = work / src.name
    shutil.copytree(src, dbdir, symlinks=True)
    (work / "logs").mkdir()
    cb = CallbackServer()
    wbia_proc = WbiaProcess(dbdir, args.port, work / "logs")
    ours = Ours(args.bin.resolve(), args.ours_port, args.port, work)
    t0 = time.monotonic()
    try:
        wbia_proc.start()
        ours.start()
        run_checks(Wbia(args.port), ours, manifest, cb)
    finally:
        ours.stop()
        wbia_proc.stop()
        cb.close()
    seconds = round(time.monotonic() - t0)
    failed = [r for r in RESULTS if not r["pass"]]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed in {seconds} s")
    if args.out:
        args.out.write_text(json.dumps({"seconds": seconds, "checks": RESULTS}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
