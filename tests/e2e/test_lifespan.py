"""Lifespan protocol: log order, state, failure exit codes, --lifespan auto|on|off.

Each test starts fresh servers; the normalised log (pids, ports and the server's name blanked,
tracebacks and access lines dropped) must be identical to uvicorn's."""

from __future__ import annotations

import signal

import pytest

from rawhttp import request
from support import log_messages

STARTED = "INFO:     Started server process [PID]"
RUNNING = "INFO:     <server> running on http://127.0.0.1:PORT (Press CTRL+C to quit)"
SHUTDOWN_TAIL = ["INFO:     Shutting down", "INFO:     Waiting for application shutdown.", "APP: shutdown",
                 "INFO:     Application shutdown complete.", "INFO:     Finished server process [PID]"]


def run_and_stop(s, app, *args, path="/"):
    """Start, make one request (if it started), SIGTERM; returns (started, exit code, log, body)."""
    srv = s.spawn(app, *args, wait_ready=False)
    started = srv.ready_or_exit()
    body = None
    if started:
        r = request(srv, "GET", path)
        assert r.status == 200
        body = r.json() if r.header("content-type") == b"application/json" else r.body
        code = srv.stop(signal.SIGTERM)
        # uvicorn re-raises SIGTERM after a clean shutdown (-15); cppuvicorn exits 0.
        assert code == (0 if srv.kind == "cppuvicorn" else -signal.SIGTERM)
        code = "stopped"
    else:
        code = srv.returncode
    return started, code, log_messages(srv.log_lines(stream="stderr")), body, srv


def test_startup_and_shutdown_lines_in_order(servers):
    def run(s):
        started, code, log, body, _ = run_and_stop(s, "lifespan_apps:ok")
        assert started
        assert log == [STARTED, "INFO:     Waiting for application startup.", "APP: startup",
                       "INFO:     Application startup complete.", RUNNING] + SHUTDOWN_TAIL
        assert code == "stopped"
        return code, log

    servers.compare(run)


def test_state_from_startup_is_copied_into_each_request(servers):
    def run(s):
        started, _, _, body, _ = run_and_stop(s, "lifespan_apps:ok")
        assert body == {"has_state": True, "state": {"db": "connected", "items": [1, 2]}}
        # raw_app mutates its copy on every request: the next request still sees the original.
        srv = s.get()
        first = request(srv, "GET", "/state").json()
        second = request(srv, "GET", "/state").json()
        assert first == second == {"has_state": True, "state": {"counter": 0, "started_by": "raw_app"}}
        return body, first

    servers.compare(run)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_message_exits_3(servers, mode):
    def run(s):
        started, code, log, _, _ = run_and_stop(s, "lifespan_apps:startup_failed", "--lifespan", mode)
        assert not started
        assert code == 3
        assert log == [STARTED, "INFO:     Waiting for application startup.", "APP: startup (will fail)",
                       "ERROR:    database unreachable", "ERROR:    Application startup failed. Exiting."]
        return code, log

    servers.compare(run)


def test_startup_exception_in_auto_mode_is_treated_as_unsupported(servers):
    def run(s):
        started, code, log, body, _ = run_and_stop(s, "lifespan_apps:startup_raises", "--lifespan", "auto")
        assert started and body == b"hello"
        # No shutdown lines: the lifespan errored, so uvicorn skips it.
        assert log == [STARTED, "INFO:     Waiting for application startup.", "APP: startup (will raise)",
                       "INFO:     ASGI 'lifespan' protocol appears unsupported.",
                       "INFO:     Application startup complete.", RUNNING, "INFO:     Shutting down",
                       "INFO:     Finished server process [PID]"]
        return code, log

    servers.compare(run)


def test_startup_exception_in_on_mode_exits_3_with_traceback(servers):
    def run(s):
        started, code, log, _, srv = run_and_stop(s, "lifespan_apps:startup_raises", "--lifespan", "on")
        assert not started and code == 3
        assert log == [STARTED, "INFO:     Waiting for application startup.", "APP: startup (will raise)",
                       "ERROR:    Exception in 'lifespan' protocol", "ERROR:    Application startup failed. Exiting."]
        stderr = srv.log_lines(stream="stderr")
        assert "Traceback (most recent call last):" in stderr
        assert "ValueError: lifespan startup exploded" in stderr
        return code, log

    servers.compare(run)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_http_only_app(servers, mode):
    def run(s):
        started, code, log, body, _ = run_and_stop(s, "lifespan_apps:unsupported", "--lifespan", mode)
        if mode == "auto":
            assert started
            assert body == {"has_state": True, "state": {}}
            assert "INFO:     ASGI 'lifespan' protocol appears unsupported." in log
        else:
            assert not started and code == 3
            assert log[-2:] == ["ERROR:    Exception in 'lifespan' protocol",
                                "ERROR:    Application startup failed. Exiting."]
        return started, code, log

    servers.compare(run)


def test_lifespan_off_never_calls_the_app(servers):
    def run(s):
        started, code, log, body, _ = run_and_stop(s, "lifespan_apps:ok", "--lifespan", "off")
        assert started
        assert body == {"has_state": True, "state": {}}  # an empty state dict, still present
        assert log == [STARTED, RUNNING, "INFO:     Shutting down", "INFO:     Finished server process [PID]"]
        return code, log, body

    servers.compare(run)


def test_shutdown_failed_is_logged(servers):
    def run(s):
        started, code, log, _, _ = run_and_stop(s, "lifespan_apps:shutdown_failed", "--lifespan", "on")
        assert started
        assert log[-5:] == ["INFO:     Waiting for application shutdown.", "APP: shutdown (will fail)",
                            "ERROR:    could not flush", "ERROR:    Application shutdown failed. Exiting.",
                            "INFO:     Finished server process [PID]"]
        return code, log

    servers.compare(run)
