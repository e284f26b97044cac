"""The bundled example: a small FastAPI app served by `cppuvicorn main:app --app-dir examples`."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield {"greeting": "Hello"}


app = FastAPI(title="cppuvicorn example", lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float


@app.get("/")
async def root() -> dict:
    return {"message": "Hello, world!", "server": "cppuvicorn"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict:
    return {"item_id": item_id, "q": q}


@app.post("/items")
async def create_item(item: Item, tasks: BackgroundTasks) -> Item:
    tasks.add_task(print, f"created {item.name}")
    return item


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks():
        for i in range(5):
            yield f"chunk {i}\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")
