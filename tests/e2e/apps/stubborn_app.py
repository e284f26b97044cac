"""An app that leaves background tasks behind; with ?stubborn=1 they swallow cancellation."""

import asyncio

_tasks = set()


async def _linger(stubborn: bool) -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not stubborn:
                raise


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    stubborn = b"stubborn=1" in scope["query_string"]
    for _ in range(3):
        task = asyncio.get_running_loop().create_task(_linger(stubborn))
        _tasks.add(task)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
