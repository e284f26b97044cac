"""``--metrics-port``: the supervisor's Prometheus endpoint, summing every worker's counters.

Each test starts ``python -m cppuvicorn metrics_apps:app --metrics-port 0 ...`` (the endpoint's
port is read from the supervisor's ``Prometheus metrics on http://…/metrics`` line), sends a
known set of requests over raw sockets (so the byte counters can be checked exactly), scrapes
and asserts exact values. cppuvicorn only: Uvicorn has no metrics endpoint to compare with.
Apps: ``apps/metrics_apps.py``; process helpers from ``test_supervisor``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

from websockets.sync.client import connect as ws_connect

from conftest import ServerProcess
from support import wait_until
from test_supervisor import DIED_RE, children, wait_workers

APP = "metrics_apps:app"
METRICS_LINE = r"^INFO:     Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics$"
SAMPLE_RE = re.compile(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$")


def spawn(servers, *args: str, workers: int = 2) -> tuple[ServerProcess, int]:
    srv = servers.spawn(APP, "--workers", str(workers), "--metrics-port", "0", "--no-access-log", *args)
    port = int(srv.wait_for_line(METRICS_LINE, stream="stderr").group(1))
    wait_workers(srv, workers)
    return srv, port


def http(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """One exchange on a fresh connection that the server closes; the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def request(port: int, path: str, method: str = "GET") -> tuple[int, int, int]:
    """(status, bytes sent, bytes received) of one request on its own connection."""
    raw = f"{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode()
    data = http(port, raw)
    return int(data.split(b" ", 2)[1]), len(raw), len(data)


def scrape(port: int) -> dict[str, float]:
    data = http(port, b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in head, head
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        samples[m.group(1)] = float(m.group(2))
    return samples


def requests_by_class(m: dict[str, float]) -> dict[str, float]:
    return {c: m[f'cppuvicorn_http_requests_total{{status="{c}"}}'] for c in ("1xx", "2xx", "3xx", "4xx", "5xx")}


def counters(m: dict[str, float]) -> dict[str, float]:
    """Every sample that must never decrease (counters and histogram buckets)."""
    return {k: v for k, v in m.items() if k.split("{")[0].endswith(("_total", "_bucket", "_count", "_sum"))}


def assert_consistent(m: dict[str, float]) -> None:
    """A quiet server: nothing in flight, the histogram counts every classed request."""
    assert m["cppuvicorn_http_requests_in_flight"] == 0, m
    assert m["cppuvicorn_http_request_duration_seconds_count"] == sum(requests_by_class(m).values()), m
    assert m['cppuvicorn_http_request_duration_seconds_bucket{le="+Inf"}'] == (
        m["cppuvicorn_http_request_duration_seconds_count"])


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process ``pid`` holds a listening socket for (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ----------------------------------------------------------------------------- tests


def test_exact_counts_websocket_and_a_killed_worker(cppuvicorn_servers):
    srv, mport = spawn(cppuvicorn_servers)
    start = scrape(mport)
    assert all(v == 0 for k, v in start.items() if k != "cppuvicorn_workers"), start
    assert start["cppuvicorn_workers"] == 2

    # Concurrent clients, so both workers serve some of them.
    plan = ["/ok"] * 40 + ["/missing"] * 12 + ["/error"] * 6
    results: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def client(paths):
        for path in paths:
            r = request(srv.port, path)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(plan[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r[0] for r in results)
    assert statuses == sorted([200] * 40 + [404] * 12 + [500] * 6), statuses

    m = scrape(mport)
    assert requests_by_class(m) == {"1xx": 0, "2xx": 40, "3xx": 0, "4xx": 12, "5xx": 6}, m
    assert_consistent(m)
    assert m["cppuvicorn_connections_total"] == len(plan)
    assert m["cppuvicorn_connections_open"] == 0
    assert m["cppuvicorn_received_bytes_total"] == sum(r[1] for r in results)
    assert m["cppuvicorn_sent_bytes_total"] == sum(r[2] for r in results)
    assert m["cppuvicorn_http_request_duration_seconds_sum"] > 0
    assert m["cppuvicorn_worker_restarts_total"] == 0

    # A slow request is in flight (and its connection open) until it answers.
    slow = threading.Thread(target=lambda: results.append(request(srv.port, "/slow?t=1.5")))
    slow.start()
    during = wait_until(lambda: (s := scrape(mport))["cppuvicorn_http_requests_in_flight"] == 1 and s, timeout=3)
    assert during, scrape(mport)
    assert during["cppuvicorn_connections_open"] == 1
    slow.join()
    assert_consistent(scrape(mport))

    # A WebSocket session: open while connected, not an HTTP request.
    with ws_connect(f"ws://127.0.0.1:{srv.port}/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        m = scrape(mport)
        assert m["cppuvicorn_websockets_open"] == 1
        assert m["cppuvicorn_websockets_total"] == 1
        assert m["cppuvicorn_connections_open"] == 1
    closed = wait_until(lambda: (s := scrape(mport))["cppuvicorn_websockets_open"] == 0 and s, timeout=3)
    assert closed, scrape(mport)
    assert closed["cppuvicorn_websockets_total"] == 1
    assert requests_by_class(closed)["2xx"] == 41  # the slow one; the handshake is not counted
    assert closed["cppuvicorn_connections_open"] == 0
    assert closed["cppuvicorn_received_bytes_total"] > sum(r[1] for r in results)  # + the session
    before_kill = closed

    # SIGKILL a worker: it is replaced, and nothing it counted is lost.
    kids = children(srv.pid)
    victim = min(kids)
    os.kill(victim, signal.SIGKILL)
    srv.wait_for_line(DIED_RE.format(pid=victim), timeout=5, stream="stderr")
    wait_workers(srv, 2, exclude={victim})
    after = scrape(mport)
    assert after["cppuvicorn_worker_restarts_total"] == 1
    assert after["cppuvicorn_worker_blocked_kills_total"] == 0
    assert after["cppuvicorn_workers"] == 2
    for key, value in counters(before_kill).items():
        assert after[key] >= value, (key, value, after[key])
    assert requests_by_class(after) == requests_by_class(before_kill)
    assert_consistent(after)

    # The new worker counts on top of the retired totals.
    for _ in range(5):
        assert request(srv.port, "/ok")[0] == 200
    final = scrape(mport)
    assert requests_by_class(final)["2xx"] == 46
    assert_consistent(final)


def test_scraping_under_load_is_monotonic_and_exact_at_the_end(cppuvicorn_servers):
    srv, mport = spawn(cppuvicorn_servers)
    stop = threading.Event()
    done = [0] * 4
    failures: list[str] = []

    def client(i: int) -> None:
        # Keep-alive connections: many requests per connection.
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                    for _ in range(50):
                        s.sendall(b"GET /ok HTTP/1.1\r\nhost: test\r\n\r\n")
                        data = b""
                        while not data.endswith(b"ok"):
                            chunk = s.recv(65536)
                            assert chunk, "connection closed"
                            data += chunk
                        assert data.startswith(b"HTTP/1.1 200 "), data
                        done[i] += 1
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    previous: dict[str, float] = {}
    scrapes = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = scrape(mport)
        scrapes += 1
        for key, value in counters(previous).items():
            assert m[key] >= value, (key, value, m[key])
        assert 0 <= m["cppuvicorn_http_requests_in_flight"] <= 4
        previous = m
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not failures, failures
    assert scrapes >= 20
    final = wait_until(lambda: (s := scrape(mport))["cppuvicorn_connections_open"] == 0 and s, timeout=3)
    assert final, scrape(mport)
    assert requests_by_class(final)["2xx"] == sum(done) > 500, (final, done)
    assert_consistent(final)


def test_concurrency_limit_503s_are_counted(cppuvicorn_servers):
    srv, mport = spawn(cppuvicorn_servers, "--limit-concurrency", "2", workers=1)
    slow = threading.Thread(target=lambda: request(srv.port, "/slow?t=1"))
    slow.start()
    assert wait_until(lambda: scrape(mport)["cppuvicorn_http_requests_in_flight"] == 1, timeout=3)
    assert request(srv.port, "/ok")[0] == 503
    slow.join()
    m = scrape(mport)
    assert m["cppuvicorn_concurrency_limit_rejections_total"] == 1
    assert requests_by_class(m) == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 1}, m
    assert_consistent(m)


def test_blocked_loop_kill_is_counted(cppuvicorn_servers):
    srv, mport = spawn(cppuvicorn_servers, "--timeout-worker-healthcheck", "1", workers=1)
    (victim,) = children(srv.pid)
    # Its connection dies with the worker: no response.
    blocked = threading.Thread(target=_ignore_errors, args=(http, srv.port, b"GET /block?t=30 HTTP/1.1\r\n\r\n"),
                               daemon=True)
    blocked.start()
    srv.wait_for_line(DIED_RE.format(pid=victim), timeout=6, stream="stderr")
    wait_workers(srv, 1, exclude={victim})
    m = scrape(mport)
    assert m["cppuvicorn_worker_blocked_kills_total"] == 1
    assert m["cppuvicorn_worker_restarts_total"] == 1
    assert m["cppuvicorn_http_requests_in_flight"] == 0  # the blocked request died with its worker
    assert m["cppuvicorn_connections_open"] == 0


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def test_endpoint_answers_only_get_and_head_of_metrics(cppuvicorn_servers):
    srv, mport = spawn(cppuvicorn_servers, workers=1)
    assert http(mport, b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 Not Found\r\n")
    resp = http(mport, b"POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"\r\nAllow: GET, HEAD\r\n" in resp
    head = http(mport, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), head
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) > 1000
    # A client that never finishes its request is dropped, and the endpoint keeps serving.
    with socket.create_connection(("127.0.0.1", mport)) as idle:
        idle.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert scrape(mport)["cppuvicorn_workers"] == 1


def test_single_worker_runs_under_the_supervisor(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(APP, "--metrics-port", "0", "--no-access-log")
    mport = int(srv.wait_for_line(METRICS_LINE, stream="stderr").group(1))
    wait_workers(srv, 1)
    assert request(srv.port, "/ok")[0] == 200
    m = scrape(mport)
    assert m["cppuvicorn_workers"] == 1
    assert requests_by_class(m)["2xx"] == 1
    assert listening_ports(srv.pid) == {srv.port, mport}


def test_metrics_off_opens_no_port(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(APP, "--workers", "2", "--no-access-log")
    kids = wait_workers(srv, 2)
    assert listening_ports(srv.pid) == {srv.port}
    for pid in kids:
        assert listening_ports(pid) == {srv.port}
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert b"CPPUVICORN_METRICS" not in f.read()
    assert not [line for line in srv.log_lines("stderr") if "metrics" in line.lower()]


def test_metrics_port_in_use_fails_startup(cppuvicorn_servers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = cppuvicorn_servers.spawn(APP, "--metrics-port", str(port), wait_ready=False)
        assert srv.wait_exit(timeout=10) == 3
    assert any(re.match(rf"^ERROR:    could not listen on 127\.0\.0\.1:{port} for metrics: ", line)
               for line in srv.log_lines("stderr")), srv.log_text()
    assert not [line for line in srv.log_lines("stderr") if "Started server process" in line]  # no worker


def test_env_var_and_rolling_restart(cppuvicorn_servers):
    # CPPUVICORN_METRICS_PORT, as every option's CPPUVICORN_<NAME>.
    srv = cppuvicorn_servers.spawn(APP, "--workers", "2", "--no-access-log", env={"CPPUVICORN_METRICS_PORT": "0"})
    mport = int(srv.wait_for_line(METRICS_LINE, stream="stderr").group(1))
    kids = wait_workers(srv, 2)
    for _ in range(3):
        assert request(srv.port, "/ok")[0] == 200
    srv.send_signal(signal.SIGHUP)  # both workers replaced, one at a time
    wait_workers(srv, 2, exclude=kids, timeout=20)
    m = scrape(mport)
    assert m["cppuvicorn_worker_restarts_total"] == 2
    assert m["cppuvicorn_worker_blocked_kills_total"] == 0
    assert requests_by_class(m)["2xx"] == 3
    assert_consistent(m)


def test_metrics_host_binds_the_given_address(cppuvicorn_servers):
    """--metrics-host: the endpoint listens there (here 127.0.0.2, also loopback), not on 127.0.0.1."""
    srv = cppuvicorn_servers.spawn(APP, "--workers", "1", "--metrics-port", "0", "--metrics-host", "127.0.0.2",
                                   "--no-access-log")
    port = int(srv.wait_for_line(r"^INFO:     Prometheus metrics on http://127\.0\.0\.2:(\d+)/metrics$",
                                 stream="stderr").group(1))
    wait_workers(srv, 1)
    with socket.create_connection(("127.0.0.2", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    assert refused
