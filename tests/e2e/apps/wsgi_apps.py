"""Raw PEP 3333 applications, dispatched on PATH_INFO (``wsgi_apps:app``)."""

from __future__ import annotations

import json
import sys

CLOSED = {"count": 0}


def _json(start_response, data, status="200 OK"):
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def environ_app(environ, start_response):
    environ["wsgi.errors"].write("hello from wsgi.errors\nsecond line")
    environ["wsgi.errors"].flush()
    body = environ["wsgi.input"].read()
    data = {key: value for key, value in environ.items() if isinstance(value, (str, bool, int, tuple))}
    data["body"] = body.decode("latin-1")
    return _json(start_response, data)


def lines_app(environ, start_response):
    # readline() and iteration over wsgi.input
    stream = environ["wsgi.input"]
    first = stream.readline()
    limited = stream.readline(3)
    rest = list(stream)
    return _json(start_response, {"first": first.decode(), "limited": limited.decode(),
                                  "rest": [line.decode() for line in rest]})


def exc_info_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("X-Error", "yes")],
                       sys.exc_info())
    return [b"unavailable"]


def late_error_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first chunk\n"
    raise ValueError("failed halfway")


def write_app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written, ")
    return [b"then ", b"returned"]


def raising_app(environ, start_response):
    raise ValueError("no response at all")


def no_start_app(environ, start_response):
    return []


class _Closing:
    def __init__(self, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self):
        yield b"closing body"

    def close(self):
        CLOSED["count"] += 1


def closing_app(environ, start_response):
    return _Closing(start_response)


def closed_app(environ, start_response):
    return _json(start_response, CLOSED)


ROUTES = {
    "/environ": environ_app,
    "/lines": lines_app,
    "/exc-info": exc_info_app,
    "/late-error": late_error_app,
    "/write": write_app,
    "/raise": raising_app,
    "/no-start": no_start_app,
    "/closing": closing_app,
    "/closed": closed_app,
}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    handler = ROUTES.get(path) or (environ_app if path.startswith("/environ") else None)
    if handler is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    return handler(environ, start_response)
