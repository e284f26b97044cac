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

The second half does the same for WebSocket sessions (see its section).
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
    return data, end, program_record(srv, key)


def _get(srv, path: str) -> bytes:
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response.split(b"\r\n\r\n", 1)[1]


def program_record(srv, key: str) -> list[str]:
    """What each step of the program did, once it has ended."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while (record := json.loads(_get(srv, f"/result/{key}"))) is None:
        assert time.monotonic() < deadline, "the program did not end"
        time.sleep(0.01)
    return record


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


def _unexpected(record: list[str], also: tuple[str, ...] = ()) -> list[str]:
    """The entries of a record that are neither a step's normal outcome nor an exception an app
    can expect from a bad message."""
    expected = (*(f"{name}: " for name in EXPECTED_EXCEPTIONS), *also)
    return [e for e in record if e not in ("ok", "raise", "return", "done") and not e.startswith(expected)]

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
        unexpected = _unexpected(record)
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


# ----------------------------------------------------------------------------- WebSocket sessions
#
# The same for a WebSocket session's send() and receive(): accept (with headers and subprotocols,
# some that Uvicorn refuses), messages of each kind, close codes and reasons, the
# websocket.http.response denial, messages of the wrong type. The client answers the handshake
# with a text and a binary message, echoes a close frame, and closes itself once the server has
# been quiet for a while (so a receive() waiting for more ends). cppuvicorn must answer the
# handshake validly, send only well-formed server frames (FIN, unmasked, no RSV bits, valid close
# codes, UTF-8 text and reasons, nothing after its close frame), end the connection, and raise
# only the usual exceptions.

WS_PROGRAMS = 200
WS_QUIET = 0.3  # the client closes after this long without a frame
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3's example
VALID_CLOSE_CODES = [1000, 1001, 1011, 3000, 4999]
INVALID_CLOSE_CODES = [999, 1005, 1006, 1015, 2999, 5000]
WS_HEADER_SETS = [[], [(b"x-a", b"1")], [(b"content-length", b"3")], [(b"sec-websocket-protocol", b"zz")],
                  [(b"bad name", b"v")], [(b"x", b"a\rb")], [(b"", b"v")]]


def _token_headers(pairs) -> bool:
    return all(k and b" " not in k and b"\r" not in v for k, v in pairs)


def make_ws_programs(seed: int = SEED, count: int = WS_PROGRAMS) -> list[tuple[bool, list]]:
    """(offer subprotocols, steps). A receive() is only generated once the handshake has surely
    been answered: before that, a session waits on its client, and so would the test."""
    rng = random.Random(seed)
    programs = []
    for _ in range(count):
        steps = [["receive"]] if rng.random() < 0.8 else []
        state = "connecting"  # → "responding" → "closed"; → "open" → "closed"
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.1 and state in ("open", "closed"):
                steps.append(["receive"])
                continue
            if r < 0.14:
                steps.append([rng.choice(["raise", "return"])])
                break
            r = rng.random()
            if r < 0.2:
                pairs = rng.choice(WS_HEADER_SETS)
                message = {"type": {"s": "websocket.accept"}}
                if rng.random() < 0.4:
                    message["subprotocol"] = rng.choice([{"s": "a"}, {"s": "b"}, {"s": "zz"}, {"n": 0}])
                if pairs or rng.random() < 0.3:
                    message["headers"] = {"l": [{"t": [_b(k), _b(v)]} for k, v in pairs]}
                if state == "connecting" and _token_headers(pairs):
                    state = "open"
            elif r < 0.5:
                message = {"type": {"s": "websocket.send"}}
                kind = rng.random()
                if kind < 0.4:
                    message["text"] = {"s": rng.choice(["hi", "", "ééé"])}
                elif kind < 0.8:
                    message["bytes"] = _b(rng.choice([b"", b"\x00\x01", b"x" * 200]))
                elif kind < 0.9:
                    message["text"], message["bytes"] = {"s": "t"}, _b(b"b")
            elif r < 0.7:
                message = {"type": {"s": "websocket.close"}}
                valid = rng.random() < 0.8
                if rng.random() < 0.7:
                    message["code"] = {"i": rng.choice(VALID_CLOSE_CODES if valid else INVALID_CLOSE_CODES)}
                if rng.random() < 0.5:
                    message["reason"] = {"s": rng.choice(["bye", "", "é" * 70])}
                if valid and state in ("connecting", "open"):
                    state = "closed"
            elif r < 0.82:
                pairs = rng.choice(WS_HEADER_SETS[:4] + [[]])
                status = rng.choice([403, 200, 404, 500, 599, 101, 103])
                message = {"type": {"s": "websocket.http.response.start"}, "status": {"i": status},
                           "headers": {"l": [{"t": [_b(k), _b(v)]} for k, v in pairs]}}
                if state == "connecting" and status >= 200:
                    state = "responding"
            elif r < 0.92:
                message = {"type": {"s": "websocket.http.response.body"}, "body": _b(rng.choice([b"", b"denied"]))}
                if rng.random() < 0.4:
                    message["more_body"] = {"bool": 1}
                elif state == "responding":
                    state = "closed"
            else:
                message = {"type": {"s": rng.choice(["websocket.bogus", "http.response.start"])}}
            steps.append(["send", {"d": message}])
        programs.append((rng.random() < 0.5, steps))
    return programs


def _client_frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x11\x22\x33\x44"
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        byte ^ mask[i % 4] for i, byte in enumerate(payload))


def _take_frame(buf: bytearray):
    """One server frame off the front of `buf`: (first byte, second byte, payload), or None."""
    if len(buf) < 2:
        return None
    length, at = buf[1] & 0x7F, 2
    if length >= 126:
        at = 4 if length == 126 else 10
        if len(buf) < at:
            return None
        length = int.from_bytes(buf[2:at], "big")
    if buf[1] & 0x80:
        at += 4  # masked: invalid from a server, reported as such
    if len(buf) < at + length:
        return None
    frame = (buf[0], buf[1], bytes(buf[at:at + length]))
    del buf[:at + length]
    return frame


def ws_exchange(srv, subprotocols: bool, program: list) -> tuple[bytes | None, list, bytes, str, list | None]:
    """(response head, frames, rest of the bytes, how it ended, the program's record or None if
    the program never ended)."""
    key = uuid.uuid4().hex
    body = json.dumps(program).encode()
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall(f"POST /prog/{key} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body)
        while sock.recv(65536):
            pass
    request = (f"GET /ws/{key} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
               f"sec-websocket-key: {WS_KEY}\r\nsec-websocket-version: 13\r\n")
    if subprotocols:
        request += "sec-websocket-protocol: a, b\r\n"
    head, frames, buf, end = None, [], bytearray(), "hang"
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall((request + "\r\n").encode())
        deadline = time.monotonic() + HANG_TIMEOUT
        quiet_since, greeted, closing = time.monotonic(), False, False
        while time.monotonic() < deadline:
            sock.settimeout(0.02)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                chunk = None
            except ConnectionResetError:
                chunk = b""
            if chunk == b"":
                end = "closed"
                break
            if chunk:
                buf += chunk
                quiet_since = time.monotonic()
            if head is None and b"\r\n\r\n" in buf:
                at = buf.index(b"\r\n\r\n") + 4
                head, buf = bytes(buf[:at]), buf[at:]
            if head is None or not head.startswith(b"HTTP/1.1 101 "):
                continue
            if not greeted:
                sock.sendall(_client_frame(1, b"hi") + _client_frame(2, b"\x01"))
                greeted = True
            while (frame := _take_frame(buf)) is not None:
                frames.append(frame)
                if frame[0] & 0x0F == 8 and not closing:
                    sock.sendall(_client_frame(8, frame[2][:2]))
                    closing = True
            if not closing and time.monotonic() - quiet_since > WS_QUIET:
                sock.sendall(_client_frame(8, (1000).to_bytes(2, "big")))
                closing = True
    try:
        record = program_record(srv, key)
    except AssertionError:
        record = None
    return head, frames, bytes(buf), end, record


def read_ws(head: bytes | None, frames: list, rest: bytes, end: str) -> tuple:
    """What a client makes of the session: (status line, headers but date and server, the
    frames as (opcode, payload) or the denial's body). Raises Invalid."""
    if end != "closed":
        raise Invalid("the connection did not end")
    if head is None:
        if rest or frames:
            raise Invalid(f"no answer to the handshake, but {rest!r}")
        # The app ended (or failed) part way through a denial response: nothing valid can
        # be sent any more, so the connection closes without an answer (as in Uvicorn).
        return ("closed without an answer",)
    status, *lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines:
        name, sep, value = line.partition(b": ")
        if not sep or not name or not all(33 <= c < 127 and c not in b'()<>@,;:\\"/[]?={}' for c in name):
            raise Invalid(f"header line {line!r}")
        if name.lower() not in (b"date", b"server"):
            headers.append((name, value))
    code = int(status.split(b" ")[1])
    if code != 101:
        if not 200 <= code < 600:
            raise Invalid(f"a {code} answer to the handshake")
        length = [v.strip() for k, v in headers if k.lower() == b"content-length"]
        if length != [str(len(rest)).encode()] or frames:
            raise Invalid(f"the denial's body {rest!r} does not match {length}")
        return status, tuple(headers), rest
    if (b"Sec-WebSocket-Accept", WS_ACCEPT) not in headers or rest:
        raise Invalid("bad 101 answer, or bytes after the frames")
    out, closed = [], False
    for first, second, payload in frames:
        opcode = first & 0x0F
        if first & 0xF0 != 0x80 or second & 0x80 or opcode not in (1, 2, 8, 9, 10):
            raise Invalid(f"frame header {first:#x} {second:#x}")
        if opcode >= 8 and len(payload) > 125 or closed and opcode in (1, 2, 8):
            raise Invalid(f"frame {opcode} of {len(payload)} bytes (after the close frame: {closed})")
        try:
            if opcode == 1:
                payload.decode()
            if opcode == 8 and payload:
                close_code = int.from_bytes(payload[:2], "big")
                payload[2:].decode()
                if len(payload) < 2 or not (1000 <= close_code <= 1014 and close_code not in (1004, 1005, 1006)
                                            or 3000 <= close_code <= 4999):
                    raise Invalid(f"close frame {payload!r}")
        except UnicodeDecodeError:
            raise Invalid(f"frame {opcode} is not UTF-8: {payload!r}") from None
        closed = closed or opcode == 8
        out.append((opcode, payload))
    return status, tuple(headers), tuple(out)


def _ws_comparable(read: tuple, their_read: tuple, record: list[str]) -> tuple:
    """What of a session both servers must agree on."""
    if len(read) == 1:
        return read, _until_disconnect(record)
    frames = read[2]
    if (isinstance(frames, tuple) and frames and frames[-1][0] == 8
            and not any(opcode == 8 for opcode, _ in their_read[2])):
        # The app left the session open: cppuvicorn closes it with 1000 (1011 after an error),
        # Uvicorn drops the TCP connection.
        frames = frames[:-1]
    return read[0], read[1], frames, _until_disconnect(record)


def _until_disconnect(record: list[str]) -> list[str]:
    kept = []
    for entry in record:
        # Uvicorn leaves header values to websockets, which raises its own exception.
        if entry.startswith("InvalidHeaderValue: "):
            entry = "RuntimeError: Invalid HTTP header value."
        kept.append(entry)
        if entry.startswith("received disconnect"):
            # What follows depends on when each server notices the closed socket.
            break
    return kept


def _ws_deliberately_different(program: list) -> str | None:
    for step in program:
        message = step[1]["d"] if step[0] == "send" else {}
        if message.get("type") == {"s": "websocket.close"}:
            if message.get("code", {}).get("i", 1000) in INVALID_CLOSE_CODES:
                return ("an invalid close code: Uvicorn's websockets raises ProtocolError and the "
                        "session carries on half closed; cppuvicorn raises RuntimeError")
            if len(message.get("reason", {}).get("s", "").encode()) > 123:
                return ("a close reason over 123 bytes: cppuvicorn cuts it at a character boundary, "
                        "Uvicorn's websockets raises ProtocolError")
        if message.get("type") == {"s": "websocket.http.response.start"} and message["status"]["i"] < 200:
            return "a 1xx denial: Uvicorn sends it, cppuvicorn refuses it"
    return None


def test_websocket_send_sequences_are_answered_validly_and_as_uvicorn(cppuvicorn_servers):
    ours_srv = cppuvicorn_servers.get(APP, "--ws-per-message-deflate", "false")
    theirs_srv = cppuvicorn_servers.oracle.get(APP, "--ws-per-message-deflate", "false")
    failures, compared = [], 0
    for subprotocols, program in make_ws_programs():
        head, frames, rest, end, record = ws_exchange(ours_srv, subprotocols, program)
        try:
            ours = read_ws(head, frames, rest, end)
        except Invalid as exc:
            failures.append(_describe("WS", program, invalid=str(exc), head=head, frames=frames, record=record))
            continue
        if record is None:
            failures.append(_describe("WS", program, problem="the program never ended"))
            continue
        unexpected = _unexpected(record, also=("received ", "ClientDisconnected: "))
        if unexpected:
            failures.append(_describe("WS", program, unexpected=unexpected))
            continue
        if _ws_deliberately_different(program):
            continue
        their = ws_exchange(theirs_srv, subprotocols, program)
        try:
            theirs = read_ws(*their[:4])
        except Invalid:
            continue  # Uvicorn's answer is not valid: nothing to match
        if their[4] is None:
            continue  # Uvicorn's program never ended (a receive() after the disconnect blocks)
        compared += 1
        if _ws_comparable(ours, theirs, record) != _ws_comparable(theirs, theirs, their[4]):
            failures.append(_describe("WS", program, cppuvicorn=(ours, record), uvicorn=(theirs, their[4])))
    assert not failures, f"{len(failures)} program(s) failed:\n\n" + "\n\n".join(failures[:5])
    assert compared >= WS_PROGRAMS // 3, compared
