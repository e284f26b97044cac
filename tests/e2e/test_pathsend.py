"""http.response.pathsend: file bodies sent by the core (sendfile(2); copied under TLS).

Starlette's FileResponse takes this path when the scope advertises the extension, so the same
app is compared with Uvicorn (which does not advertise it: Starlette reads and streams the file
there) byte for byte."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from conftest import base_env
from rawhttp import Conn, build_request, request

SIZES = {"empty.bin": 0, "small.txt": 1000, "big.bin": 3 * 1024 * 1024 + 17}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pathsend")
    for name, size in SIZES.items():
        (d / name).write_bytes(bytes((i * 7 + 3) % 251 for i in range(size)))
    return d


def spawn(s, files, app: str, *args: str):
    return s.spawn(app, *args, env=base_env({"PATHSEND_DIR": str(files)}))


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_file_response_matches_uvicorn(servers, files, name, method):
    def run(s):
        srv = spawn(s, files, "pathsend_app:starlette_app")
        r = request(srv, method, f"/files/{name}")
        assert r.status == 200
        expected = b"" if method == "HEAD" else (files / name).read_bytes()
        assert r.body == expected
        assert r.header("content-length") == str(SIZES[name]).encode()
        return r.norm()

    servers.compare(run)


def test_keep_alive_and_pipelining_after_a_file(cppuvicorn_servers, files):
    srv = spawn(cppuvicorn_servers, files, "pathsend_app:starlette_app")
    big = (files / "big.bin").read_bytes()
    with Conn(srv) as c:
        c.send(build_request("GET", "/files/big.bin") + build_request("GET", "/files/small.txt")
               + build_request("GET", "/files/big.bin"))
        bodies = [c.read_response().body for _ in range(3)]
        assert bodies == [big, (files / "small.txt").read_bytes(), big]
        assert not c.is_closed(0.2)


def test_slow_reader_gets_every_byte(cppuvicorn_servers, files):
    """A client that reads slowly: the file is sent as the socket takes it (sendfile, then
    copied chunks while the socket is full), and arrives whole."""
    srv = spawn(cppuvicorn_servers, files, "pathsend_app:starlette_app")
    with socket.create_connection((srv.host, srv.port)) as s:
        s.sendall(build_request("GET", "/files/big.bin"))
        time.sleep(0.3)  # the socket buffers fill up: the server meets a full socket
        data = b""
        deadline = time.monotonic() + 60
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < SIZES["big.bin"]:
            assert time.monotonic() < deadline
            chunk = s.recv(32768)
            assert chunk, "closed early"
            data += chunk
            time.sleep(0.001)
    body = data.partition(b"\r\n\r\n")[2]
    assert hashlib.sha256(body).digest() == hashlib.sha256((files / "big.bin").read_bytes()).digest()


@pytest.mark.parametrize("name", ["small.txt", "big.bin", "empty.bin"])
def test_chunked_pathsend(cppuvicorn_servers, files, name):
    srv = spawn(cppuvicorn_servers, files, "pathsend_app:raw", "--interface", "asgi3")
    r = request(srv, "GET", f"/chunked/{name}")
    assert r.status == 200 and r.framing == "chunked"
    assert r.body == (files / name).read_bytes()
    assert request(srv, "GET", f"/chunked/{name}").body == r.body  # the connection pool still works


@pytest.mark.parametrize("target,error", [
    ("/wrong-length/small.txt", "RuntimeError: Response content shorter than Content-Length"),
    ("/missing", "FileNotFoundError: [Errno 2] No such file or directory"),
    ("/dir", "IsADirectoryError: [Errno 21] Is a directory"),
])
def test_bad_pathsend_is_the_apps_error(cppuvicorn_servers, files, target, error):
    srv = spawn(cppuvicorn_servers, files, "pathsend_app:raw", "--interface", "asgi3")
    mark = srv.mark()
    with Conn(srv) as c:
        c.send(build_request("GET", target))
        head = c.read_until_close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")  # started: the connection is closed, no body
    srv.wait_for_line(r"^ERROR:    Exception in ASGI application", after=mark)
    srv.wait_for_line("^" + error.replace("[", r"\[").replace("]", r"\]"), after=mark)
    assert request(srv, "GET", "/chunked/small.txt").status == 200  # the worker carries on


def test_tls_copies_the_file(cppuvicorn_servers, files, tmp_path):
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    srv = spawn(cppuvicorn_servers, files, "pathsend_app:starlette_app", "--ssl-certfile", str(certfile),
                "--ssl-keyfile", str(keyfile))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection((srv.host, srv.port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(build_request("GET", "/files/big.bin"))
        data = b""
        while len(data.partition(b"\r\n\r\n")[2]) < SIZES["big.bin"]:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    assert data.partition(b"\r\n\r\n")[2] == (files / "big.bin").read_bytes()


def test_sendfile_is_used(cppuvicorn_servers, files):
    """The file goes socket-ward with sendfile(2), not read into the process: serving a 3 MiB
    file five times takes a handful of read-type system calls per response (sendfile counts as
    one; the request's own read is another), where copying it in 64 KiB chunks would take 48."""
    srv = spawn(cppuvicorn_servers, files, "pathsend_app:starlette_app")
    request(srv, "GET", "/files/small.txt")

    def reads() -> int:
        with open(f"/proc/{srv.pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("syscr:"))

    before = reads()
    for _ in range(5):
        assert len(request(srv, "GET", "/files/big.bin").body) == SIZES["big.bin"]
    per_response = (reads() - before) / 5
    assert per_response < 16, per_response
