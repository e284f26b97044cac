"""A FastAPI application covering the features real users lean on."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from starlette.middleware.base import BaseHTTPMiddleware

BACKGROUND_DONE: list[str] = []


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield {"greeting": "hello from lifespan"}


app = FastAPI(lifespan=lifespan)


class TimingHeader(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        response.headers["x-middleware"] = "seen " + request.url.path
        return response


app.add_middleware(TimingHeader)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/")
async def root():
    return {"message": "Hello World"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.get("/sync/{name}")
def sync_endpoint(name: str):
    # A plain def: runs in the threadpool, not on the event loop thread.
    return {"name": name, "in_main_thread": threading.current_thread() is threading.main_thread()}


@app.post("/items", status_code=201)
async def create_item(item: Item):
    return {"created": item.model_dump(), "total": item.price * 2}


@app.post("/background")
async def background(tasks: BackgroundTasks, label: str = "job"):
    def record(value: str) -> None:
        time.sleep(0.05)
        BACKGROUND_DONE.append(value)

    tasks.add_task(record, label)
    return {"scheduled": label}


@app.get("/background")
async def background_done():
    return {"done": BACKGROUND_DONE}


@app.get("/stream")
async def stream(n: int = 5):
    async def gen():
        for i in range(n):
            yield f"line {i}\n"
            await asyncio.sleep(0)

    return StreamingResponse(gen(), media_type="text/plain")


@app.get("/state")
async def state(request: Request):
    return {"greeting": request.state.greeting}


@app.get("/raise")
async def raise_error():
    raise ValueError("endpoint exploded")


@app.get("/http-exception")
async def http_exception():
    raise HTTPException(status_code=418, detail="I'm a teapot", headers={"x-teapot": "yes"})


@app.get("/text", response_class=PlainTextResponse)
async def text():
    return "plain text"


@app.get("/request-info")
async def request_info(request: Request):
    return {
        "method": request.method,
        "url": str(request.url),
        "path_params": request.path_params,
        "query": dict(request.query_params),
        "client_host": request.client.host if request.client else None,
        "header_names": [k for k, _ in request.headers.items()],
        "root_path": request.scope.get("root_path"),
    }
