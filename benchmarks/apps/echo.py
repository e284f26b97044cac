"""Raw ASGI echo: read the whole request body, send it back with content-length.

Correctness: POST / with N bytes -> 200, content-length N, identical body.
"""


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
        chunks = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            more_body = message.get("more_body", False)
        body = b"".join(chunks)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        })
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await handle_lifespan(receive, send)
