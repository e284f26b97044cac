"""Proxy headers (--proxy-headers, --forwarded-allow-ips), differential against uvicorn.

cppuvicorn applies X-Forwarded-For / X-Forwarded-Proto natively, before the scope is built
(``core/proxy_headers.cpp``); uvicorn does it in ``ProxyHeadersMiddleware``. Two layers:

* served requests from 127.0.0.1 (and ::1) to both servers, across --forwarded-allow-ips
  settings, compared on the echoed scope's ``client`` and ``scheme``, the access log line, and
  a WebSocket scope;
* the native step itself (``_core._proxy_headers``, the code path served requests take) against
  uvicorn's middleware on a fake scope, for thousands of generated trust lists and headers: the
  corners (IPv6 zones, netmasks, ports int() accepts, Latin-1 whitespace) no table would cover.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import RAW_APP, require_kind
from rawhttp import Conn, build_request

WS_APP = "ws_apps:app"
WS = ("--ws", "websockets-sansio")  # the oracle test_websocket.py uses

# --forwarded-allow-ips settings: (id, extra command-line arguments).
SETTINGS = [
    ("default", ()),  # 127.0.0.1,::1
    ("star", ("--forwarded-allow-ips", "*")),
    ("cidr-in", ("--forwarded-allow-ips", "127.0.0.0/8")),
    ("cidr-out", ("--forwarded-allow-ips", "10.0.0.0/8")),
    ("list", ("--forwarded-allow-ips", "10.0.0.0/8, 127.0.0.1,proxy.sock, 2001:db8::/32")),
    ("netmask", ("--forwarded-allow-ips", "127.0.0.0/255.0.0.0,10.0.0.0/0.255.255.255")),
    ("off", ("--no-proxy-headers",)),
]

# Header sets sent with each request (names as a client might spell them).
CASES = [
    [],
    [("X-Forwarded-For", "203.0.113.9")],
    [("X-Forwarded-For", "203.0.113.9, 10.0.0.5")],
    [("X-Forwarded-For", "198.51.100.7, 203.0.113.9, 10.0.0.5, 127.0.0.1")],
    [("X-Forwarded-For", "10.1.1.1, 127.0.0.1")],  # every hop trusted by some settings
    [("X-Forwarded-For", "203.0.113.9:4444")],
    [("X-Forwarded-For", "[2001:db8::1]:443, 2001:db8::2")],
    [("X-Forwarded-For", "unknown, proxy.sock")],
    [("X-Forwarded-For", "1.2.3.4:http")],
    [("X-Forwarded-For", "")],
    [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-For", "10.0.0.5")],
    [("X-Forwarded-Proto", "https")],
    [("X-Forwarded-Proto", " http ")],
    [("X-Forwarded-Proto", "HTTPS")],
    [("X-Forwarded-Proto", "wss")],
    [("X-Forwarded-Proto", "ftp")],
    [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")],
    [("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "203.0.113.9:1, 10.0.0.5")],
]


def _exchange(srv, headers) -> tuple:
    """(client, scheme) of the echoed scope; the connection's own port reads as "<peer-port>"."""
    with Conn(srv) as conn:
        r = conn.request("GET", "/scope", headers)
        assert r.status == 200, r
        scope = r.json()
        client = scope["client"]
        if client is not None and client[1] == conn.local_port:
            client = [client[0], "<peer-port>"]
        return client, scope["scheme"]


@pytest.mark.parametrize("setting", [s[1] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
def test_scope_client_and_scheme(servers, setting):
    def run(s):
        srv = s.get(RAW_APP, *setting)
        return [(headers, _exchange(srv, headers)) for headers in CASES]

    results = servers.compare(run, "client/scheme per header set")
    outcome = dict((tuple(h), r) for h, r in results)
    name = next(i for i, args in SETTINGS if args == setting)
    # A few anchors, so that a mistake both servers shared would still show.
    forwarded = outcome[(("X-Forwarded-For", "203.0.113.9, 10.0.0.5"),)]
    proto = outcome[(("X-Forwarded-Proto", "https"),)]
    if name in ("off", "cidr-out"):
        assert forwarded == (["127.0.0.1", "<peer-port>"], "http") and proto[1] == "http"
    elif name in ("star", "list", "netmask"):  # 10.0.0.5 trusted too (or everything)
        assert forwarded == (["203.0.113.9", 0], "http") and proto[1] == "https"
    else:
        assert forwarded == (["10.0.0.5", 0], "http") and proto[1] == "https"


def test_forwarded_allow_ips_from_the_environment(servers):
    def run(s):
        srv = s.spawn(RAW_APP, env={"FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
        untrusted = _exchange(srv, [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")])
        srv2 = s.spawn(RAW_APP, "--forwarded-allow-ips", "127.0.0.1", env={"FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
        trusted = _exchange(srv2, [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")])
        return untrusted, trusted

    untrusted, trusted = servers.compare(run)
    assert untrusted == (["127.0.0.1", "<peer-port>"], "http")  # 127.0.0.1 not in 10.0.0.0/8
    assert trusted == (["203.0.113.9", 0], "https")  # the option wins over the variable


def test_ipv6_peer(servers):
    def run(s):
        srv = s.spawn(RAW_APP, "--host", "::1")
        plain = _exchange(srv, [("X-Forwarded-For", "[2001:db8::7]:8443"), ("X-Forwarded-Proto", "https")])
        srv2 = s.spawn(RAW_APP, "--host", "::1", "--forwarded-allow-ips", "127.0.0.1")
        untrusted = _exchange(srv2, [("X-Forwarded-For", "2001:db8::7")])
        return plain, untrusted

    plain, untrusted = servers.compare(run)
    assert plain == (["2001:db8::7", 8443], "https")  # ::1 is in the default list
    assert untrusted == (["::1", "<peer-port>"], "http")


def test_access_log_names_the_forwarded_client(servers):
    def run(s):
        srv = s.get(RAW_APP)
        mark = srv.mark()
        with Conn(srv) as conn:
            r = conn.request("GET", "/scope?x=1", [("X-Forwarded-For", "203.0.113.9:5555")])
            assert r.status == 200
        return srv.wait_for_line(r'"GET /scope\?x=1 HTTP/1\.1" 200', stream="stdout", after=mark).string

    line = servers.compare(run)
    assert line == 'INFO:     203.0.113.9:5555 - "GET /scope?x=1 HTTP/1.1" 200 OK'


def test_limit_concurrency_503_access_line_names_the_peer(servers):
    # Uvicorn answers with an app its proxy middleware does not wrap: the peer is logged.
    def run(s):
        srv = s.get(RAW_APP, "--limit-concurrency", "2")
        mark = srv.mark()
        with Conn(srv) as busy:
            busy.send(build_request("GET", "/sleep?t=0.5", headers=[("Connection", "close")]))
            srv.wait_for_line(r"^APP: sleep start", after=mark)
            with Conn(srv) as c:
                r = c.request("GET", "/hello", [("X-Forwarded-For", "203.0.113.9")])
                assert r.status == 503
                peer_port = c.local_port
            line = srv.wait_for_line(r'"GET /hello HTTP/1\.1" 503', after=mark, stream="stdout").string
            assert busy.read_response().status == 200
        return line.replace(f":{peer_port} ", ":<peer-port> ")

    line = servers.compare(run)
    assert line == 'INFO:     127.0.0.1:<peer-port> - "GET /hello HTTP/1.1" 503 Service Unavailable'


def test_config_does_not_wrap_the_app():
    # The native step replaces the middleware: wrapping too would apply the headers twice.
    require_kind("cppuvicorn")
    from cppuvicorn.config import Config

    async def app(scope, receive, send):
        pass

    config = Config(app, proxy_headers=True, forwarded_allow_ips="*", log_config=None)
    config.load()
    assert config.loaded_app is app


def test_uds_peer_is_trusted_only_under_star(servers, tmp_path):
    def run(s):
        out = []
        for args in ((), ("--forwarded-allow-ips", "*")):
            path = str(tmp_path / f"{s.kind}-{len(out)}.sock")
            srv = s.spawn(RAW_APP, "--uds", path, *args)
            with Conn(srv) as conn:
                r = conn.request("GET", "/scope", [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")])
                out.append((r.json()["client"], r.json()["scheme"]))
        return out

    assert servers.compare(run) == [(None, "http"), (["203.0.113.9", 0], "https")]


@pytest.mark.parametrize("proto,expected", [("https", "wss"), ("http", "ws"), ("wss", "wss"), ("ftp", "ws")])
def test_websocket_scope(servers, proto, expected):
    def run(s):
        srv = s.get(WS_APP, *WS)
        mark = srv.mark()
        with ws_connect(f"ws://127.0.0.1:{srv.port}/scope", open_timeout=5,
                        additional_headers=[("X-Forwarded-Proto", proto),
                                            ("X-Forwarded-For", "198.51.100.2, 127.0.0.1")]) as ws:
            scope = json.loads(ws.recv(timeout=5))
        line = srv.wait_for_line(r'"WebSocket /scope" \[accepted\]', after=mark).string
        return scope["scheme"], scope["client"], line

    assert servers.compare(run) == (expected, ["198.51.100.2", 0],
                                    'INFO:     198.51.100.2:0 - "WebSocket /scope" [accepted]')


def test_websocket_scope_untrusted_peer(servers):
    def run(s):
        args = ("--forwarded-allow-ips", "10.0.0.0/8")
        srv = s.get(WS_APP, *WS, *args)
        with ws_connect(f"ws://127.0.0.1:{srv.port}/scope", open_timeout=5,
                        additional_headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "1.1.1.1")]) as ws:
            scope = json.loads(ws.recv(timeout=5))
        return scope["scheme"], scope["client"][0]

    assert servers.compare(run) == ("ws", "127.0.0.1")


def test_python_middleware_is_still_importable():
    require_kind("cppuvicorn")
    from cppuvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    mw = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")
    scope = {"type": "http", "scheme": "http", "client": ("127.0.0.1", 1),
             "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")]}
    asyncio.run(mw(scope, None, None))
    assert seen["client"] == ("203.0.113.9", 0) and seen["scheme"] == "https"


# ----------------------------------------------------------------------------- native vs middleware

TRUST_PIECES = [
    "127.0.0.1", "::1", "*", "10.0.0.0/8", "10.0.0.1/8", "10.0.0.0/255.0.0.0", "10.0.0.0/0.0.255.255",
    "192.168.1.0/24", "0.0.0.0/0", "::/0", "fe80::/10", "fe80::%eth0/64", "fe80::1%eth0", "2001:db8::/32",
    "::ffff:127.0.0.1", "::ffff:0:0/96", "01.2.3.4", "1.2.3.4", "1.2.3.4/32", "1.2.3.4/033", "unix.sock",
    "unknown", "", " ", "1.2.3.4 ", "[::1]", "1:2:3:4:5:6:7:8", "::1.2.3.4", "10.0.0.0/8/8", "2001:DB8::1",
]
HOSTS = [
    "127.0.0.1", "10.1.2.3", "10.0.0.1", "1.2.3.4", "192.168.1.77", "203.0.113.9", "01.2.3.4", "1.2.3.256",
    "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "::ffff:7f00:1", "fe80::1", "fe80::1%eth0", "fe80::1%lo",
    "2001:db8::5", "2001:DB8::5", "2001:db8::5%", "1:2:3:4:5:6:7:8", "1::2::3", "unknown", "unix.sock", "",
    "*", "1.2.3.4/32", "::1.2.3.4", "é", "[::1]",
]
PORTS = ["", ":80", ":0", ":-1", ": 80 ", ":1_0", ":_1", ":x", ":", ":\xa080\x85", ":\x1c8", ":0x10",
         ":99999999999999999999999", ":+7", ":٣"]
SPACES = ["", "", "", " ", "\t", "\xa0", "\x85", "\x1c", "  "]


def _hop(rnd: random.Random) -> str:
    host = rnd.choice(HOSTS)
    port = rnd.choice(PORTS)
    shape = rnd.random()
    if shape < 0.25 and port:
        text = f"[{host}]{port}"
    elif shape < 0.3:
        text = f"[{host}"
    elif shape < 0.35:
        text = f"[{host}]x"
    else:
        text = host + port
    return rnd.choice(SPACES) + text + rnd.choice(SPACES)


def _case(rnd: random.Random):
    pieces = [rnd.choice(TRUST_PIECES) + rnd.choice(SPACES) for _ in range(rnd.randint(1, 4))]
    trusted = rnd.choice([",".join(pieces), pieces, "*", ["*"], "127.0.0.1,::1"])
    headers = []
    for _ in range(rnd.randint(0, 4)):
        kind = rnd.random()
        if kind < 0.6:
            value = ",".join(_hop(rnd) for _ in range(rnd.randint(1, 4)))
            headers.append((b"x-forwarded-for", value.encode("utf-8" if rnd.random() < 0.1 else "latin-1",
                                                            "replace")))
        elif kind < 0.9:
            proto = rnd.choice(["http", "https", "ws", "wss", "HTTPS", "ftp", "", "https,http"])
            headers.append((b"x-forwarded-proto", (rnd.choice(SPACES) + proto + rnd.choice(SPACES)).encode("latin-1")))
        else:
            headers.append((b"x-other", b"1.2.3.4"))
    peer = rnd.choice(["127.0.0.1", "::1", "10.0.0.7", "192.168.1.1", "fe80::1", "203.0.113.1", None])
    return trusted, peer, headers, rnd.random() < 0.3


def _uvicorn_result(trusted, peer, headers, websocket):
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    scope = {"type": "websocket" if websocket else "http", "scheme": None,
             "client": None if peer is None else (peer, "<peer>"), "headers": headers}
    coro = ProxyHeadersMiddleware(app, trusted_hosts=trusted)(scope, None, None)
    with pytest.raises(StopIteration):
        coro.send(None)
    client = seen["client"]
    return seen["scheme"], None if client is None or client[1] == "<peer>" else client


def _native_result(core, trusted, peer, headers, websocket):
    from cppuvicorn.middleware.proxy_headers import native_trusted_hosts

    trust_all, entries = native_trusted_hosts(trusted)
    peer_trusted, scheme, client = core._proxy_headers(trust_all, entries, peer or "", headers, websocket)
    return scheme, client


def test_native_step_matches_uvicorn_middleware_on_generated_inputs():
    require_kind("cppuvicorn")
    from cppuvicorn import _core

    rnd = random.Random(20261203)
    mismatches = []
    for _ in range(20000):
        trusted, peer, headers, websocket = _case(rnd)
        want = _uvicorn_result(trusted, peer, headers, websocket)
        got = _native_result(_core, trusted, peer, headers, websocket)
        if got != want:
            mismatches.append((trusted, peer, headers, websocket, got, want))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


@pytest.mark.parametrize("trusted,host", [
    ("fe80::%\u20ac/64", "fe80::9"),  # a network with a non-Latin-1 zone still matches
    ("\u20ac, 127.0.0.1", "\u20ac"),   # a non-Latin-1 literal matches no header value
    ("::1%\u20ac", "::1"),
])
def test_native_step_non_latin1_entries(trusted, host):
    require_kind("cppuvicorn")
    from cppuvicorn import _core

    headers = [(b"x-forwarded-for", f"203.0.113.9, {host}".encode("utf-8"))]
    want = _uvicorn_result(trusted, "127.0.0.1", headers, False)
    assert _native_result(_core, trusted, "127.0.0.1", headers, False) == want
