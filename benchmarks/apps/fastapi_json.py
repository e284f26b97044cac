"""FastAPI GET returning a small JSON dict.

Correctness: GET / -> 200, application/json, body parses to EXPECTED.
"""
from fastapi import FastAPI

EXPECTED = {"message": "Hello, world!", "id": 1, "ok": True, "items": [1, 2, 3]}

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/")
async def root():
    return {"message": "Hello, world!", "id": 1, "ok": True, "items": [1, 2, 3]}
