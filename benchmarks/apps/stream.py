"""Raw ASGI streamed response: 100 x 1 KiB body chunks sent with more_body=True
(no content-length, so HTTP/1.1 servers use chunked transfer encoding).

Correctness: GET / -> 200, body == EXPECTED_BODY (102400 bytes).
"""

CHUNKS = 100
CHUNK_SIZE = 1024
# Each chunk is distinct (its index in the first bytes) so the check catches reordering/loss.
CHUNK_LIST = [(b"%04d" % i) + b"x" * (CHUNK_SIZE - 5) + b"\n" for i in range(CHUNKS)]
EXPECTED_BODY = b"".join(CHUNK_LIST)
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/octet-stream")],
}
MESSAGES = [{"type": "http.response.body", "body": c, "more_body": True} for c in CHUNK_LIST]
END = {"type": "http.response.body", "body": b"", "more_body": False}


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
        for message in MESSAGES:
            await send(message)
        await send(END)
    elif scope["type"] == "lifespan":
        await handle_lifespan(receive, send)
