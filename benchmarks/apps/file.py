"""Starlette FileResponse of a 256 KiB file: the file-serving path. A server that advertises
the ASGI "http.response.pathsend" extension (cppuvicorn, Granian) gets the path and sends the
file itself; elsewhere (Uvicorn, Hypercorn) Starlette reads it in a thread and streams it in
64 KiB body messages.

Correctness: GET / -> 200, content-length 262144, body == EXPECTED_BODY.
"""

import os
import tempfile

from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

SIZE = 256 * 1024
EXPECTED_BODY = bytes((i * 31 + 7) % 256 for i in range(SIZE))
PATH = os.path.join(tempfile.gettempdir(), f"cppuvicorn-bench-file-{SIZE}.bin")
if not os.path.exists(PATH) or os.path.getsize(PATH) != SIZE:
    tmp = f"{PATH}.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(EXPECTED_BODY)
    os.replace(tmp, PATH)


async def homepage(request):
    return FileResponse(PATH, media_type="application/octet-stream")


app = Starlette(routes=[Route("/", homepage)])
