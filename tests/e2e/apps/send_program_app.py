"""Runs a "program" of ASGI ``send()`` calls, sent as the request body, and records what each
call did, for ``test_send_sequences.py``.

``POST /run/<key>`` with a JSON list of steps: ``["send", value]`` calls ``send()`` with the
decoded value and records ``"ok"`` or ``"<ExceptionType>: <message>"``; ``["raise"]`` raises out
of the app; ``["return"]`` returns. For a WebSocket session, ``POST /prog/<key>`` stores the
program and the session at ``/ws/<key>`` runs it; there ``["receive"]`` records the message
received too. A value is a one-key object naming its Python type:
``{"b": hex}`` bytes, ``{"s": text}`` str, ``{"i": n}`` int, ``{"bool": 0|1}``, ``{"n": 0}`` None,
``{"l": [...]}`` list, ``{"t": [...]}`` tuple, ``{"d": {...}}`` dict. ``GET /result/<key>`` answers
the record as JSON once the program has ended ("done" is its last entry; null before), and
``GET /ping`` answers ``pong``.
"""

import json

RESULTS: dict[str, list[str]] = {}
PROGRAMS: dict[str, list] = {}


def decode(value):
    (kind, x), = value.items()
    if kind == "b":
        return bytes.fromhex(x)
    if kind in ("s", "i"):
        return x
    if kind == "bool":
        return bool(x)
    if kind == "n":
        return None
    if kind == "l":
        return [decode(e) for e in x]
    if kind == "t":
        return tuple(decode(e) for e in x)
    if kind == "d":
        return {k: decode(v) for k, v in x.items()}
    raise ValueError(f"unknown value kind {kind!r}")


async def _answer(send, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _received(message: dict) -> str:
    if message["type"] == "websocket.receive":
        return f"received {message.get('text')!r} {message.get('bytes')!r}"
    if message["type"] == "websocket.disconnect":
        return f"received disconnect {message.get('code')} {message.get('reason')!r}"
    return f"received {message['type']}"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if scope["type"] == "websocket":
        key = path[len("/ws/"):]
        await _run(PROGRAMS.pop(key), RESULTS.setdefault(key, []), receive, send)
        return
    if path == "/ping":
        await _answer(send, b"pong")
        return
    if path.startswith("/result/"):
        # null until the program has ended (its record's last entry is "done").
        key = path[len("/result/"):]
        done = RESULTS.get(key, [None])[-1] == "done"
        await _answer(send, json.dumps(RESULTS.pop(key) if done else None).encode(), b"application/json")
        return
    if path.startswith("/prog/"):
        PROGRAMS[path[len("/prog/"):]] = json.loads(await _read_body(receive))
        await _answer(send, b"stored")
        return
    program = json.loads(await _read_body(receive))
    await _run(program, RESULTS.setdefault(path[len("/run/"):], []), receive, send)


async def _run(program: list, record: list[str], receive, send) -> None:
    try:
        await _steps(program, record, receive, send)
    finally:
        record.append("done")


async def _steps(program: list, record: list[str], receive, send) -> None:
    for step in program:
        if step[0] == "raise":
            record.append("raise")
            raise RuntimeError("the program raises")
        if step[0] == "return":
            record.append("return")
            return
        try:
            if step[0] == "receive":
                record.append(_received(await receive()))
                continue
            await send(decode(step[1]))
            record.append("ok")
        except Exception as exc:  # noqa: BLE001 - what send() raised is the result
            record.append(f"{type(exc).__name__}: {exc}")
