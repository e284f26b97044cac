"""``gunicorn -k cppuvicorn.workers.CppUvicornWorker``: gunicorn's arbiter with cppuvicorn workers.

Gunicorn binds 127.0.0.1 on an ephemeral port (``--bind 127.0.0.1:0``); the port is read from
its "Listening at" line. The app is fastapi_app's FastAPI application plus ``/pid``, ``/block``
(time.sleep on the event loop) and ``/slow`` (asyncio.sleep), from ``apps/gunicorn_app.py``.
"""

from __future__ import annotations

import concurrent.futures
import re
import signal
import sys
import time

import pytest

from conftest import APPS_DIR, START_TIMEOUT, ServerProcess, require_kind
from rawhttp import ProtocolError, request

WORKER = "cppuvicorn.workers.CppUvicornWorker"
APP = "gunicorn_app:app"
LISTENING_RE = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")

pytestmark = pytest.mark.cppuvicorn_only


@pytest.fixture
def gunicorn():
    """Start ``gunicorn -k CppUvicornWorker --workers 2 ... gunicorn_app:app``; killed at teardown."""
    require_kind("cppuvicorn")
    started: list[ServerProcess] = []

    def start(*args: str, workers: int = 2, worker: str = WORKER, app: str = APP) -> ServerProcess:
        command = [sys.executable, "-m", "gunicorn", "-k", worker, "--workers", str(workers),
                   "--bind", "127.0.0.1:0", "--chdir", str(APPS_DIR), "--no-control-socket", *args, app]
        srv = ServerProcess("gunicorn", app=None, command=command)
        started.append(srv)
        srv.start(wait_ready=False)
        m = srv.wait_for_line(LISTENING_RE, timeout=START_TIMEOUT)
        srv.scheme, srv.host, srv.port = "http", "127.0.0.1", int(m.group(1))
        wait_for_count(srv, "Application startup complete.", workers)
        return srv

    yield start
    for srv in started:
        srv.kill()


def count(srv: ServerProcess, text: str, after: int = 0) -> int:
    return sum(text in line for line in srv.log_lines(after=after))


def wait_for_count(srv: ServerProcess, text: str, n: int, after: int = 0, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while count(srv, text, after) < n:
        if time.monotonic() > deadline or not srv.alive():
            pytest.fail(f"expected {n} x {text!r} in the gunicorn log:\n{srv.log_text()}", pytrace=False)
        time.sleep(0.05)


def pid_of(srv: ServerProcess) -> int:
    r = request(srv, "GET", "/pid")
    assert r.status == 200, r
    return r.json()["pid"]


def test_serves_requests_with_two_workers(gunicorn):
    srv = gunicorn("--access-logfile", "-", "--forwarded-allow-ips", "127.0.0.1")
    r = request(srv, "GET", "/items/5?q=x")
    assert r.status == 200 and r.json() == {"item_id": 5, "q": "x", "limit": 10}
    assert r.header("server") == b"cppuvicorn" and r.header("x-middleware") == b"seen /items/5"
    srv.wait_for_line(r'^127\.0\.0\.1:\d+ - "GET /items/5\?q=x HTTP/1\.1" 200$', stream="stdout")
    r = request(srv, "GET", "/request-info", headers=[("X-Forwarded-For", "203.0.113.9"),
                                                      ("X-Forwarded-Proto", "https")])
    assert r.json()["client_host"] == "203.0.113.9" and r.json()["url"].startswith("https://")
    r = request(srv, "POST", "/items", headers=[("Content-Type", "application/json")],
                body=b'{"name": "apple", "price": 1.5}')
    assert r.status == 201 and r.json()["total"] == 3.0
    assert request(srv, "GET", "/state").json() == {"greeting": "hello from lifespan"}

    # One worker's event loop is blocked: the other one answers meanwhile.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(request, srv, "GET", "/block?seconds=1.5", timeout=10)
        time.sleep(0.3)
        start = time.monotonic()
        others = {pid_of(srv) for _ in range(5)}
        assert time.monotonic() - start < 1.0
        blocker = blocked.result().json()["pid"]
    assert len(others) == 1 and blocker not in others


def test_access_logformat_uses_gunicorn_atoms(gunicorn):
    """gunicorn --access-logformat: the line is the format, with the response's size and duration."""
    srv = gunicorn("--access-logfile", "-", "--access-logformat", '%(h)s "%(r)s" %(s)s %(B)s %(D)sus "%(a)s"',
                   workers=1)
    r = request(srv, "GET", "/items/7?q=y", headers=[("User-Agent", "probe/2")])
    assert r.status == 200
    m = srv.wait_for_line(r'^127\.0\.0\.1 "GET /items/7\?q=y HTTP/1\.1" 200 (\d+) (\d+)us "probe/2"$', stream="stdout")
    assert int(m.group(1)) == len(r.body) and int(m.group(2)) > 0


def test_max_requests_replaces_workers_without_failures(gunicorn):
    """Sequential requests, a fresh connection each, none lost while workers are replaced.

    The limit is checked on the server's 0.1 s tick, as in uvicorn, hence the pacing."""
    srv = gunicorn("--max-requests", "10")
    pids = []
    for _ in range(80):
        pids.append(pid_of(srv))
        time.sleep(0.01)
    assert len(set(pids)) >= 4, pids
    assert count(srv, "Maximum request limit of 10 exceeded. Terminating process.") >= 2
    assert count(srv, "Booting worker with pid") >= 4
    assert count(srv, "exited with code") == 0 and count(srv, "was sent") == 0, srv.log_text()


def test_sigterm_is_graceful(gunicorn):
    srv = gunicorn()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(request, srv, "GET", "/slow?seconds=1.5", timeout=10)
        time.sleep(0.5)
        srv.send_signal(signal.SIGTERM)
        r = in_flight.result()
    assert r.status == 200 and r.json()["slept"] == 1.5
    assert srv.wait_exit(15) == 0, srv.log_text()
    assert count(srv, "Finished server process") == 2
    assert count(srv, "Application shutdown complete.") == 2
    assert count(srv, "was sent") == 0 and count(srv, "exited with code") == 0, srv.log_text()


def test_sigquit_exits_quickly(gunicorn):
    """SIGQUIT: workers drop their connections at once, well before --graceful-timeout."""
    srv = gunicorn("--graceful-timeout", "20")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(request, srv, "GET", "/slow?seconds=30", timeout=15)
        time.sleep(0.5)
        start = time.monotonic()
        srv.send_signal(signal.SIGQUIT)
        assert srv.wait_exit(15) == 0, srv.log_text()
        assert time.monotonic() - start < 5
        with pytest.raises((ProtocolError, OSError)):
            in_flight.result()
    # Each worker left by itself (not killed by the signal, nor by the arbiter's SIGKILL).
    assert count(srv, "Finished server process") == 2 and count(srv, "was sent") == 0, srv.log_text()


def test_timeout_kills_a_worker_whose_event_loop_is_blocked(gunicorn):
    """--timeout 2: the heartbeat comes from the event loop, so the worker stuck in time.sleep is
    killed and replaced; the idle one keeps notifying and survives."""
    srv = gunicorn("--timeout", "2")
    mark = srv.mark()
    start = time.monotonic()
    with pytest.raises((ProtocolError, OSError)):
        request(srv, "GET", "/block?seconds=12", timeout=10)
    assert time.monotonic() - start < 8
    m = srv.wait_for_line(r"WORKER TIMEOUT \(pid:(\d+)\)", after=mark)
    srv.wait_for_line(rf"Worker \(pid:{m.group(1)}\) exited with code 1", after=mark)
    wait_for_count(srv, "Application startup complete.", 1, after=mark)  # the replacement
    assert pid_of(srv) != int(m.group(1))
    time.sleep(2.5)  # longer than --timeout, with both workers idle
    assert pid_of(srv) > 0
    assert count(srv, "WORKER TIMEOUT") == 1, srv.log_text()


def test_h11_worker_alias(gunicorn):
    srv = gunicorn(workers=1, worker="cppuvicorn.workers.CppUvicornH11Worker")
    assert request(srv, "GET", "/").json() == {"message": "Hello World"}


def test_config_kwargs_subclass_serves_wsgi(gunicorn):
    """CONFIG_KWARGS: a subclass (apps/wsgi_worker.py) sets interface="wsgi" and serves Flask."""
    srv = gunicorn(workers=1, worker="wsgi_worker.CppUvicornWSGIWorker", app="flask_app:app")
    r = request(srv, "POST", "/upload", headers=[("Content-Type", "a/b")], body=b"x" * 100_000)
    assert r.status == 200 and r.json()["size"] == 100_000
    assert request(srv, "GET", "/stream?n=3").body == b"line 0\nline 1\nline 2\n"
