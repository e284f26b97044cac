"""Graceful shutdown on SIGTERM / SIGINT: stop accepting, finish in-flight requests, close idle
keep-alive connections, run the lifespan shutdown, exit with uvicorn's exit code."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from conftest import RAW_APP
from rawhttp import Conn, build_request
from support import log_messages

# uvicorn re-raises the captured signal after a clean shutdown: SIGTERM kills the process with
# SIGTERM (exit -15); SIGINT becomes KeyboardInterrupt, which uvicorn's main() swallows (exit 0).
EXPECTED_EXIT = {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 0}


def expected_exit(srv, sig):
    # cppuvicorn exits 0 after a graceful SIGTERM drain (the foundation issue's contract; what
    # process managers read as a clean stop) instead of re-raising SIGTERM as uvicorn does.
    return 0 if srv.kind == "cppuvicorn" else EXPECTED_EXIT[sig]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_with_request_in_flight(servers, sig):
    def run(s):
        srv = s.spawn(RAW_APP)
        idle = Conn(srv)
        assert idle.request("GET", "/hello").status == 200  # now an idle keep-alive connection
        busy = Conn(srv)
        busy.send(build_request("GET", "/sleep?t=1"))
        srv.wait_for_line(r"^APP: sleep start", stream="stderr")
        sent_at = time.monotonic()
        srv.send_signal(sig)

        # The idle connection is closed promptly, without a response.
        assert idle.is_closed(1.0), "idle keep-alive connection not closed on shutdown"
        # New connections are refused once shutdown began.
        srv.wait_for_line(r"^INFO:     Shutting down$", stream="stderr")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
        # The in-flight request completes, marked as the last one on its connection.
        r = busy.read_response(timeout=5)
        assert r.status == 200 and r.body == b"slept 1.0"
        assert r.header("connection") == b"close"
        assert busy.is_closed(2)
        code = srv.wait_exit(5)
        assert code is not None, "server did not exit after its last request"
        assert time.monotonic() - sent_at < 3
        assert code == expected_exit(srv, sig)
        log = log_messages(srv.log_lines(stream="stderr"))
        tail = log[log.index("INFO:     Shutting down"):]
        assert tail == ["INFO:     Shutting down", "INFO:     Waiting for connections to close. (CTRL+C to force quit)",
                        "APP: sleep done", "INFO:     Waiting for application shutdown.", "APP: lifespan shutdown",
                        "INFO:     Application shutdown complete.", "INFO:     Finished server process [PID]"]
        idle.close()
        busy.close()
        return tail, r.norm()

    servers.compare(run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_connections_closed_and_quick_exit(servers, sig):
    def run(s):
        srv = s.spawn(RAW_APP)
        conns = [Conn(srv) for _ in range(5)]
        for c in conns[:3]:
            assert c.request("GET", "/hello").status == 200
        # conns[3:] are connected but never sent a byte.
        start = time.monotonic()
        srv.send_signal(sig)
        for c in conns:
            assert c.is_closed(1.5)
        code = srv.wait_exit(3)
        assert code == expected_exit(srv, sig)
        assert time.monotonic() - start < 2
        for c in conns:
            c.close()
        log = log_messages(srv.log_lines(stream="stderr"))
        return log[log.index("INFO:     Shutting down"):]

    servers.compare(run)


def test_second_sigint_forces_exit(servers):
    """A second Ctrl+C stops waiting for in-flight requests and skips the lifespan shutdown."""

    def run(s):
        srv = s.spawn(RAW_APP)
        busy = Conn(srv)
        busy.send(build_request("GET", "/sleep?t=5"))
        srv.wait_for_line(r"^APP: sleep start", stream="stderr")
        srv.send_signal(signal.SIGINT)
        srv.wait_for_line(r"^INFO:     Waiting for connections to close", stream="stderr")
        start = time.monotonic()
        srv.send_signal(signal.SIGINT)
        code = srv.wait_exit(3)
        assert code is not None and time.monotonic() - start < 2
        assert code == 0
        assert not any("Application shutdown complete." in line for line in srv.log_lines())
        assert not any("sleep done" in line for line in srv.log_lines())
        busy.close()
        return code

    servers.compare(run)


@pytest.mark.parametrize("stubborn", [False, True], ids=["cancellable", "stubborn"])
def test_leftover_tasks_do_not_hold_the_process(cppuvicorn_servers, stubborn):
    """Background tasks the app leaves behind are cancelled at exit; ones that swallow the
    cancellation are abandoned after a bounded wait (asyncio's Runner would wait for ever, and
    cppuvicorn exits 0 instead of dying by the re-raised signal as Uvicorn does)."""
    srv = cppuvicorn_servers.spawn("stubborn_app:app", "--timeout-graceful-shutdown", "1")
    c = Conn(srv)
    assert c.request("GET", f"/?stubborn={int(stubborn)}").status == 200
    c.close()
    start = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert srv.wait_exit(8) == 0
    elapsed = time.monotonic() - start
    warned = any("ignored cancellation at shutdown" in line for line in srv.log_lines(stream="stderr"))
    assert warned == stubborn
    assert elapsed < (4 if stubborn else 2)
