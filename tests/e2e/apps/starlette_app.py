"""A Starlette application: routing, JSON bodies, cookies, redirects, files and errors."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static.txt")


async def homepage(request: Request):
    return PlainTextResponse("Hello, Starlette!")


async def user(request: Request):
    return JSONResponse({"user": request.path_params["name"], "query": dict(request.query_params)})


async def json_body(request: Request):
    data = await request.json()
    return JSONResponse({"received": data, "keys": sorted(data)})


async def cookies(request: Request):
    response = JSONResponse({"seen": request.cookies})
    response.set_cookie("session", "abc123", httponly=True)
    response.set_cookie("theme", "dark", max_age=60, path="/")
    return response


async def redirect(request: Request):
    return RedirectResponse("/", status_code=307)


async def static_file(request: Request):
    return FileResponse(STATIC, media_type="text/plain")


async def stream(request: Request):
    async def body():
        for word in (b"alpha ", b"beta ", b"gamma"):
            yield word

    return StreamingResponse(body(), media_type="text/plain")


async def empty(request: Request):
    return Response(status_code=204)


async def teapot(request: Request):
    raise HTTPException(status_code=418, detail="short and stout")


async def crash(request: Request):
    raise KeyError("crash")


async def echo(request: Request):
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))


async def mounted(request: Request):
    return JSONResponse({"root_path": request.scope["root_path"], "path": request.scope["path"]})


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/users/{name}", user),
        Route("/json", json_body, methods=["POST"]),
        Route("/cookies", cookies),
        Route("/redirect", redirect),
        Route("/file", static_file),
        Route("/stream", stream),
        Route("/empty", empty),
        Route("/teapot", teapot),
        Route("/crash", crash),
        Route("/echo", echo, methods=["POST", "PUT"]),
        Mount("/sub", routes=[Route("/where", mounted)]),
    ]
)
