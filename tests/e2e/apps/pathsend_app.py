"""File responses: Starlette's FileResponse (which uses http.response.pathsend when the server
advertises it, as cppuvicorn does) and raw pathsend cases. Files live in $PATHSEND_DIR."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

DIR = os.environ.get("PATHSEND_DIR", "/tmp")


async def file(request):
    return FileResponse(os.path.join(DIR, request.path_params["name"]))


starlette_app = Starlette(routes=[Route("/files/{name}", file, methods=["GET", "HEAD"])])


async def raw(scope, receive, send):
    """/chunked/NAME: pathsend without content-length (chunked); /wrong-length/NAME: announces
    one byte too many; /missing: a path that does not exist; /dir: a directory."""
    if scope["type"] != "http":
        return
    assert scope["extensions"]["http.response.pathsend"] == {}
    kind, _, name = scope["path"].strip("/").partition("/")
    path = os.path.join(DIR, name) if name else (DIR if kind == "dir" else os.path.join(DIR, "no-such-file"))
    headers = [(b"content-type", b"application/octet-stream")]
    if kind == "wrong-length":
        headers.append((b"content-length", str(os.path.getsize(path) + 1).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.pathsend", "path": path})
