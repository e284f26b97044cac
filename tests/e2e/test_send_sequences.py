"""Random sequences of ASGI ``send()`` calls, run on cppuvicorn and on Uvicorn.

A seeded generator makes programs (``apps/send_program_app.py`` runs them): response starts
with assorted statuses and headers (a content-length right, wrong, padded, repeated or not a
number; transfer-encoding; connection; header names and values Uvicorn refuses), bodies in one
or several parts, messages of the wrong type, sends after the response, an exception or a
return part way. Each program runs in a request with a second request pipelined behind it.

For every program, cppuvicorn must
- answer within a few seconds: close the connection, or answer the pipelined request;
- put valid HTTP/1.1 on the wire, read by h11 as a client would: no 1xx, at most one response
  for the request (complete, unless the connection then closes), and ``pong`` for the
  pipelined request when the connection stays open;
- raise only the exceptions an app can expect from a bad message (``SystemError`` would be a
  C-API mistake in the bridge).

Where Uvicorn's exchange is valid HTTP too, the two must agree on the response (status,
headers but date and server, body, whether it completed), on whether the connection stayed
open, and on what every ``send()`` raised; the deliberate differences are in ``_comparable``
and ``_deliberately_different``.
Programs with values of the wrong Python type are checked against the rules above only: there
Uvicorn fails with whatever its code happens to raise (``KeyError: '200'``).
"""

from __future__ import annotations

import json
import random
import socket
import time
import uuid

import h11

APP = "send_program_app:app"
SEED = 20261205
PROGRAMS = 400  # of which about a fifth have values of the wrong type
HANG_TIMEOUT = 5.0
EXPECTED_EXCEPTIONS = ("RuntimeError", "TypeError", "ValueError", "KeyError")


# ----------------------------------------------------------------------------- programs


def _b(data: bytes) -> dict:
    return {"b": data.hex()}


HEADER_SETS = [
    [], [(b"content-type", b"text/plain")], [(b"content-length", b"5")], [(b"content-length", b"3")],
    [(b"Content-Length", b"5")], [(b"content-length", b"abc")], [(b"content-length", b"-1")],
    [(b"content-length", b" 5\t")], [(b"content-length", b"5"), (b"content-length", b"5")],
    [(b"transfer-encoding", b"chunked")], [(b"connection", b"close")],
    [(b"connection", b"keep-alive")], [(b"X-Upper", b"Value")], [(b"date", b"x")], [(b"server", b"mine")],
    [(b"x", b"")], [(b"", b"v")], [(b"x y", b"v")], [(b"x", b"a\tb")], [(b"x", b"\x80\xff")],
    [(b"x:y", b"v")], [(b"x", b"a\rb")],
]
STATUSES = [200, 200, 200, 404, 204, 304, 205, 302, 418, 500, 599, 100, 103, 199]
BODIES = [b"", b"hello", b"hello", b"abc"]


def _headers(rng: random.Random, loose: bool) -> dict | None:
    if loose and rng.random() < 0.4:
        return rng.choice([None, {"n": 0}, {"s": "x"}, {"d": {}}, {"l": [{"i": 5}]},
                           {"l": [{"t": [_b(b"a")]}]}, {"l": [{"t": [_b(b"a"), _b(b"b"), _b(b"c")]}]},
                           {"l": [{"t": [{"s": "k"}, _b(b"v")]}]}, {"l": [{"t": [_b(b"k"), {"i": 1}]}]}])
    pairs = rng.choice(HEADER_SETS)
    if rng.random() < 0.4:
        pairs = pairs + rng.choice(HEADER_SETS)
    pair_kind = rng.choice(["t", "l"])
    return {rng.choice(["l", "t"]): [{pair_kind: [_b(k), _b(v)]} for k, v in pairs]}


def _start(rng: random.Random, loose: bool) -> dict:
    message = {"type": {"s": "http.response.start"}}
    if loose and rng.random() < 0.5:
        status = rng.choice([None, {"n": 0}, {"s": "200"}, {"bool": 1}, {"i": 99}, {"i": 600}, {"i": -1}])
    else:
        status = {"i": rng.choice(STATUSES)}
    if status is not None:
        message["status"] = status
    headers = _headers(rng, loose)
    if headers is not None:
        message["headers"] = headers
    return {"d": message}


def _body(rng: random.Random, loose: bool) -> dict:
    message = {"type": {"s": "http.response.body"}}
    body = rng.choice([None, {"s": "text"}, {"i": 5}, {"n": 0}]) if loose and rng.random() < 0.5 else (
        rng.choice([None, _b(rng.choice(BODIES))]))
    if body is not None:
        message["body"] = body
    more = rng.choice([None, {"s": "yes"}, {"i": 1}]) if loose and rng.random() < 0.3 else (
        rng.choice([None, None, {"bool": 1}, {"bool": 1}, {"bool": 0}]))
    if more is not None:
        message["more_body"] = more
    return {"d": message}


def _other(rng: random.Random, loose: bool) -> dict:
    choices = [{"d": {"type": {"s": "http.response.bogus"}}}, {"d": {"type": {"s": "websocket.accept"}}}]
    if loose:
        choices += [{"d": {}}, {"d": {"type": {"i": 1}}}, {"l": []}, {"n": 0}, {"s": "http.response.start"}]
    return rng.choice(choices)


def make_programs(seed: int = SEED, count: int = PROGRAMS) -> list[tuple[str, bool, list]]:
    rng = random.Random(seed)
    programs = []
    for _ in range(count):
        loose = rng.random() < 0.2
        steps = []
        for i in range(rng.randint(1, 5)):
            r = rng.random()
            if (i == 0 and r < 0.7) or 0.3 < r < 0.55:
                steps.append(["send", _start(rng, loose)])
            elif r < 0.88:
                steps.append(["send", _body(rng, loose)])
            elif r < 0.96:
                steps.append(["send", _other(rng, loose)])
            else:
                steps.append([rng.choice(["raise", "return"])])
        programs.append((rng.choice(["GET", "GET", "HEAD"]), loose, steps))
    return programs


# ----------------------------------------------------------------------------- one exchange


def exchange(srv, method: str, program: list) -> tuple[bytes, str, list]:
    """Runs `program` in a request with GET /ping pipelined behind it. Returns the bytes the
    server sent, how the exchange ended ("closed", "open": pong arrived, or "hang") and what
    each send() did."""
    key = uuid.uuid4().hex
    body = json.dumps(program).encode()
    request = (f"{method} /run/{key} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall(request + body + b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        data, end = b"", "hang"
        deadline = time.monotonic() + HANG_TIMEOUT
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                end = "closed"
                break
            data += chunk
            if data.endswith(b"\r\n\r\npong"):
                end = "open"
                break
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall(f"GET /result/{key} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        result = b""
        while chunk := sock.recv(65536):
            result += chunk
    return data, end, json.loads(result.split(b"\r\n\r\n", 1)[1])


class Invalid(Exception):
    """The bytes on the wire are not what a correct HTTP/1.1 server may send."""


def read_wire(data: bytes, end: str, method: str) -> tuple:
    """What a client makes of the exchange: (status, headers, body, complete) of the response
    to the program's request, or None if there was none. Raises Invalid."""
    if end == "hang":
        raise Invalid("neither closed nor answered the pipelined request")
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/run", headers=[("host", "x"), ("content-length", "0")]))
    client.send(h11.EndOfMessage())
    if data:
        client.receive_data(data)  # (b"" would mean the end of the stream)
    head, body, complete = None, b"", False
    try:
        while not complete:
            event = client.next_event()
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.InformationalResponse):
                raise Invalid(f"a {event.status_code} response")
            if isinstance(event, h11.Response):
                headers = tuple((k, v) for k, v in event.headers if k not in (b"date", b"server"))
                head = (event.status_code, headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                complete = True
        if end == "closed":
            if client.trailing_data[0]:
                raise Invalid(f"bytes after the response: {client.trailing_data[0]!r}")
            return None if head is None else (*head, body, complete)
        if not complete:
            raise Invalid("the connection stayed open after an incomplete response")
        client.start_next_cycle()
        client.send(h11.Request(method="GET", target="/ping", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        ping = []
        while (event := client.next_event()) is not h11.NEED_DATA:
            ping.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
    except h11.ProtocolError as exc:
        raise Invalid(f"h11: {exc}") from None
    if [type(e) for e in ping] != [h11.Response, h11.Data, h11.EndOfMessage] or ping[1].data != b"pong":
        # Uvicorn, after an app error it let pass, answers the pipelined request in place of
        # this one: the client reads "pong" as this request's answer.
        raise Invalid(f"the pipelined request's answer is missing or wrong: {ping!r}")
    return (*head, body, complete)


# ----------------------------------------------------------------------------- comparison

REFUSED_HEAD = ("RuntimeError: Invalid HTTP header name.", "RuntimeError: Invalid HTTP header value.")


def _comparable(record: list[str]) -> list[str]:
    """What of a send() record both servers must agree on."""
    out = []
    for entry in record:
        # A content-length that is not a number: Uvicorn's int() raises ValueError, cppuvicorn
        # refuses the value as it refuses any other bad header value.
        if entry.startswith("ValueError: invalid literal for int() with base 10"):
            entry = "RuntimeError: Invalid HTTP header value."
        out.append(entry)
        if entry in REFUSED_HEAD:
            # The response counts as started (as Uvicorn). cppuvicorn then closes the
            # connection: no valid response can follow, so later sends are no-ops, where
            # Uvicorn goes on and fails on them.
            break
    return out


def _starts(program: list):
    for step in program:
        message = step[1].get("d", {}) if step[0] == "send" else {}
        if message.get("type") == {"s": "http.response.start"}:
            status = message.get("status", {}).get("i")
            headers = message.get("headers", {})
            pairs = next(iter(headers.values()), []) if headers else []
            yield status, [tuple(bytes.fromhex(part["b"]) for part in next(iter(p.values()))) for p in pairs]


def _int_or_none(value: bytes) -> int | None:
    try:
        return int(value.decode())
    except ValueError:
        return None


def _deliberately_different(program: list) -> str | None:
    """Why the two servers are not expected to agree on `program`, or None."""
    for status, headers in _starts(program):
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        if status is not None and status < 200:
            return ("a 1xx status: Uvicorn sends it as the response; cppuvicorn refuses it "
                    "before the response starts")
        if any(not value.strip(b" \t").isdigit() and _int_or_none(value) is not None for value in lengths):
            return ("a content-length such as -1: Uvicorn's int() takes it and writes it; cppuvicorn "
                    "refuses it, as clients would")
        if status in (204, 304) and lengths:
            return ("a 204 / 304 with a length: Uvicorn writes the app's body after the head, or "
                    "raises 'shorter than Content-Length' if there is none; cppuvicorn sends no "
                    "body (RFC 9110 §8.6) and takes either")
    return None


def _describe(method: str, program: list, **outcomes) -> str:
    lines = [f"{method} {json.dumps(program)}"]
    lines += [f"  {name}: {value!r}" for name, value in outcomes.items()]
    return "\n".join(lines)


def test_send_sequences_are_answered_validly_and_as_uvicorn(cppuvicorn_servers):
    ours_srv = cppuvicorn_servers.get(APP)
    theirs_srv = cppuvicorn_servers.oracle.get(APP)
    failures, compared = [], 0
    for method, loose, program in make_programs():
        data, end, record = exchange(ours_srv, method, program)
        try:
            ours = read_wire(data, end, method)
        except Invalid as exc:
            failures.append(_describe(method, program, invalid=str(exc), wire=data, record=record))
            continue
        unexpected = [e for e in record if e not in ("ok", "raise", "return")
                      and not e.startswith(tuple(f"{name}: " for name in EXPECTED_EXCEPTIONS))]
        if unexpected:
            failures.append(_describe(method, program, unexpected=unexpected))
            continue
        if loose or _deliberately_different(program):
            continue
        their_data, their_end, their_record = exchange(theirs_srv, method, program)
        try:
            theirs = read_wire(their_data, their_end, method)
        except Invalid:
            continue  # Uvicorn's answer is not valid HTTP: nothing to match
        compared += 1
        if (ours, end, _comparable(record)) != (theirs, their_end, _comparable(their_record)):
            failures.append(_describe(method, program, cppuvicorn=(ours, end, record),
                                      uvicorn=(theirs, their_end, their_record)))
    assert not failures, f"{len(failures)} program(s) failed:\n\n" + "\n\n".join(failures[:5])
    # The comparison must not have been skipped wholesale.
    assert compared >= PROGRAMS // 3, compared
