"""Each request runs in its own asyncio Task, in its own copy of the context, as under Uvicorn.

anyio's cancel scopes check task identity, it asks which library runs the current task, and
apps keep per-request state in contextvars: the report ``task_apps`` sends back must be the same
from both servers, request after request on one keep-alive connection and on fresh ones.
"""

from __future__ import annotations

import json
import time

import pytest

from rawhttp import build_request, connect, exchange

EXPECTED = {
    "is_task": True,
    "in_all_tasks": True,
    "same_task_after_receive": True,
    "same_task_after_sleep": True,
    "default_name": True,
    "new_task_per_request": True,
    "request_var_before": "unset",
    "lifespan_var": "unset",
    "anyio_backend": True,
    "first_message": "http.request",
}


def reports(srv) -> list[dict]:
    out = []
    with connect(srv) as conn:  # keep-alive: three requests, one connection
        for i in range(3):
            r = conn.request("GET", f"/keep-alive/{i}")
            assert r.status == 200, r
            out.append(r.json())
    for i in range(2):  # and on connections of their own
        with connect(srv) as conn:
            r = conn.request("GET", f"/fresh/{i}")
            assert r.status == 200, r
            out.append(r.json())
    return out


@pytest.mark.parametrize("app,factory", [("task_apps:identity", False),
                                         ("task_apps:identity_factory", True)])
def test_request_task_and_context(servers, app, factory):
    paths = ["/keep-alive/0", "/keep-alive/1", "/keep-alive/2", "/fresh/0", "/fresh/1"]

    def run(s):
        got = reports(s.spawn(app, "--lifespan", "on"))
        for report, path in zip(got, paths):
            assert {k: report[k] for k in EXPECTED} == EXPECTED, report
            assert report["request_var_after"] == path
            assert report["child_saw"] == [path]  # a task group's child inherits the request's context
            # A task factory the app installs is used for request tasks, as loop.create_task does.
            assert report["factory_installed"] is factory
            assert report["made_by_factory"] is factory, report
        return got

    servers.compare(run)


@pytest.mark.parametrize("app,factory", [("task_apps:identity", False),
                                         ("task_apps:identity_factory", True)])
def test_pipelined_requests_do_not_share_context(cppuvicorn_servers, app, factory):
    """A pipelined request starts when the previous response completes, inside the previous
    request's Task. Uvicorn 0.55 creates the next Task there with ``loop.create_task``, which
    copies that Task's context: the next request sees the previous one's contextvars (unless
    ``--reset-contextvars``). cppuvicorn gives every request a copy of the server's context."""
    srv = cppuvicorn_servers.spawn(app, "--lifespan", "on")
    paths = [f"/pipelined/{i}" for i in range(4)]
    responses, _ = exchange(srv, b"".join(build_request("GET", p) for p in paths), responses=len(paths))
    for r, path in zip(responses, paths):
        assert r.status == 200, r
        report = r.json()
        assert {k: report[k] for k in EXPECTED} == EXPECTED, report
        assert report["request_var_after"] == path
        assert report["child_saw"] == [path]
        assert report["made_by_factory"] is factory, report


def test_receive_waits_on_the_loops_own_futures(servers):
    """With a loop of the app's own (``--loop module:factory``) whose create_future is its
    own, a receive() that has to wait uses it, under both servers. (cppuvicorn makes futures
    directly only for asyncio's and uvloop's loops, whose create_future is Future(loop=loop).)"""

    def run(s):
        srv = s.spawn("task_apps:count_futures", "--loop", "task_apps:counting_loop")
        with connect(srv) as conn:
            head = (b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            conn.send(head + b"01234")
            time.sleep(0.3)  # the app is waiting in receive() for the rest
            conn.send(b"56789")
            r = conn.read_response("POST")
        assert r.status == 200, r
        return r.json()

    got = servers.compare(run)
    assert got == {"loop": "CountingLoop", "made_while_receiving": True, "size": 10}, got


def test_first_step_needs_no_loop_round_trip(servers):
    """cppuvicorn runs a request Task's first step itself, once the reads of the loop pass are
    done (3.12+: eager start), instead of leaving it to loop.call_soon as Uvicorn's create_task
    does; the Task's later steps come back through the loop as usual. ``--loop
    task_apps:step_loop`` notes every Task step the loop is asked to schedule."""

    def run(s):
        srv = s.spawn("task_apps:first_step", "--loop", "task_apps:step_loop")
        with connect(srv) as conn:
            out = []
            for i in range(3):
                r = conn.request("GET", f"/{i}")
                assert r.status == 200, r
                out.append(r.json())
        return out

    for kind in filter(None, (servers, servers.oracle)):
        expected = {"loop": "StepLoop", "scheduled_before_first_step": kind.is_oracle,
                    "scheduled_after_sleep": True}
        assert run(kind) == [expected] * 3, kind.kind


def test_body_sent_with_its_head_is_one_message(servers):
    """A POST whose body comes in the same packet as its head: the app's first receive() gets
    all of it with more_body False, as under Uvicorn (not the body so far, then an empty end),
    although the Task starts before the body is parsed."""

    def run(s):
        srv = s.spawn("task_apps:receive_log")
        out = []
        with connect(srv) as conn:
            for size in (10, 1000):
                conn.send(b"POST /log HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size
                          + b"x" * size)
                r = conn.read_response("POST")
                assert r.status == 200, r
                out.append(r.json())
        return out

    assert servers.compare(run) == [[[10, False]], [[1000, False]]]


def test_waiting_receive_is_woken_without_a_loop_round_trip(servers):
    """A Task suspended in receive() is resumed by cppuvicorn once the read that brings its
    message is parsed, not through loop.call_soon as under Uvicorn (where the future's done
    callback wakes it a loop turn later): for WebSocket messages, and for request body that
    arrives after the head."""
    from websockets.sync.client import connect as ws_connect

    def run(s):
        srv = s.spawn("task_apps:wakeups", "--loop", "task_apps:step_loop")
        with ws_connect(f"ws://{srv.host}:{srv.port}/", open_timeout=10) as ws:
            for text in ("one", "two", "done"):
                assert ws.recv(timeout=10) == "ready"
                ws.send(text)
            ws_flags = json.loads(ws.recv(timeout=10))
        with connect(srv) as conn:
            conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nabc")
            time.sleep(0.3)  # the Task waits in its second receive() by now
            conn.send(b"def")
            r = conn.read_response("POST")
            assert r.status == 200, r
            http_flags = r.json()
        return ws_flags, http_flags

    for kind in filter(None, (servers, servers.oracle)):
        woken_by_loop = kind.is_oracle
        assert run(kind) == ([woken_by_loop] * 3, [False, woken_by_loop]), kind.kind
