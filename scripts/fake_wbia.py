#!/usr/bin/env python3
"""A stand-in WBIA for trying the service without one: serves the turtle fixtures as
annotations (rowid lookup, names, chip bytes, heartbeat), with WBIA's envelope and UUID form.

    python3 scripts/fake_wbia.py --port 5001

Annotations (UUID -> file, name):
    00000000-0000-0000-0000-0000000000a1  turtles/turtle_a1.jpg  turtle_a
    00000000-0000-0000-0000-0000000000a2  turtles/turtle_a2.jpg  turtle_a
    00000000-0000-0000-0000-0000000000b3  turtles/turtle_b3.jpg  turtle_b
    00000000-0000-0000-0000-0000000000b4  turtles/turtle_b4.jpg  turtle_b

With --species N (needs numpy and opencv, as the reference environment has), N more
annotations of species "zebra_plains" follow, 00000000-0000-0000-0001-<aid as 12 hex digits>
with aids 1001.., each a distinct 700 x 525 crop of a fixture photo (WBIA's default chip size),
sent as JPEG q=100 like WBIA's /api/annot/src/; two annotations per name. Chip identities
(image UUID, bbox, theta), species and the annotation list are served too.
"""
import argparse
import json
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
ANNOTS = {
    f"00000000-0000-0000-0000-0000000000{k}": (aid, f"turtles/turtle_{k}.jpg", name)
    for aid, k, name in [(1, "a1", "turtle_a"), (2, "a2", "turtle_a"), (3, "b3", "turtle_b"), (4, "b4", "turtle_b")]
}
BY_AID = {aid: path for aid, path, _ in ANNOTS.values()}
SPECIES = {}  # aid -> JPEG bytes of the generated annotations
CHIP_REQUESTS = [0]


def species_uuid(aid):
    return f"00000000-0000-0000-0001-{aid:012x}"


def make_species(n):
    import cv2

    sources = [cv2.imread(str(ROOT / f)) for f in ("lightglue/sacre_coeur1.jpg", "lightglue/DSC_0410.JPG",
                                                   "wbia/2014_000001.jpg", "opencv/graf1.png")]
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        x, y = (i * 13) % (w - 700 + 1), (i * 7) % (h - 525 + 1)
        ok, jpeg = cv2.imencode(".jpg", img[y:y + 525, x:x + 700], [cv2.IMWRITE_JPEG_QUALITY, 100])
        SPECIES[1001 + i] = jpeg.tobytes()
        ANNOTS[species_uuid(1001 + i)] = (1001 + i, None, f"zebra_{i // 2}")


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
        if url.path == "/api/annot/name/uuid/json/":
            names = [ANNOTS[u][2] if u in ANNOTS else None for u in uuids]
            return self.send_json(envelope([
                {"__UUID__": "00000000-0000-0000-0002-%012x" % zlib.crc32(n.encode())} if n else None
                for n in names]))
        if url.path == "/api/annot/json/":
            return self.send_json(envelope([{"__UUID__": u} for u in ANNOTS]))
        if url.path == "/api/annot/species/json/":
            return self.send_json(envelope([
                ("zebra_plains" if ANNOTS[u][0] > 1000 else "turtle_green") if u in ANNOTS else None
                for u in uuids]))
        if url.path == "/api/annot/image/uuid/json/":
            return self.send_json(envelope([
                {"__UUID__": "00000000-0000-0000-0003-%012x" % ANNOTS[u][0]} if u in ANNOTS else None
                for u in uuids]))
        if url.path == "/api/annot/bbox/json/":
            return self.send_json(envelope([[0, 0, 700, 525] if u in ANNOTS else None for u in uuids]))
        if url.path == "/api/annot/theta/json/":
            return self.send_json(envelope([0.0 if u in ANNOTS else None for u in uuids]))
        if url.path == "/api/fake/chip_requests/":
            return self.send_json(envelope(CHIP_REQUESTS[0]))
        if url.path.startswith("/api/annot/src/"):
            aid = int(url.path.strip("/").split("/")[-1])
            if aid in BY_AID or aid in SPECIES:
                CHIP_REQUESTS[0] += 1
                body = SPECIES[aid] if aid in SPECIES else (ROOT / BY_AID[aid]).read_bytes()
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
    ap.add_argument("--species", type=int, default=0, help="generated annotations to add")
    args = ap.parse_args()
    if args.species:
        make_species(args.species)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
