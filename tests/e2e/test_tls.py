"""TLS (``--ssl-*``): HTTPS and WSS served by OpenSSL in the native core, against Uvicorn's.

A local CA from ``trustme`` issues the server's certificate (localhost, 127.0.0.1) and a client
certificate. Exchanges are compared with Uvicorn (same status, headers, body, scope) except where
cppuvicorn adds something Uvicorn does not have: the ASGI ``tls`` scope extension and ALPN; those
tests are cppuvicorn-only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import subprocess
import sys

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect as ws_connect_async

from conftest import APPS_DIR, REPO_DIR, START_TIMEOUT, ServerProcess, base_env, require_kind
from rawhttp import Conn, build_request
from support import norm_scope

pytestmark = pytest.mark.timeout(120)

CLIENT_CN = "test client"


class Certs:
    def __init__(self, directory):
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.client = self.ca.issue_cert("client.example.test", common_name=CLIENT_CN,
                                         organization_name="cppuvicorn tests")
        self.ca_file = str(directory / "ca.pem")
        self.cert_file = str(directory / "server.pem")
        self.key_file = str(directory / "server.key")
        self.client_file = str(directory / "client.pem")
        self.encrypted_key_file = str(directory / "server-encrypted.key")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.server.cert_chain_pems[0].write_to_path(self.cert_file)
        self.server.private_key_pem.write_to_path(self.key_file)
        self.client.private_key_and_cert_chain_pem.write_to_path(self.client_file)
        key = serialization.load_pem_private_key(self.server.private_key_pem.bytes(), None)
        with open(self.encrypted_key_file, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"s3cret")))

    def args(self, *extra: str) -> tuple[str, ...]:
        return ("--ssl-certfile", self.cert_file, "--ssl-keyfile", self.key_file, *extra)

    def mtls_args(self) -> tuple[str, ...]:
        return self.args("--ssl-cert-reqs", "2", "--ssl-ca-certs", self.ca_file)

    def client_context(self, with_cert: bool = False, alpn=None, tls12: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if with_cert:
            ctx.load_cert_chain(self.client_file)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(tls12)
        return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def tls_conn(srv, ctx: ssl.SSLContext, timeout: float = 10.0) -> Conn:
    conn = Conn(srv, timeout)
    conn.sock = ctx.wrap_socket(conn.sock, server_hostname="localhost")
    return conn


def fetch(srv, ctx, method="GET", path="/", body=None, headers=None):
    with tls_conn(srv, ctx) as conn:
        return conn.request(method, path, headers=headers, body=body)


def scope_of(response) -> dict:
    """The echoed scope, ports blanked, without the tls extension (Uvicorn has none)."""
    scope = norm_scope(response.json())
    scope.pop("extensions", None)
    return scope


# ----------------------------------------------------------------------------- HTTPS vs Uvicorn


def test_https_exchanges_match_uvicorn(servers, certs):
    ctx = certs.client_context()

    def run(s):
        srv = s.get("raw_app:app", *certs.args())
        assert srv.scheme == "https"
        out = []
        for method, path, body in [("GET", "/", None), ("POST", "/echo", b"ping" * 100),
                                   ("GET", "/status/404", None), ("GET", "/stream?n=5", None),
                                   ("HEAD", "/", None)]:
            with tls_conn(srv, ctx) as conn:
                out.append(conn.request(method, path, body=body).norm())
        r = fetch(srv, ctx, "POST", "/scope?x=1", body=b"abc")
        scope = scope_of(r)
        assert scope["scheme"] == "https" and scope["body_length"] == 3
        return out, scope

    servers.compare(run)


def test_keep_alive_and_pipelining(servers, certs):
    ctx = certs.client_context()

    def run(s):
        srv = s.get("raw_app:app", *certs.args())
        with tls_conn(srv, ctx) as conn:
            # Three requests in one TLS record, then two more one by one on the same connection.
            conn.send(build_request("GET", "/hello") + build_request("POST", "/echo", body=b"x" * 5000)
                      + build_request("GET", "/status/204"))
            out = [conn.read_response().norm(), conn.read_response("POST").norm(), conn.read_response().norm()]
            out += [conn.request("GET", "/stream?n=3").norm(), conn.request("POST", "/echo", body=b"last").norm()]
            port = conn.local_port
            scope = conn.request("GET", "/scope").json()
            assert scope["client"][1] == port  # still the same connection
        return out

    servers.compare(run)


def test_large_bodies_both_ways(servers, certs):
    """8 MiB up and down, several times the write high-water mark and TLS's 16 KiB records."""
    ctx = certs.client_context()
    upload = bytes(range(256)) * (8 << 12)
    size = 8 << 20

    def run(s):
        srv = s.get("raw_app:app", *certs.args())
        r = fetch(srv, ctx, "POST", "/body-sha", body=upload)
        assert r.json() == {"length": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}
        r = fetch(srv, ctx, "POST", "/echo", body=upload)
        assert r.body == upload
        expected = bytes(i % 251 for i in range(size))
        results = []
        for query in ("", "&chunked=1"):
            r = fetch(srv, ctx, "GET", f"/big?size={size}{query}")
            assert r.status == 200 and r.body == expected
            results.append((r.status, r.framing, hashlib.sha256(r.body).hexdigest()))
        return results

    servers.compare(run)


def test_slow_reader_gets_everything(cppuvicorn_servers, certs):
    """Write backpressure over TLS: a client that reads slowly still gets the exact body."""
    import time

    srv = cppuvicorn_servers.get("raw_app:app", *certs.args())
    size = 4 << 20
    # With a 16 KiB receive buffer set after the handshake the kernel trickles 16 KiB TLS
    # records at zero-window-probe pace: ~26 s for 4 MiB here, against Uvicorn too. The
    # keep-alive timeout runs out long before the last bytes are read.
    with tls_conn(srv, certs.client_context(), timeout=90) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        conn.send(build_request("GET", f"/big?size={size}&chunked=1"))
        time.sleep(0.5)  # the server fills the socket and must wait, not drop or spin
        r = conn.read_response(timeout=90)
    assert r.status == 200 and r.body == bytes(i % 251 for i in range(size))


# ----------------------------------------------------------------------------- WebSocket


def test_wss_echo(servers, certs):
    # The asyncio client, not websockets.sync: the sync client reads the TLS socket on its own
    # thread while the caller writes it, and one CI run hung in that client's handshake.
    ctx = certs.client_context()

    async def exchange(url):
        async with ws_connect_async(url + "/echo", ssl=ctx, max_size=None, open_timeout=10) as ws:
            await ws.send("hello over tls")
            text = await asyncio.wait_for(ws.recv(), 5)
            big = bytes(range(256)) * 4096  # 1 MiB, compressed by permessage-deflate
            await ws.send(big)
            echoed = await asyncio.wait_for(ws.recv(), 10)
        async with ws_connect_async(url + "/scope", ssl=ctx, open_timeout=10) as ws:
            scope = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return text, echoed == big, scope

    def run(s):
        srv = s.get("ws_apps:app", "--ws", "websockets-sansio", *certs.args())
        text, same, scope = asyncio.run(exchange(f"wss://localhost:{srv.port}"))
        tls = scope.pop("extensions").pop("tls", None)
        if s.kind == "cppuvicorn":
            assert tls is not None and tls["tls_version"] in (0x0303, 0x0304)
            assert tls["server_cert"] == certs.server.cert_chain_pems[0].bytes().decode()
        return text, same, scope["scheme"], scope["type"]

    assert servers.compare(run)[2] == "wss"


# ----------------------------------------------------------------------------- client certificates


def test_client_certificate_required(servers, certs):
    def run(s):
        srv = s.get("raw_app:app", *certs.mtls_args())
        # Without a certificate: the handshake fails (with TLS 1.3 the client hears of it at its
        # first read, as the "certificate required" alert) and no response comes.
        got, error = b"", None
        try:
            with tls_conn(srv, certs.client_context()) as conn:
                conn.send(build_request("GET", "/"))
                got = conn.sock.recv(1024)
        except ssl.SSLError as exc:
            error = exc.reason
        except ConnectionError:
            error = "reset"
        assert got == b""
        if s.kind == "cppuvicorn":
            # cppuvicorn sends the alert that says why; asyncio (so Uvicorn) just drops the
            # connection and the client sees a bare EOF.
            assert error == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        # With one: served, and the server is still up for the next one.
        r = fetch(srv, certs.client_context(with_cert=True), "GET", "/scope")
        return r.status, scope_of(r)["scheme"]

    assert servers.compare(run) == (200, "https")


def test_tls_extension_with_client_certificate(cppuvicorn_servers, certs):
    srv = cppuvicorn_servers.get("raw_app:app", *certs.mtls_args())
    r = fetch(srv, certs.client_context(with_cert=True), "GET", "/scope")
    tls = r.json()["extensions"]["tls"]
    client_pem = certs.client.cert_chain_pems[0].bytes().decode()
    assert tls["client_cert_chain"][0] == client_pem
    assert all(p.startswith("-----BEGIN CERTIFICATE-----") for p in tls["client_cert_chain"])
    subject = x509.load_pem_x509_certificate(client_pem.encode()).subject
    assert tls["client_cert_name"] == subject.rfc4514_string()
    assert f"CN={CLIENT_CN}" in tls["client_cert_name"]
    assert tls["client_cert_error"] is None
    assert tls["server_cert"] == certs.server.cert_chain_pems[0].bytes().decode()
    assert tls["tls_version"] == 0x0304


# ----------------------------------------------------------------------------- the tls extension


@pytest.mark.parametrize("client", ["tls1.3", "tls1.2-ecdhe-ecdsa-aes128-gcm", "tls1.2-chacha20"])
def test_tls_extension_fields(cppuvicorn_servers, certs, client):
    srv = cppuvicorn_servers.get("raw_app:app", *certs.args())
    cipher = {"tls1.3": None, "tls1.2-ecdhe-ecdsa-aes128-gcm": "ECDHE-ECDSA-AES128-GCM-SHA256",
              "tls1.2-chacha20": "ECDHE-ECDSA-CHACHA20-POLY1305"}[client]
    ctx = certs.client_context(tls12=cipher)
    with tls_conn(srv, ctx) as conn:
        name, version, _ = conn.sock.cipher()
        first = conn.request("GET", "/scope").json()["extensions"]["tls"]
        second = conn.request("GET", "/scope").json()["extensions"]["tls"]
    iana = {"TLS_AES_256_GCM_SHA384": 0x1302, "TLS_AES_128_GCM_SHA256": 0x1301,
            "TLS_CHACHA20_POLY1305_SHA256": 0x1303, "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
            "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9}
    assert first == second
    assert first == {
        "server_cert": certs.server.cert_chain_pems[0].bytes().decode(),
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303}[version],
        "cipher_suite": iana[name],
    }
    if cipher is not None:
        assert name == cipher and version == "TLSv1.2"


def test_alpn_offers_http11(cppuvicorn_servers, certs):
    srv = cppuvicorn_servers.get("raw_app:app", *certs.args())
    with tls_conn(srv, certs.client_context(alpn=["h2", "http/1.1"])) as conn:
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
        assert conn.request("GET", "/").status == 200
    with tls_conn(srv, certs.client_context(alpn=["h2"])) as conn:  # no common protocol: no ALPN
        assert conn.sock.selected_alpn_protocol() is None
        assert conn.request("GET", "/").status == 200


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("junk", ["plain-http", "garbage", "half-handshake"])
def test_non_tls_clients_do_not_hurt_the_server(servers, certs, junk):
    ctx = certs.client_context()

    def run(s):
        srv = s.get("raw_app:app", *certs.args())
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            if junk == "plain-http":
                sock.sendall(build_request("GET", "/"))
            elif junk == "garbage":
                sock.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)) * 4)
            else:  # the first bytes of a ClientHello, then silence and a close
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            sock.shutdown(socket.SHUT_WR)
            received = b""
            try:
                while chunk := sock.recv(4096):
                    received += chunk
            except ConnectionError:
                pass
        assert b"HTTP/1.1" not in received  # never a plaintext answer
        r = fetch(srv, ctx, "GET", "/hello")
        return r.status, r.body

    assert servers.compare(run) == (200, b"Hello, world!")


def test_handshake_failure_is_logged_at_debug(cppuvicorn_servers, certs):
    srv = cppuvicorn_servers.spawn("raw_app:app", *certs.args("--log-level", "debug"))
    mark = srv.mark()
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(build_request("GET", "/"))
        try:
            assert b"HTTP/1.1" not in sock.recv(4096)
        except ConnectionError:
            pass
    srv.wait_for_line(r"^DEBUG:\s+TLS handshake failed with 127\.0\.0\.1:\d+: http request$", after=mark)
    assert not any(line.startswith(("WARNING", "ERROR")) for line in srv.log_lines(after=mark))
    assert fetch(srv, certs.client_context(), "GET", "/").status == 200


# ----------------------------------------------------------------------------- start-up


def test_encrypted_key_with_password(servers, certs):
    def run(s):
        srv = s.spawn("raw_app:app", "--ssl-certfile", certs.cert_file, "--ssl-keyfile",
                      certs.encrypted_key_file, "--ssl-keyfile-password", "s3cret")
        return fetch(srv, certs.client_context(), "GET", "/").status

    assert servers.compare(run) == 200


@pytest.mark.parametrize("case", ["missing-key", "wrong-password", "no-password", "key-is-not-a-key",
                                  "cert-is-not-a-cert", "mismatch", "client-protocol", "no-certfile"])
def test_bad_tls_options_exit_1(servers, certs, case, tmp_path):
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(other_key))
    args = {
        "missing-key": ("--ssl-certfile", certs.cert_file, "--ssl-keyfile", str(tmp_path / "nope.key")),
        "wrong-password": ("--ssl-certfile", certs.cert_file, "--ssl-keyfile", certs.encrypted_key_file,
                           "--ssl-keyfile-password", "wrong"),
        "no-password": ("--ssl-certfile", certs.cert_file, "--ssl-keyfile", certs.encrypted_key_file),
        "key-is-not-a-key": ("--ssl-certfile", certs.cert_file, "--ssl-keyfile", certs.ca_file),
        "cert-is-not-a-cert": ("--ssl-certfile", certs.key_file, "--ssl-keyfile", certs.key_file),
        "mismatch": ("--ssl-certfile", certs.cert_file, "--ssl-keyfile", str(other_key)),
        "client-protocol": (*certs.args(), "--ssl-version", str(int(ssl.PROTOCOL_TLS_CLIENT))),
        "no-certfile": ("--ssl-keyfile", certs.key_file),
    }[case]

    def run(s):
        srv = s.spawn("raw_app:app", *args, wait_ready=False)
        assert not srv.ready_or_exit()
        if s.kind == "cppuvicorn":  # one clear line instead of Uvicorn's traceback
            errors = [line for line in srv.log_lines() if line.startswith("ERROR:")]
            assert len(errors) == 1 and errors[0].startswith("ERROR:    Invalid TLS configuration: "), errors
            assert "Traceback" not in srv.log_text()
        return srv.returncode

    assert servers.compare(run) == 1


def test_ssl_context_factory_is_refused_clearly(cppuvicorn_servers, certs):
    code = ("import cppuvicorn\n"
            f"cppuvicorn.run('raw_app:app', app_dir={str(REPO_DIR / 'tests/e2e/apps')!r}, port=0,\n"
            f"               ssl_certfile={certs.cert_file!r}, ssl_keyfile={certs.key_file!r},\n"
            "               ssl_context_factory=lambda config, default: default())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env=base_env(), cwd=REPO_DIR)
    assert proc.returncode == 1
    assert "ssl_context_factory is not supported by cppuvicorn" in proc.stderr


def test_workers_serve_tls(cppuvicorn_servers, certs):
    """Under the supervisor each worker builds its own SSL_CTX from the pickled config."""
    srv = cppuvicorn_servers.spawn("raw_app:app", "--workers", "2", *certs.args())
    assert srv.scheme == "https"
    ctx = certs.client_context()
    for _ in range(4):
        r = fetch(srv, ctx, "GET", "/scope")
        assert r.status == 200 and r.json()["scheme"] == "https"


@pytest.mark.cppuvicorn_only
def test_gunicorn_worker_passes_tls_options(certs):
    """gunicorn's --certfile/--keyfile/--ca-certs/--cert-reqs reach the worker's native TLS."""
    require_kind("cppuvicorn")
    command = [sys.executable, "-m", "gunicorn", "-k", "cppuvicorn.workers.CppUvicornWorker", "--workers", "1",
               "--bind", "127.0.0.1:0", "--chdir", str(APPS_DIR), "--no-control-socket",
               "--certfile", certs.cert_file, "--keyfile", certs.key_file, "--ca-certs", certs.ca_file,
               "--cert-reqs", "2", "raw_app:app"]
    srv = ServerProcess("gunicorn", app=None, command=command)
    srv.start(wait_ready=False)
    try:
        m = srv.wait_for_line(r"Listening at: https://127\.0\.0\.1:(\d+)", timeout=START_TIMEOUT)
        srv.scheme, srv.host, srv.port = "https", "127.0.0.1", int(m.group(1))
        srv.wait_for_line("Application startup complete", timeout=START_TIMEOUT)
        scope = fetch(srv, certs.client_context(with_cert=True), "GET", "/scope").json()
        assert scope["scheme"] == "https"
        assert f"CN={CLIENT_CN}" in scope["extensions"]["tls"]["client_cert_name"]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with tls_conn(srv, certs.client_context()) as conn:
                conn.send(build_request("GET", "/"))
                conn.sock.recv(1024)
    finally:
        srv.kill()


def test_stalled_handshake_is_closed_by_the_keep_alive_timeout(cppuvicorn_servers, certs):
    """A client that never finishes its handshake holds the connection only for
    --timeout-keep-alive (asyncio, so Uvicorn, waits 60 s: its ssl_handshake_timeout)."""
    import time

    srv = cppuvicorn_servers.get("raw_app:app", *certs.args("--timeout-keep-alive", "1"))
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # part of a ClientHello
        start = time.monotonic()
        try:
            while sock.recv(4096):
                pass
        except ConnectionError:
            pass
        assert time.monotonic() - start < 3.5
    assert fetch(srv, certs.client_context(), "GET", "/").status == 200
