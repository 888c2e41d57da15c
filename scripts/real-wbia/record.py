"""Records the real WBIA's answers to the routes wbia-lightglue reads, mimics or passes through.

    VENV/bin/python scripts/real-wbia/record.py DBDIR [--port 5077] [--out DIR]

DBDIR is a database made by make_db.py (it holds manifest.json). It is copied first (into a
temporary folder, under the same base name, so WBIA's database name stays the same), and the
copy is what WBIA serves: jobs, chip caches and logs never touch DBDIR, and every run starts
from the same state. Writes, by default into crates/server/tests/data/real-wbia/:

- transcripts.json: each request (method, path, query, form) with WBIA's HTTP status, headers
  (Content-Type first of all) and body (JSON parsed; images described by size, SHA-256,
  format, mode, pixel size and JPEG chroma subsampling, not stored), plus the callbacks WBIA
  sent to a small HTTP server this script runs on loopback;
- chips.json: for every annotation, SHA-256 of the chip's pixel array from
  `ibs.get_annot_chips` (in-process, after the server has stopped) and of the PNG file WBIA
  caches (`ibs.get_annot_chip_fpath(aid, ensure=True)`).

Paths of this machine in WBIA's answers are replaced by <DBDIR>, <VENV>, <PYTHON>, <TMP>.
WBIA runs as `python -m wbia --dbdir COPY --web --port PORT` with the venv's Python (the one
running this script); it listens on 127.0.0.1 only (install.sh patches it so).
"""
import argparse
import hashlib
import http.client
import http.server
import io
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "crates" / "server" / "tests" / "data" / "real-wbia"
FIXTURES = REPO / "tests" / "fixtures"
UNKNOWN_UUID = "00000000-0000-4000-8000-00000000dead"  # in no database
MAX_STR = 3000  # longer strings (tracebacks) keep their head and tail, saying what was cut
HEAD = 700
JOB_TIMEOUT = float(os.environ.get("REAL_WBIA_JOB_TIMEOUT", "900"))
START_TIMEOUT = float(os.environ.get("REAL_WBIA_START_TIMEOUT", "300"))


def log(*args):
    print("[record]", *args, file=sys.stderr, flush=True)


def compact(value):
    """JSON text as wbia-client and Wildbook send it (serde_json/JSONObject: no spaces)."""
    return json.dumps(value, separators=(",", ":"))


def fancy(u):
    return {"__UUID__": str(u)}


# ---------------------------------------------------------------------------------------------
# Redaction and size limits


class Redactor:
    def __init__(self, pairs):
        # Longest first, so a path inside another is replaced by the most specific name.
        self.pairs = sorted(((str(a), b) for a, b in pairs if a), key=lambda p: -len(p[0]))

    def text(self, s):
        for a, b in self.pairs:
            s = s.replace(a, b)
        return s

    def __call__(self, v):
        if isinstance(v, str):
            s = self.text(v)
            if len(s) > MAX_STR:
                tail = MAX_STR - HEAD
                s = (s[:HEAD] + f"…[record.py cut {len(s) - MAX_STR} characters here]…"
                     + s[-tail:])
            return s
        if isinstance(v, list):
            return [self(x) for x in v]
        if isinstance(v, dict):
            return {self.text(str(k)): self(x) for k, x in v.items()}
        return v


def nonfinite_safe(v):
    """NaN/±Infinity (WBIA writes them bare) as {"__nonfinite__": "..."} so the file stays JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return {"__nonfinite__": "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")}
    if isinstance(v, list):
        return [nonfinite_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: nonfinite_safe(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------
# Bodies


def describe_image(body):
    from PIL import Image, JpegImagePlugin

    out = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    try:
        im = Image.open(io.BytesIO(body))
        im.load()
    except Exception as ex:  # not an image after all
        out["decode_error"] = f"{type(ex).__name__}: {ex}"
        return out
    out.update({"format": im.format, "mode": im.mode, "size": list(im.size)})
    exif = im.getexif()
    out["exif_orientation"] = exif.get(0x0112)
    if im.format == "JPEG":
        sampling = JpegImagePlugin.get_sampling(im)
        out["jpeg_sampling"] = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(sampling, str(sampling))
        out["jpeg_progressive"] = bool(im.info.get("progressive") or im.info.get("progression"))
        q = getattr(im, "quantization", None) or {}
        out["jpeg_quant_tables"] = len(q)
        out["jpeg_quant_all_ones"] = bool(q) and all(all(x == 1 for x in t) for t in q.values())
    return out


def describe_body(content_type, body):
    ct = (content_type or "").lower()
    is_image = ct.startswith("image/") or body[:3] == b"\xff\xd8\xff" or body[:8] == b"\x89PNG\r\n\x1a\n"
    if is_image:
        return {"kind": "image", "image": describe_image(body)}
    text = body.decode("utf-8", errors="replace")
    try:
        flags = []

        def constant(name):
            flags.append(name)
            return float(name.replace("Infinity", "inf"))

        parsed = json.loads(text, parse_constant=constant)
        out = {"kind": "json", "json": nonfinite_safe(parsed)}
        if flags:
            out["nonfinite_tokens"] = sorted(set(flags))
        return out
    except ValueError:
        return {"kind": "text", "bytes": len(body), "text": text}


KEEP_HEADERS = {
    "content-type", "content-length", "mimetype", "access-control-allow-origin", "server",
    "vary", "cache-control", "content-disposition", "location", "retry-after", "etag",
    "last-modified", "expires",
}


def header_summary(headers):
    out = {}
    for k, v in headers:
        lk = k.lower()
        if lk == "set-cookie":  # values are session tokens and dates: record the names
            out.setdefault("set-cookie (names)", []).append(v.split("=", 1)[0])
        elif lk in KEEP_HEADERS:
            out[lk] = v
    return out


# ---------------------------------------------------------------------------------------------
# HTTP client


class Wbia:
    def __init__(self, port):
        self.port = port

    def raw(self, method, path, query=None, form=None, raw_query=None, body=None, headers=None,
            timeout=300):
        url = path
        if raw_query is not None:
            url += "?" + raw_query
        elif query:
            url += "?" + urllib.parse.urlencode(query)
        hdrs = dict(headers or {})
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            t0 = time.monotonic()
            conn.request(method, url, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.monotonic() - t0
            return resp.status, resp.getheaders(), data, elapsed
        finally:
            conn.close()

    def json(self, method, path, **kw):
        status, _, data, _ = self.raw(method, path, **kw)
        return status, json.loads(data.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------------------------------------
# Callback receiver


class CallbackServer:
    def __init__(self):
        self.received = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                parsed = urllib.parse.urlsplit(self.path)
                ctype = self.headers.get("Content-Type", "")
                form = None
                if "application/x-www-form-urlencoded" in ctype:
                    # Pairs, in order: a field may come more than once.
                    form = [list(p) for p in
                            urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)]
                with outer.lock:
                    outer.received.append({
                        "t": time.time(),
                        "method": self.command,
                        "path": parsed.path,
                        "query": [list(p) for p in urllib.parse.parse_qsl(
                            parsed.query, keep_blank_values=True)],
                        "headers": {k: v for k, v in self.headers.items()
                                    if k.lower() not in ("host", "date")},
                        "form": form,
                        "body_bytes": len(body),
                    })
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET = do_PUT = _handle  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def for_path(self, path):
        with self.lock:
            return [r for r in self.received if r["path"] == path]

    def close(self):
        self.httpd.shutdown()


# ---------------------------------------------------------------------------------------------
# The WBIA process


class WbiaProcess:
    def __init__(self, dbdir, port, logdir, extra_args=(), extra_env=None):
        """`extra_args` follow WBIA's own (`--lightglue`), `extra_env` is added to its
        environment."""
        self.dbdir, self.port, self.logdir = dbdir, port, logdir
        self.extra_args, self.extra_env = list(extra_args), dict(extra_env or {})
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        logf = open(self.logdir / f"wbia-{self.starts}.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        cmd = [sys.executable, "-m", "wbia", "--dbdir", str(self.dbdir), "--web",
               "--port", str(self.port)] + self.extra_args
        log("starting:", " ".join(cmd[1:]))
        t0 = time.monotonic()
        # Own process group: WBIA forks job-engine processes; stop() ends that group only.
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        client = Wbia(self.port)
        while True:
            if self.proc.poll() is not None:
                self.dump_log()
                raise SystemExit(f"WBIA exited with {self.proc.returncode} while starting")
            try:
                status, body = client.json("GET", "/api/test/heartbeat/", timeout=5)
                if status == 200 and body.get("response") is True:
                    break
            except (OSError, ValueError, http.client.HTTPException):
                pass
            if time.monotonic() - t0 > START_TIMEOUT:
                self.dump_log()
                self.stop()
                raise SystemExit(f"WBIA did not answer the heartbeat within {START_TIMEOUT} s")
            time.sleep(2)
        took = time.monotonic() - t0
        log(f"WBIA answers the heartbeat after {took:.1f} s")
        return took

    def children(self):
        """WBIA's child processes (its job engine): title and state, zombies included."""
        import psutil

        out = []
        for c in psutil.Process(self.proc.pid).children():
            try:
                out.append({"title": " ".join(c.cmdline()) or c.name(), "status": c.status()})
            except psutil.Error:
                pass
        return sorted(out, key=lambda c: (c["title"], c["status"]))

    def dump_log(self):
        path = self.logdir / f"wbia-{self.starts}.log"
        sys.stderr.write(path.read_text(errors="replace")[-4000:])

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                # The group's other members (job engine) may outlive the parent briefly.
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    try:
                        os.killpg(pgid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.5)
                else:
                    continue
                break
            except subprocess.TimeoutExpired:
                continue
        log("WBIA stopped")


# ---------------------------------------------------------------------------------------------
# Recording


class Recorder:
    def __init__(self, client, redact):
        self.client = client
        self.redact = redact
        self.entries = []
        self.names = set()

    def call(self, name, method, path, note=None, query=None, form=None, raw_query=None,
             body=None, headers=None, store=True):
        assert name not in self.names, name
        self.names.add(name)
        status, hdrs, data, elapsed = self.client.raw(method, path, query=query, form=form,
                                                      raw_query=raw_query, body=body,
                                                      headers=headers)
        hsum = header_summary(hdrs)
        request = {"method": method, "path": path}
        if query is not None:
            request["query"] = query
        if raw_query is not None:
            request["raw_query"] = raw_query
        if form is not None:
            request["form"] = form
            request["content_type"] = "application/x-www-form-urlencoded"
        if body is not None:
            request["body"] = body.decode("utf-8", errors="replace")
            request["content_type"] = (headers or {}).get("Content-Type")
        response = {"status": status, "content_type": hsum.get("content-type"),
                    "headers": hsum}
        response.update(describe_body(hsum.get("content-type"), data))
        entry = {"name": name, "request": request, "response": response}
        if note:
            entry["note"] = note
        entry = self.redact(entry)
        if store:
            self.entries.append(entry)
        log(f"{name}: {method} {path} -> {status} {hsum.get('content-type')} ({elapsed:.2f} s)")
        return status, response, entry


def record_http(rec, manifest, cb, proc, results):
    annots = manifest["annotations"]
    uuids = [a["annot_uuid"] for a in annots]
    by_label = {a["label"]: a for a in annots}
    gone = manifest["deleted_image_annotation"]
    named = by_label["turtle_a1_whole"]
    unnamed = by_label["zebra_01_whole"]
    all_fancy = [fancy(u) for u in uuids]
    mixed = [fancy(named["annot_uuid"]), fancy(UNKNOWN_UUID), fancy(unnamed["annot_uuid"])]

    # --- health and database identity
    rec.call("heartbeat_get", "GET", "/api/test/heartbeat/")
    rec.call("heartbeat_post", "POST", "/api/test/heartbeat/", form={})
    rec.call("version", "GET", "/api/version/")
    rec.call("core_db_name", "GET", "/api/core/db/name/")
    rec.call("core_db_uuid_init", "GET", "/api/core/db/uuid/init/")
    rec.call("core_db_numbers", "GET", "/api/core/db/numbers/")

    # --- annotation getters wbia-client calls (crates/wbia-client/src/lib.rs), fancy UUIDs
    #     in the query string as serde_json writes them, percent-encoded as reqwest does.
    getters = [
        ("annot_rowid", "/api/annot/rowid/uuid/json/"),
        ("annot_name_text", "/api/annot/name/text/json/"),
        ("annot_name_uuid", "/api/annot/name/uuid/json/"),
        ("annot_name_rowid", "/api/annot/name/rowid/json/"),
        ("annot_image_file_path", "/api/annot/image/file/path/json/"),
        ("annot_species", "/api/annot/species/json/"),
        ("annot_sex_text", "/api/annot/sex/text/json/"),
        ("annot_age_months_min", "/api/annot/age/months/min/json/"),
        ("annot_image_uuid", "/api/annot/image/uuid/json/"),
        ("annot_bbox", "/api/annot/bbox/json/"),
        ("annot_theta", "/api/annot/theta/json/"),
    ]
    for short, path in getters:
        rec.call(f"{short}_known", "GET", path, query={"annot_uuid_list": compact(all_fancy)},
                 note="every annotation of manifest.json, in its order")
        rec.call(f"{short}_unknown", "GET", path,
                 query={"annot_uuid_list": compact([fancy(UNKNOWN_UUID)])})
        rec.call(f"{short}_mixed", "GET", path, query={"annot_uuid_list": compact(mixed)},
                 note="named annotation, unknown UUID, unnamed annotation")
    rec.call("annot_rowid_plain_strings", "GET", "/api/annot/rowid/uuid/json/",
             query={"annot_uuid_list": compact([named["annot_uuid"], UNKNOWN_UUID])},
             note="plain-string UUIDs (wbia-client sends fancy ones)")
    rec.call("annot_name_text_plain_strings", "GET", "/api/annot/name/text/json/",
             query={"annot_uuid_list": compact([named["annot_uuid"], UNKNOWN_UUID])},
             note="plain-string UUIDs (wbia-client sends fancy ones)")
    rec.call("annot_rowid_empty_list", "GET", "/api/annot/rowid/uuid/json/",
             query={"annot_uuid_list": "[]"})
    rec.call("annot_rowid_wildbook_raw_query", "GET", "/api/annot/rowid/uuid/json/",
             raw_query="annot_uuid_list=" + compact([fancy(named["annot_uuid"])]),
             note="unescaped JSON in the query string, as Wildbook's GET helpers send it")
    rec.call("annot_rowid_single_fancy_not_list", "GET", "/api/annot/rowid/uuid/json/",
             query={"annot_uuid_list": compact(fancy(named["annot_uuid"]))},
             note="one fancy UUID, not in a list")
    rec.call("annot_all_uuids", "GET", "/api/annot/json/")
    rec.call("annot_uuid_by_aid", "GET", "/api/annot/uuid/",
             query={"aid_list": compact([named["aid"], unnamed["aid"], 9999])},
             note="aid 9999 does not exist")

    # --- malformed requests
    rec.call("malformed_bad_json_list", "GET", "/api/annot/rowid/uuid/json/",
             raw_query="annot_uuid_list=" + urllib.parse.quote('[{"__UUID__": "'),
             note="bad JSON in a list parameter")
    rec.call("malformed_bad_json_list_engine", "POST", "/api/engine/query/graph/",
             form={"query_annot_uuid_list": '[{"__UUID__": ',
                   "database_annot_uuid_list": compact([fancy(uuids[1])])},
             note="bad JSON in a list parameter of the engine start")
    rec.call("malformed_repeated_key", "GET", "/api/annot/rowid/uuid/json/",
             raw_query="annot_uuid_list=" + urllib.parse.quote(compact([fancy(uuids[0])]))
             + "&annot_uuid_list=" + urllib.parse.quote(compact([fancy(uuids[1])])),
             note="the same parameter twice")
    rec.call("malformed_unknown_parameter", "GET", "/api/annot/rowid/uuid/json/",
             query={"annot_uuid_list": compact([fancy(uuids[0])]), "bogus": "1"},
             note="a parameter the function does not take")
    rec.call("malformed_missing_parameter", "GET", "/api/annot/rowid/uuid/json/",
             note="annot_uuid_list missing")
    rec.call("malformed_fancy_not_a_uuid", "GET", "/api/annot/rowid/uuid/json/",
             query={"annot_uuid_list": compact([fancy("not-a-uuid")])},
             note='{"__UUID__": "not-a-uuid"}')
    rec.call("json_body_object_get_only_route", "POST", "/api/annot/rowid/uuid/json/",
             body=json.dumps({"annot_uuid_list": [fancy(named["annot_uuid"])]}).encode(),
             headers={"Content-Type": "application/json"},
             note="POST to a GET-only route")
    rec.call("json_body_object", "POST", "/api/engine/uuid/check/",
             body=json.dumps({"qannot_uuid_list": [fancy(named["annot_uuid"])],
                              "dannot_uuid_list": [fancy(UNKNOWN_UUID)]}).encode(),
             headers={"Content-Type": "application/json"},
             note="parameters in a JSON object body (the unknown UUID shows they were read)")
    rec.call("unknown_route", "GET", "/api/no/such/route/")

    # --- chips and images (routes: raw bytes on success)
    for a in annots:
        rec.call(f"annot_src_aid_{a['aid']}", "GET", f"/api/annot/src/{a['aid']}/",
                 note=f"{a['label']}: {a['note']}")
    rec.call("annot_src_unknown_aid", "GET", "/api/annot/src/9999/", note="no such aid")
    rec.call("annot_src_resize_w", "GET", f"/api/annot/src/{named['aid']}/",
             query={"resize_pix_w": "100"}, note="optional resize parameter")
    gids = sorted({a["gid"] for a in annots})
    rec.call("image_file_path", "GET", "/api/image/file/path/",
             query={"gid_list": compact(gids + [9999])}, note="gid 9999 does not exist")
    seen = set()
    for a in annots:
        if a["gid"] in seen:
            continue
        seen.add(a["gid"])
        rec.call(f"image_src_gid_{a['gid']}", "GET", f"/api/image/src/{a['gid']}/",
                 note=f"image of {a['label']} ({a['fixture']})")
    rec.call("image_src_unknown_gid", "GET", "/api/image/src/9999/", note="no such gid")
    image_uuids = []
    for a in annots:
        if a["image_uuid"] not in image_uuids:
            image_uuids.append(a["image_uuid"])
    rec.call("image_orientation_by_uuid", "GET", "/api/image/orientation/json/",
             query={"image_uuid_list": compact([fancy(u) for u in image_uuids])},
             note="every image of manifest.json, in the order of its annotations")
    rec.call("image_src_json_by_uuid", "GET",
             f"/api/image/src/json/{named['image_uuid']}/", note="image by UUID")

    # --- engine: start-time checks
    q = [fancy(named["annot_uuid"])]
    d = [fancy(u) for u in uuids if u not in (named["annot_uuid"], gone["annot_uuid"])]
    eng = "/api/engine/query/graph/"
    rec.call("engine_600_unknown_database_uuid", "POST", eng,
             form={"query_annot_uuid_list": compact(q),
                   "database_annot_uuid_list": compact(d[:2] + [fancy(UNKNOWN_UUID)])})
    rec.call("engine_600_unknown_query_uuid", "POST", eng,
             form={"query_annot_uuid_list": compact([fancy(UNKNOWN_UUID)]),
                   "database_annot_uuid_list": compact(d[:2])})
    rec.call("engine_601_duplicate_database_uuids", "POST", eng,
             form={"query_annot_uuid_list": compact(q),
                   "database_annot_uuid_list": compact([d[0], d[1], d[0]])})
    rec.call("engine_608_not_a_uuid", "POST", eng,
             form={"query_annot_uuid_list": compact(q),
                   "database_annot_uuid_list": compact([d[0], "not-a-uuid"])})
    rec.call("engine_608_plain_string_uuids", "POST", eng,
             form={"query_annot_uuid_list": compact([named["annot_uuid"]]),
                   "database_annot_uuid_list": compact([d[0]["__UUID__"]])},
             note="valid UUIDs as plain strings")
    rec.call("engine_609_database_only_query", "POST", eng,
             form={"query_annot_uuid_list": compact(q), "database_annot_uuid_list": compact(q)},
             note="the database is the query itself")
    rec.call("engine_two_query_uuids", "POST", eng,
             form={"query_annot_uuid_list": compact([q[0], d[0]]),
                   "database_annot_uuid_list": compact(d[1:3])})
    rec.call("engine_uuid_check_ok", "POST", "/api/engine/uuid/check/",
             form={"qannot_uuid_list": compact(q), "dannot_uuid_list": compact(d[:2])})
    rec.call("engine_uuid_check_600", "POST", "/api/engine/uuid/check/",
             form={"qannot_uuid_list": compact(q),
                   "dannot_uuid_list": compact([fancy(UNKNOWN_UUID)])})

    # --- engine: jobs (WBIA's own default pipeline; HotSpotter's C library is disabled)
    db3 = d[:3]
    jobs = {}

    def start(key, name, note, path=eng, **form):
        status, resp, _ = rec.call(name, "POST", path, form=form, note=note)
        ok = status == 200 and resp.get("json", {}).get("status", {}).get("success")
        jobs[key] = resp["json"]["response"] if ok else None

    start("plain", "engine_start_default_pipeline",
          "no query_config_dict, no jobid: WBIA picks the job id",
          query_annot_uuid_list=compact(q), database_annot_uuid_list=compact(db3))
    start("callback", "engine_start_with_callback",
          "pipeline_root vsmany, callback_url (POST, the default method), jobid given",
          query_annot_uuid_list=compact(q), database_annot_uuid_list=compact(db3),
          query_config_dict=compact({"pipeline_root": "vsmany"}),
          callback_url=cb.url("/callback/plain"), jobid=job_uuid("callback"))
    start("detailed", "engine_start_with_callback_detailed",
          "callback_detailed=true, lane fast (runs beside the others), jobid given",
          query_annot_uuid_list=compact(q), database_annot_uuid_list=compact(db3),
          callback_url=cb.url("/callback/detailed"), callback_detailed="true",
          jobid=job_uuid("detailed"), lane="fast")
    rec.call("engine_start_duplicate_jobid", "POST", eng,
             form={"query_annot_uuid_list": compact(q), "database_annot_uuid_list": compact(db3),
                   "jobid": job_uuid("callback")},
             note="a jobid that is already in use")
    rec.call("engine_job_list_after_start", "GET", "/api/engine/job/")
    if jobs["plain"]:
        rec.call("engine_job_status_just_started", "GET", "/api/engine/job/status/",
                 query={"jobid": jobs["plain"]})
        rec.call("engine_job_result_not_finished", "GET", "/api/engine/job/result/",
                 query={"jobid": jobs["plain"]})
    rec.call("engine_job_status_unknown_jobid", "GET", "/api/engine/job/status/",
             query={"jobid": UNKNOWN_UUID})
    rec.call("engine_job_result_unknown_jobid", "GET", "/api/engine/job/result/",
             query={"jobid": UNKNOWN_UUID})
    rec.call("engine_job_metadata_unknown_jobid", "GET", "/api/engine/job/metadata/",
             query={"jobid": UNKNOWN_UUID})
    rec.call("engine_job_list_after_unknown_jobid", "GET", "/api/engine/job/",
             note="after asking for an unknown jobid's status")

    ident = [k for k in ("plain", "callback", "detailed") if jobs.get(k)]
    sequences = {"before_restart": wait_jobs(rec.client, jobs, ident)}
    results["job_seconds"] = sequences["before_restart"].pop("_seconds")
    wait_callbacks(cb, ["/callback/plain", "/callback/detailed"])
    for k in ident:
        rec.call(f"engine_job_status_{k}_final", "GET", "/api/engine/job/status/",
                 query={"jobid": jobs[k]})
        rec.call(f"engine_job_result_{k}_final", "GET", "/api/engine/job/result/",
                 query={"jobid": jobs[k]})
    if jobs["plain"]:
        rec.call("engine_job_metadata_plain", "GET", "/api/engine/job/metadata/",
                 query={"jobid": jobs["plain"]})
        rec.call("engine_job_result_post_form", "POST", "/api/engine/job/result/",
                 form={"jobid": jobs["plain"]}, note="POST with a form")

    rec.call("engine_job_list_final", "GET", "/api/engine/job/")
    rec.call("engine_job_status_all_final", "GET", "/api/engine/job/status/",
             note="no jobid: every job's status")

    # --- restart: do jobs survive?
    n_callbacks_before = len(cb.received)
    results["restart_time"] = time.time()
    proc.stop()
    results["restart_seconds"] = round(proc.start(), 1)
    rec.call("after_restart_heartbeat", "GET", "/api/test/heartbeat/")
    rec.call("after_restart_job_list", "GET", "/api/engine/job/")
    for k, jid in jobs.items():
        if not jid:
            continue
        rec.call(f"after_restart_job_status_{k}", "GET", "/api/engine/job/status/",
                 query={"jobid": jid})
        rec.call(f"after_restart_job_result_{k}", "GET", "/api/engine/job/result/",
                 query={"jobid": jid})
    # Jobs that ended in "exception" are run again after a restart: wait for them again.
    sequences["after_restart"] = wait_jobs(rec.client, jobs, ident)
    results["job_seconds_after_restart"] = sequences["after_restart"].pop("_seconds")
    time.sleep(15)
    for k in ident:
        rec.call(f"after_restart_job_status_{k}_final", "GET", "/api/engine/job/status/",
                 query={"jobid": jobs[k]})
        rec.call(f"after_restart_job_result_{k}_final", "GET", "/api/engine/job/result/",
                 query={"jobid": jobs[k]})
    rec.call("after_restart_job_metadata_callback", "GET", "/api/engine/job/metadata/",
             query={"jobid": jobs["callback"]})
    results["callbacks_after_restart"] = len(cb.received) - n_callbacks_before
    results["callbacks_before_restart"] = n_callbacks_before

    # --- last, as it breaks the job engine: /api/engine/image/json/ queues the action
    #     'add_images_json', which WBIA 4.0.4 does not register on the controller; the engine
    #     process that takes the job dies on getattr(ibs, action) (outside its try block), and
    #     the job never ends. Recorded: the start, the statuses for a while, the engine's
    #     processes before and after.
    img = str(FIXTURES / "lightglue" / "sacre_coeur2.jpg")
    results["engine_processes_before_add_images"] = proc.children()
    start("add_images", "engine_add_images_start",
          "a local file (WBIA accepts paths); callback POST with callback_detailed=true",
          path="/api/engine/image/json/", image_uri_list=compact([img]),
          callback_url=cb.url("/callback/add-images"), callback_detailed="true",
          jobid=job_uuid("add_images"))
    if jobs.get("add_images"):
        seq = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 45:
            _, body = rec.client.json("GET", "/api/engine/job/status/",
                                      query={"jobid": jobs["add_images"]})
            js = body["response"].get("jobstatus")
            if not seq or seq[-1]["jobstatus"] != js:
                seq.append({"jobstatus": js, "seconds": round(time.monotonic() - t0)})
            time.sleep(1)
        sequences["add_images_first_45_s"] = seq
        rec.call("engine_add_images_status_after_45_s", "GET", "/api/engine/job/status/",
                 query={"jobid": jobs["add_images"]})
        rec.call("engine_add_images_result_after_45_s", "GET", "/api/engine/job/result/",
                 query={"jobid": jobs["add_images"]})
    results["engine_processes_after_add_images"] = proc.children()
    results["add_images_callbacks"] = len(cb.for_path("/callback/add-images"))
    return jobs, sequences


def job_uuid(label):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"real-wbia/record.py/{label}"))


def wait_jobs(client, jobs, keys):
    """Polls job statuses until every job of `keys` has ended; returns the statuses seen."""
    seq = {k: [] for k in keys}
    t0 = time.monotonic()
    pending = set(keys)
    while pending and time.monotonic() - t0 < JOB_TIMEOUT:
        for k in sorted(pending):
            _, body = client.json("GET", "/api/engine/job/status/", query={"jobid": jobs[k]})
            js = body["response"].get("jobstatus")
            if not seq[k] or seq[k][-1]["jobstatus"] != js:
                seq[k].append({"jobstatus": js, "seconds": round(time.monotonic() - t0)})
                log(f"job {k}: {js} after {time.monotonic() - t0:.0f} s")
            if js in ("completed", "exception", "corrupted", "suppressed"):
                pending.discard(k)
        time.sleep(1)
    if pending:
        log(f"jobs still running after {JOB_TIMEOUT} s: {sorted(pending)}")
        seq["_unfinished"] = sorted(pending)
    seq["_seconds"] = round(time.monotonic() - t0)
    return seq


def wait_callbacks(cb, paths, timeout=30):
    """Callbacks follow the status change: give them a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(cb.for_path(p) for p in paths):
        time.sleep(1)


def summarize_callbacks(cb, redact, restart_time):
    out = {}
    for r in sorted(cb.received, key=lambda r: r["t"]):
        r = dict(r)
        r["after_restart"] = r.pop("t") > restart_time
        for field in r.get("form") or []:
            if field[0] == "json_result":
                try:
                    r.setdefault("form_json_result_parsed", []).append(
                        nonfinite_safe(json.loads(field[1])))
                except ValueError:
                    pass
        key = r["path"].rsplit("/", 1)[-1]
        out.setdefault(key, []).append(r)
    return redact(out)


def record_chips(dbdir, manifest, redact):
    """In-process chips (WBIA's server must be stopped: the same SQLite files)."""
    import numpy as np
    import wbia

    ibs = wbia.opendb(dbdir=str(dbdir), web=False)
    chips = []
    from wbia.core_annots import ChipConfig

    for a in manifest["annotations"]:
        aid = a["aid"]
        row = {"label": a["label"], "aid": aid, "annot_uuid": a["annot_uuid"],
               "image_uuid": a["image_uuid"], "bbox": a["bbox"], "theta": a["theta"]}
        try:
            chip = ibs.get_annot_chips([aid])[0]
            arr = np.ascontiguousarray(chip)
            row["pixels"] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                             "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
                             "channel_order": "BGR (OpenCV), as get_annot_chips returns it"}
        except Exception as ex:
            row["pixels_error"] = f"{type(ex).__name__}: {ex}"
        try:
            fpath = ibs.get_annot_chip_fpath([aid], ensure=True)[0]
            if fpath is None:
                row["png_error"] = "get_annot_chip_fpath returned None"
            else:
                data = pathlib.Path(fpath).read_bytes()
                row["png"] = {"file": pathlib.Path(fpath).name, "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()}
                img = describe_image(data)
                row["png"].update({k: img.get(k) for k in ("format", "mode", "size")})
        except Exception as ex:
            row["png_error"] = f"{type(ex).__name__}: {ex}"
        chips.append(row)
    cfg = ChipConfig()
    config = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
              for k, v in cfg.parse_items()}
    return redact({
        "about": "chips of the real WBIA (wildbook-ia 4.0.4), computed in-process by "
                 "scripts/real-wbia/record.py after its HTTP recording",
        "chip_config_defaults": config,
        "chips": chips,
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dbdir", type=pathlib.Path)
    ap.add_argument("--port", type=int, default=5077)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--keep", action="store_true", help="keep the working copy and logs")
    args = ap.parse_args()

    src = args.dbdir.resolve()
    manifest = json.loads((src / "manifest.json").read_text())
    work = pathlib.Path(tempfile.mkdtemp(prefix="real-wbia-"))
    dbdir = work / src.name
    shutil.copytree(src, dbdir, symlinks=True)
    logdir = work / "logs"
    logdir.mkdir()
    log(f"working copy: {dbdir}")

    redact = Redactor([
        (dbdir, "<DBDIR>"), (src, "<DBDIR>"), (sys.prefix, "<VENV>"),
        (sys.base_prefix, "<PYTHON>"), (work, "<TMP>"), (tempfile.gettempdir(), "<TMP>"),
        (os.path.expanduser("~"), "<HOME>"), (REPO, "<REPO>"),
    ])
    cb = CallbackServer()
    proc = WbiaProcess(dbdir, args.port, logdir)
    results = {}
    t_all = time.monotonic()
    try:
        results["start_seconds"] = round(proc.start(), 1)
        rec = Recorder(Wbia(args.port), redact)
        jobs, sequences = record_http(rec, manifest, cb, proc, results)
    except BaseException:
        proc.stop()
        cb.close()
        log(f"failed; logs in {logdir}")
        raise
    proc.stop()
    cb.close()
    results["http_seconds"] = round(time.monotonic() - t_all)

    t_chips = time.monotonic()
    chips = record_chips(dbdir, manifest, redact)
    results["chips_seconds"] = round(time.monotonic() - t_chips)

    transcripts = {
        "about": "answers of the real WBIA (wildbook-ia 4.0.4 from PyPI, CPU, HotSpotter's C "
                 "library disabled) recorded by scripts/real-wbia/record.py; see "
                 "scripts/real-wbia/README.md",
        "wbia_version": manifest["wbia_version"],
        "manifest": {k: manifest[k] for k in ("annotations", "deleted_image_annotation",
                                               "names", "dbname", "db_init_uuid")},
        "unknown_uuid": UNKNOWN_UUID,
        "entries": rec.entries,
        "jobs": {"ids": jobs, "status_sequences": sequences,
                 **{k: results.get(k) for k in (
                     "callbacks_before_restart", "callbacks_after_restart",
                     "add_images_callbacks", "engine_processes_before_add_images",
                     "engine_processes_after_add_images")}},
        "callbacks": summarize_callbacks(cb, redact, results.get("restart_time", math.inf)),
        "timings_seconds": {k: results[k] for k in (
            "start_seconds", "restart_seconds", "job_seconds", "job_seconds_after_restart",
            "http_seconds", "chips_seconds") if k in results},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for fname, data in (("transcripts.json", transcripts), ("chips.json", chips)):
        text = json.dumps(redact(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for leak in (str(work), str(src), sys.prefix, os.path.expanduser("~") + "/"):
            if leak in text:
                raise SystemExit(f"{fname}: a local path is still in it: {leak}")
        (args.out / fname).write_text(text)
        log(f"wrote {args.out / fname} ({len(text)} bytes)")
    log("timings:", json.dumps(results))
    if args.keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
