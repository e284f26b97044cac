"""Raw ASGI hello world.

Correctness: GET / -> 200, body b"Hello, world!", content-type text/plain.
"""

BODY = b"Hello, world!"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", b"13"),
    ],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def handle_lifespan(receive, send):
    # Minimal, correct lifespan handling so every server starts cleanly with lifespan on/auto.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send(START)
        await send(RESPONSE)
    elif scope["type"] == "lifespan":
        await handle_lifespan(receive, send)
