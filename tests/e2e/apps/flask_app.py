"""A Flask (WSGI) application for ``--interface wsgi``."""

from __future__ import annotations

import hashlib
import time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)

# What /big's generator did, for the backpressure and disconnect tests (one process).
BIG = {"produced": 0, "closed": False}


@app.get("/")
def hello():
    return "Hello, World!"


@app.get("/json")
def json_view():
    return jsonify(message="hello", query=request.args.to_dict(flat=False), path=request.path,
                   script_root=request.script_root, url=request.url)


@app.post("/upload")
def upload():
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest(), content_type=request.content_type)


@app.post("/first-bytes")
def first_bytes():
    # Reads only the start of the body and answers at once.
    n = int(request.args.get("n", "5"))
    return jsonify(first=request.stream.read(n).decode("latin-1"))


@app.get("/stream")
def stream():
    n = int(request.args.get("n", "5"))

    def lines():
        for i in range(n):
            yield f"line {i}\n"

    return Response(lines(), mimetype="text/plain")


@app.get("/slow-stream")
def slow_stream():
    def chunks():
        yield "first\n"
        time.sleep(1.0)
        yield "second\n"

    return Response(chunks(), mimetype="text/plain")


@app.get("/big")
def big():
    count = int(request.args.get("chunks", "1000"))
    BIG.update(produced=0, closed=False)

    def chunks():
        try:
            for _ in range(count):
                BIG["produced"] += 1
                yield b"x" * 65536
        finally:
            BIG["closed"] = True

    return Response(chunks(), mimetype="application/octet-stream")


@app.get("/big/state")
def big_state():
    return jsonify(BIG)


@app.get("/error")
def error():
    raise ValueError("view exploded")
