#!/usr/bin/env python3
"""A stand-in WBIA for trying the service without one: serves the turtle fixtures as
annotations (rowid lookup, names, chip bytes, heartbeat), with WBIA's envelope and UUID form.

    python3 scripts/fake_wbia.py --port 5001

Annotations (UUID -> file, name):
    00000000-0000-0000-0000-0000000000a1  turtles/turtle_a1.jpg  turtle_a
    00000000-0000-0000-0000-0000000000a2  turtles/turtle_a2.jpg  turtle_a
    00000000-0000-0000-0000-0000000000b3  turtles/turtle_b3.jpg  turtle_b
    00000000-0000-0000-0000-0000000000b4  turtles/turtle_b4.jpg  turtle_b
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
ANNOTS = {
    f"00000000-0000-0000-0000-0000000000{k}": (aid, f"turtles/turtle_{k}.jpg", name)
    for aid, k, name in [(1, "a1", "turtle_a"), (2, "a2", "turtle_a"), (3, "b3", "turtle_b"), (4, "b4", "turtle_b")]
}
BY_AID = {aid: path for aid, path, _ in ANNOTS.values()}


def envelope(response):
    return {"status": {"success": True, "code": 200, "message": "", "cache": -1}, "response": response}


class Handler(BaseHTTPRequestHandler):
    def send_json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        uuids = []
        if "annot_uuid_list" in query:
            uuids = [u["__UUID__"] if isinstance(u, dict) else u for u in json.loads(query["annot_uuid_list"][0])]
        if url.path == "/api/test/heartbeat/":
            return self.send_json(envelope(True))
        if url.path == "/api/annot/rowid/uuid/json/":
            return self.send_json(envelope([ANNOTS[u][0] if u in ANNOTS else None for u in uuids]))
        if url.path == "/api/annot/name/text/json/":
            return self.send_json(envelope([ANNOTS[u][2] if u in ANNOTS else None for u in uuids]))
        if url.path.startswith("/api/annot/src/"):
            aid = int(url.path.strip("/").split("/")[-1])
            if aid in BY_AID:
                body = (ROOT / BY_AID[aid]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_response(404)
        self.end_headers()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=5001)
    args = ap.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
