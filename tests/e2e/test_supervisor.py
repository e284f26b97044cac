"""``--workers N``: the native supervisor (``cppuvicorn-supervisor``) and its worker processes.

Every test starts ``python -m cppuvicorn supervisor_apps:app --workers 2 ...`` (which execs the
supervisor, so the spawned pid *is* the supervisor) and watches its children through ``/proc``.
Requests go over fresh loopback connections (``Connection: close``) unless a test needs a
keep-alive one. Apps: ``apps/supervisor_apps.py``.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import ServerProcess
from rawhttp import Conn, build_request
from support import log_messages, wait_until

APP = "supervisor_apps:app"
RUNNING_RE = r"^INFO:     cppuvicorn running on http://127\.0\.0\.1:\d+ \(Press CTRL\+C to quit\)$"
STARTED_RE = re.compile(r"^INFO:     Started server process \[(\d+)\]$")
DIED_RE = r"^(?:INFO|WARNING):  ? ?Child process \[{pid}\] died"


# ----------------------------------------------------------------------------- helpers


def children(pid: int) -> set[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ...
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def get(srv: ServerProcess, path: str = "/pid", timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body). Raises OSError on a failed exchange."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError(f"incomplete response: {data!r}")
    return int(head.split(b" ", 2)[1]), body


def get_pid(srv: ServerProcess, timeout: float = 5.0) -> int:
    status, body = get(srv, "/pid", timeout)
    assert status == 200, (status, body)
    return int(body)


def ready_pids(srv: ServerProcess) -> set[int]:
    """Workers whose lifespan startup completed (the app logs ``APP: startup [pid]``)."""
    return {int(m.group(1)) for line in srv.log_lines("stderr")
            if (m := re.match(r"^APP: startup \[(\d+)\]$", line))}


def wait_workers(srv: ServerProcess, n: int, timeout: float = 10.0, exclude=()) -> set[int]:
    """Wait until the supervisor has exactly ``n`` children, all started up and none in
    ``exclude``; return their pids."""
    def check():
        kids = children(srv.pid)
        if len(kids) == n and not kids & set(exclude) and kids <= ready_pids(srv):
            return kids
        return None
    kids = wait_until(check, timeout=timeout)
    assert kids, (f"expected {n} ready workers (not {sorted(exclude)}), have {sorted(children(srv.pid))}, "
                  f"ready {sorted(ready_pids(srv))}\n{srv.log_text()}")
    time.sleep(0.2)  # startup complete → listening: a moment
    return kids


def spawn(servers, *args: str, workers: int = 2, env=None, wait: bool = True) -> ServerProcess:
    srv = servers.spawn(APP, "--workers", str(workers), *args, env=env)
    if wait:
        wait_workers(srv, workers)
    return srv


class Load:
    """Client threads sending requests on fresh connections until stopped; records
    (time, pid or None, error) per request."""

    def __init__(self, srv: ServerProcess, threads: int = 1, interval: float = 0.0, timeout: float = 10.0):
        self.srv = srv
        self.interval = interval
        self.timeout = timeout
        self.results: list[tuple[float, int | None, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                status, body = get(self.srv, "/pid", self.timeout)
                result = (t, int(body), None) if status == 200 else (t, None, f"status {status}")
            except (OSError, ValueError) as exc:
                result = (t, None, repr(exc))
            with self._lock:
                self.results.append(result)
            if self.interval:
                self._stop.wait(self.interval)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 2)

    def snapshot(self) -> list[tuple[float, int | None, str | None]]:
        with self._lock:
            return list(self.results)

    def failures(self, since: float = 0.0) -> list[tuple[float, int | None, str | None]]:
        return [r for r in self.snapshot() if r[2] is not None and r[0] >= since]

    def pids(self, since: float = 0.0) -> collections.Counter:
        return collections.Counter(r[1] for r in self.snapshot() if r[1] is not None and r[0] >= since)


def wait_serving(srv: ServerProcess, expected: set[int], timeout: float = 5.0) -> collections.Counter:
    """Concurrent load (4 clients) until every pid in ``expected`` served a request. Sequential
    requests may all land on one worker (whichever wakes first accepts), so load is concurrent."""
    with Load(srv, threads=4) as load:
        wait_until(lambda: set(load.pids()) >= expected, timeout=timeout)
    assert not load.failures(), load.failures()[:5]
    seen = load.pids()
    assert set(seen) == expected, (seen, expected)
    return seen


def count_lines(srv: ServerProcess, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in srv.log_lines("stderr") if regex.search(line))


def line_index(lines: list[str], pattern: str) -> int:
    regex = re.compile(pattern)
    for i, line in enumerate(lines):
        if regex.search(line):
            return i
    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- start-up


def test_startup_processes_and_log_lines(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, workers=3)
    kids = children(srv.pid)
    assert len(kids) == 3
    for pid in kids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"cppuvicorn._worker" in f.read()
    lines = srv.log_lines("stderr")
    # The running line once, from the parent, followed by the parent line (Uvicorn's order).
    running = [i for i, line in enumerate(lines) if re.match(RUNNING_RE, line)]
    assert len(running) == 1, lines
    assert lines[running[0] + 1] == f"INFO:     Started parent process [{srv.pid}]", lines
    assert count_lines(srv, r"Started parent process") == 1
    started = {int(m.group(1)) for line in lines if (m := STARTED_RE.match(line))}
    assert started == kids, (started, kids)
    assert count_lines(srv, r"^INFO:     Application startup complete\.$") == 3
    wait_serving(srv, kids)  # every worker serves


def test_startup_log_matches_uvicorn(servers):
    """The start-up log of ``--workers 2`` is Uvicorn's (per-worker lines may interleave)."""
    def run(s):
        srv = s.spawn(APP, "--workers", "2")
        srv.wait_for_line(r"Application startup complete", stream="stderr")
        wait_until(lambda: count_lines(srv, r"Application startup complete") == 2, timeout=10)
        time.sleep(0.3)
        log = log_messages(srv.log_lines("stderr"))
        return log[:2], sorted(collections.Counter(log[2:]).items())
    head, _ = servers.compare(run, "start-up log")
    assert head == ["INFO:     <server> running on http://127.0.0.1:PORT (Press CTRL+C to quit)",
                    "INFO:     Started parent process [PID]"]


# ----------------------------------------------------------------------------- load spread


def _measure_spread(srv, total):
    """Shares (pid -> %) of `total` requests from 4 client threads, each on a fresh connection."""
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    errors = []

    def client(n):
        for _ in range(n):
            try:
                pid = get_pid(srv)
            except (OSError, AssertionError) as exc:
                errors.append(repr(exc))
                continue
            with lock:
                counts[pid] += 1

    threads = [threading.Thread(target=client, args=(total // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]
    return {pid: round(100 * n / total, 1) for pid, n in counts.items()}


def test_load_spreads_across_workers(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--no-access-log")
    kids = children(srv.pid)
    total = 2000
    # The workers share one listening socket (as Uvicorn's do). Each takes one connection per
    # loop turn, once the requests it already read have started, so neither runs away with
    # the queue: one 2000-request sample must be within the bound.
    shares = _measure_spread(srv, total)
    print(f"\nload spread (4 concurrent clients, {total} requests): {sorted(shares.values())}")
    assert set(shares) == kids, (shares, kids)
    assert all(35 <= share <= 65 for share in shares.values()), shares


# ----------------------------------------------------------------------------- dying workers


def test_killed_worker_is_replaced(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--no-access-log")
    kids = children(srv.pid)
    victim = min(kids)
    with Load(srv, interval=0.02) as load:
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        srv.wait_for_line(DIED_RE.format(pid=victim), timeout=5, stream="stderr")
        new_kids = wait_workers(srv, 2, exclude={victim})
        assert kids - {victim} <= new_kids  # the other worker was left alone
        replaced_at = time.monotonic()
        time.sleep(0.5)
    after = [get_pid(srv) for _ in range(200)]
    assert set(after) <= new_kids, collections.Counter(after)
    wait_serving(srv, new_kids)
    # Light load kept being served; only a request that the killed worker held may fail.
    assert len(load.failures()) <= 1, load.failures()
    assert not load.failures(since=replaced_at)
    assert len(load.snapshot()) > 20
    assert srv.alive()
    assert count_lines(srv, r"Child process \[\d+\] died") == 1


def test_blocked_event_loop_is_detected_and_replaced(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--timeout-worker-healthcheck", "1")
    kids = children(srv.pid)
    blocked = Conn(srv, timeout=10)
    blocked.send(build_request("GET", "/block?t=30"))
    m = srv.wait_for_line(r"^APP: block start 30\.0 \[(\d+)\]$", stream="stderr")
    victim = int(m.group(1))
    assert victim in kids
    (other,) = kids - {victim}
    start = time.monotonic()
    with Load(srv, interval=0.02) as load:
        srv.wait_for_line(rf"^ERROR:    Child process \[{victim}\] event loop blocked for more than 1s",
                          timeout=4, stream="stderr")
        detected = time.monotonic() - start
        srv.wait_for_line(DIED_RE.format(pid=victim), timeout=3, stream="stderr")
        wait_workers(srv, 2, exclude={victim})
    assert detected < 3, detected
    assert not pid_alive(victim)
    # The blocked worker's stack was printed, down to the blocking call in the app.
    log = srv.log_text()
    assert re.search(r'File ".*supervisor_apps\.py", line \d+ in block_the_loop', log), log
    assert re.search(r'File ".*supervisor_apps\.py", line \d+ in app', log), log
    # Meanwhile the other worker kept serving every request.
    assert not load.failures(), load.failures()
    assert set(load.pids()) - {other} <= children(srv.pid)
    assert load.pids()[other] >= 10, load.pids()
    assert blocked.is_closed(2)  # its request died with the worker
    blocked.close()


def test_slow_async_request_is_not_a_blocked_loop(cppuvicorn_servers):
    """The heartbeat comes from the event loop: awaiting for longer than the health-check
    timeout is fine."""
    srv = spawn(cppuvicorn_servers, "--timeout-worker-healthcheck", "1")
    kids = children(srv.pid)
    status, body = get(srv, "/slow?t=2.5")
    assert status == 200 and body.startswith(b"slow ")
    assert children(srv.pid) == kids
    assert count_lines(srv, r"blocked|died") == 0, srv.log_text()


# ----------------------------------------------------------------------------- shutdown


def test_sigterm_drains_in_flight_request(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers)
    kids = children(srv.pid)
    idle = Conn(srv)
    assert idle.request("GET", "/pid").status == 200  # an idle keep-alive connection now
    busy = Conn(srv, timeout=10)
    busy.send(build_request("GET", "/slow?t=1.5"))
    srv.wait_for_line(r"^APP: slow start", stream="stderr")
    sent = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert idle.is_closed(1.5), "idle keep-alive connection not closed on shutdown"
    # Nobody accepts any more: the parent and every worker closed the listening socket.
    def refused():
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False
    assert wait_until(refused, timeout=1.5), "still accepting connections after SIGTERM"
    r = busy.read_response(timeout=5)
    assert r.status == 200 and r.body.startswith(b"slow ")
    assert r.header("connection") == b"close"
    code = srv.wait_exit(5)
    assert code == 0, srv.log_text()
    assert time.monotonic() - sent < 4
    lines = srv.log_lines("stderr")
    line_index(lines, r"^INFO:     Received SIGTERM, exiting\.$")
    for pid in kids:
        assert f"INFO:     Terminated child process [{pid}]" in lines
        assert f"APP: shutdown [{pid}]" in lines
        assert f"INFO:     Finished server process [{pid}]" in lines
    assert count_lines(srv, r"^INFO:     Application shutdown complete\.$") == 2
    assert lines[-1] == f"INFO:     Stopping parent process [{srv.pid}]"
    assert line_index(lines, r"^APP: slow done") < line_index(lines, r"Stopping parent process")
    assert not any(pid_alive(pid) for pid in kids)
    busy.close()
    idle.close()


def test_graceful_timeout_cancels_tasks(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--timeout-graceful-shutdown", "1")
    kids = children(srv.pid)
    busy = Conn(srv, timeout=10)
    busy.send(build_request("GET", "/slow?t=30"))
    srv.wait_for_line(r"^APP: slow start", stream="stderr")
    sent = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    code = srv.wait_exit(6)
    assert code == 0, srv.log_text()
    assert time.monotonic() - sent < 3.5
    assert count_lines(srv, r"^ERROR:    Cancel 1 running task\(s\), timeout graceful shutdown exceeded$") == 1, srv.log_text()
    assert count_lines(srv, r"^INFO:     Finished server process") == 2
    assert count_lines(srv, r"did not stop in time") == 0  # the worker stopped by itself
    assert not any(pid_alive(pid) for pid in kids)
    busy.close()


def test_lingering_worker_is_killed_after_graceful_timeout(cppuvicorn_servers):
    # A worker whose loop is blocked cannot even see the SIGTERM: the supervisor kills it
    # once --timeout-graceful-shutdown (plus a margin) has passed.
    srv = spawn(cppuvicorn_servers, "--timeout-graceful-shutdown", "1", "--timeout-worker-healthcheck", "60")
    kids = children(srv.pid)
    blocked = Conn(srv, timeout=10)
    blocked.send(build_request("GET", "/block?t=30"))
    m = srv.wait_for_line(r"^APP: block start 30\.0 \[(\d+)\]$", stream="stderr")
    victim = int(m.group(1))
    sent = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    code = srv.wait_exit(8)
    elapsed = time.monotonic() - sent
    assert code == 0, srv.log_text()
    assert 1 <= elapsed < 5, elapsed
    assert count_lines(srv, rf"^WARNING:  Child process \[{victim}\] did not stop in time; killing it\.$") == 1
    (other,) = kids - {victim}
    assert f"INFO:     Finished server process [{other}]" in srv.log_lines("stderr")
    assert not any(pid_alive(pid) for pid in kids)
    blocked.close()


def test_second_sigint_forces_exit(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers)
    kids = children(srv.pid)
    busy = Conn(srv, timeout=10)
    busy.send(build_request("GET", "/slow?t=30"))
    srv.wait_for_line(r"^APP: slow start", stream="stderr")
    srv.send_signal(signal.SIGINT)
    srv.wait_for_line(r"Waiting for connections to close", stream="stderr")
    time.sleep(0.3)
    assert srv.alive(), "exited before the in-flight request finished"
    sent = time.monotonic()
    srv.send_signal(signal.SIGINT)
    code = srv.wait_exit(3)
    assert code is not None, "a second SIGINT did not force the exit"
    assert time.monotonic() - sent < 2
    assert count_lines(srv, r"Received SIGINT again, forcing exit") == 1
    assert not any(pid_alive(pid) for pid in kids)
    busy.close()


def test_timeout_drain_keeps_serving_after_sigterm(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--timeout-drain", "2")
    kids = children(srv.pid)
    sent = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    served = []
    while time.monotonic() - sent < 1.5:
        served.append(get_pid(srv))  # fails the test on any error
        time.sleep(0.05)
    assert set(served) <= kids and len(served) > 10
    assert srv.alive()
    assert children(srv.pid) == kids
    code = srv.wait_exit(6)
    assert code == 0, srv.log_text()
    assert time.monotonic() - sent >= 2
    assert count_lines(srv, r"^INFO:     Draining: still serving for 2s") == 1
    lines = srv.log_lines("stderr")
    assert line_index(lines, r"Draining") < line_index(lines, r"Terminated child process")
    assert count_lines(srv, r"^APP: shutdown \[\d+\]$") == 2


# ----------------------------------------------------------------------------- pool changes


def test_sighup_rolling_restart_without_failed_requests(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--no-access-log")
    with Load(srv, threads=2) as load:
        for _ in range(2):  # two restarts in a row: 4 workers retired under load
            old = children(srv.pid)
            peak = 0
            time.sleep(0.3)
            mark = srv.mark()
            srv.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                kids = children(srv.pid)
                peak = max(peak, len(kids))
                if len(kids) == 2 and not kids & old and kids <= ready_pids(srv):
                    break
                time.sleep(0.02)
            new = children(srv.pid)
            assert len(new) == 2 and not new & old, (old, new, srv.log_text(mark))
            assert peak <= 3, f"more than one extra worker at a time ({peak})"
            wait_until(lambda: all(f"INFO:     Finished server process [{pid}]" in srv.log_lines("stderr")
                                   for pid in old), timeout=5)
            lines = srv.log_lines("stderr", after=mark)
            assert lines[0] == "INFO:     Received SIGHUP, restarting processes."
            # One at a time: each old worker is terminated once a new one is up, and the next
            # new worker starts after the previous old one finished.
            terminated = [int(m.group(1)) for line in lines
                          if (m := re.match(r"^INFO:     Terminated child process \[(\d+)\]$", line))]
            assert sorted(terminated) == sorted(old)
            started = [int(m.group(1)) for line in lines if (m := STARTED_RE.match(line))]
            assert sorted(started) == sorted(new)
            for new_pid, old_pid in zip(started, terminated):
                assert line_index(lines, rf"^APP: startup \[{new_pid}\]$") < \
                    line_index(lines, rf"Terminated child process \[{old_pid}\]$")
            assert line_index(lines, rf"Finished server process \[{terminated[0]}\]") < \
                line_index(lines, rf"Started server process \[{started[1]}\]")
        time.sleep(0.3)
        switched = time.monotonic()
        time.sleep(0.5)
    results = load.snapshot()
    assert len(results) > 200, len(results)
    assert not load.failures(), load.failures()[:5]
    assert set(load.pids(since=switched)) == new
    assert count_lines(srv, r"died") == 0
    assert srv.alive()


def test_sigttin_sigttou_resize_the_pool(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers)
    two = children(srv.pid)
    srv.send_signal(signal.SIGTTIN)
    three = wait_workers(srv, 3)
    assert two < three
    srv.wait_for_line(r"^INFO:     Received SIGTTIN, increasing the number of processes\.$", stream="stderr")
    wait_serving(srv, three)

    srv.send_signal(signal.SIGTTOU)
    back_to_two = wait_workers(srv, 2)
    assert back_to_two < three
    srv.send_signal(signal.SIGTTOU)
    one = wait_workers(srv, 1)
    assert one < back_to_two
    mark = srv.mark()
    srv.send_signal(signal.SIGTTOU)
    srv.wait_for_line(r"^INFO:     Received SIGTTOU, decreasing number of processes\.$", stream="stderr", after=mark)
    srv.wait_for_line(r"^INFO:     Already reached one process, cannot decrease the number of processes anymore\.$",
                      stream="stderr", after=mark)
    time.sleep(0.5)
    assert children(srv.pid) == one
    assert {get_pid(srv) for _ in range(20)} == one
    assert count_lines(srv, r"^INFO:     Received SIGTTOU, decreasing number of processes\.$") == 3
    assert count_lines(srv, r"died") == 0  # retired workers are not replaced
    assert count_lines(srv, r"^APP: shutdown \[\d+\]$") == 2  # they shut down gracefully


def test_startup_failure_exits_3_without_restart_loop(cppuvicorn_servers):
    start = time.monotonic()
    srv = cppuvicorn_servers.spawn(APP, "--workers", "2", env={"SUPERVISOR_APP_FAIL_STARTUP": "1"})
    code = srv.wait_exit(10)
    assert code == 3, srv.log_text()
    assert time.monotonic() - start < 8
    time.sleep(0.2)
    assert count_lines(srv, r"^APP: startup failing") <= 2
    assert count_lines(srv, STARTED_RE.pattern) <= 2
    assert count_lines(srv, r"failed to start, stopping the parent process\.$") == 1
    assert count_lines(srv, r"^ERROR:    Application startup failed\. Exiting\.$") >= 1
    assert srv.log_lines("stderr")[-1] == f"INFO:     Stopping parent process [{srv.pid}]"


# ----------------------------------------------------------------------------- per-worker limits


def test_limit_max_requests_replaces_workers_without_failures(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--no-access-log", "--limit-max-requests", "20",
                "--limit-max-requests-jitter", "5")
    first = children(srv.pid)
    seen: collections.Counter = collections.Counter()
    # Paced: a worker notices its count on its 0.1 s tick (as Uvicorn's), so it may serve
    # what arrives within one tick beyond its limit.
    for _ in range(120):
        seen[get_pid(srv, timeout=10)] += 1  # any failure fails the test
        time.sleep(0.01)
    for pid, n in seen.items():
        assert n <= 25 + 15, (pid, n, seen)
    assert len(seen) >= 3, seen
    assert set(seen) - first, "no new worker served"
    limits = [int(m.group(1)) for line in srv.log_lines("stderr")
              if (m := re.match(r"^INFO:     Maximum request limit of (\d+) exceeded\. Terminating process\.$", line))]
    assert limits and all(20 <= n <= 25 for n in limits), limits
    wait_workers(srv, 2)
    assert srv.alive()


def test_limit_concurrency_is_per_worker(cppuvicorn_servers):
    srv = spawn(cppuvicorn_servers, "--limit-concurrency", "2")
    conns = [Conn(srv, timeout=10) for _ in range(6)]
    time.sleep(0.2)
    for c in conns:
        c.send(build_request("GET", "/slow?t=1"))
    responses = [c.read_response(timeout=5) for c in conns]
    statuses = collections.Counter(r.status for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    # Each worker has at most one request running with a limit of 2 (its connection counts).
    assert statuses[200] <= 2 and statuses[503] >= 4, statuses
    r503 = next(r for r in responses if r.status == 503)
    assert r503.body == b"Service Unavailable"
    assert r503.header("content-type") == b"text/plain; charset=utf-8"
    for c in conns:
        c.close()


def test_sighup_with_broken_new_worker_keeps_old_workers(cppuvicorn_servers, tmp_path):
    """A rolling restart whose new worker fails to start (exit code 3: a broken deploy) is
    aborted; the old workers keep serving and the pool keeps its size (as Uvicorn's)."""
    broken = tmp_path / "broken"
    srv = spawn(cppuvicorn_servers, env={"SUPERVISOR_APP_FAIL_FILE": str(broken)})
    old = children(srv.pid)
    broken.touch()
    srv.send_signal(signal.SIGHUP)
    m = srv.wait_for_line(r"^ERROR:    New child process \[(\d+)\] failed to start; keeping worker \[(\d+)\] "
                          r"and aborting the restart\.$", timeout=8, stream="stderr")
    assert int(m.group(2)) in old
    time.sleep(0.5)
    assert srv.alive(), srv.log_text()
    assert children(srv.pid) == old
    wait_serving(srv, old)
    assert count_lines(srv, r"^APP: startup failing") == 1
    assert count_lines(srv, r"stopping the parent process|died") == 0
    # Fixed: the next SIGHUP restarts every worker.
    broken.unlink()
    srv.send_signal(signal.SIGHUP)
    wait_workers(srv, 2, exclude=old)
    assert srv.alive()


def test_ctrl_c_to_the_process_group(cppuvicorn_servers):
    """Ctrl+C in a terminal signals every process of the group: the workers shut down
    gracefully too, and none prints a KeyboardInterrupt traceback."""
    srv = spawn(cppuvicorn_servers)
    kids = children(srv.pid)
    assert get_pid(srv) in kids
    os.killpg(srv.pid, signal.SIGINT)  # the server runs in its own session (see ServerProcess)
    assert srv.wait_exit(5) == 0, srv.log_text()
    log = srv.log_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    for pid in kids:
        assert f"INFO:     Finished server process [{pid}]" in srv.log_lines("stderr")
    assert srv.log_lines("stderr")[-1] == f"INFO:     Stopping parent process [{srv.pid}]"


# ----------------------------------------------------------------------------- signals during a rolling restart


class ChildWatch:
    """Polls the supervisor's children in a thread: every pid seen, and the most at once."""

    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.seen: set[int] = set()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = children(self.srv.pid)
            self.seen |= kids
            self.peak = max(self.peak, len(kids))
            self._stop.wait(0.01)

    def __enter__(self) -> "ChildWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def test_sigttou_during_rolling_restart(cppuvicorn_servers):
    """SIGTTOU while SIGHUP replaces 3 workers: an old worker still waiting for its turn is
    the one retired, the restart goes on, and the pool ends at 2 new workers."""
    srv = spawn(cppuvicorn_servers, "--no-access-log", workers=3)
    old = children(srv.pid)
    with ChildWatch(srv) as watch, Load(srv, threads=2) as load:
        srv.send_signal(signal.SIGHUP)
        wait_until(lambda: len(children(srv.pid)) == 4, timeout=5)  # the first new worker is starting
        srv.send_signal(signal.SIGTTOU)
        new = wait_workers(srv, 2, timeout=20, exclude=old)
        time.sleep(1.0)  # settled: nothing else starts or stops
        assert children(srv.pid) == new
    assert watch.peak <= 4, f"more than one extra worker at a time ({watch.peak})"
    assert len(watch.seen - old) == 2, (sorted(watch.seen), sorted(old))  # no extra worker started
    assert not load.failures(), load.failures()[:5]
    assert count_lines(srv, r"died") == 0
    assert count_lines(srv, r"^APP: shutdown \[\d+\]$") == 3  # every old worker drained
    wait_serving(srv, new)
    assert srv.alive()


def test_sighup_during_rolling_restart(cppuvicorn_servers):
    """A second SIGHUP while the first restart runs: every worker started before it, the ones
    the first restart already brought up included, is replaced, one at a time."""
    srv = spawn(cppuvicorn_servers, "--no-access-log")
    old = children(srv.pid)
    with ChildWatch(srv) as watch, Load(srv, threads=2) as load:
        srv.send_signal(signal.SIGHUP)
        # The first new worker is ready (its old one is being retired); the second is not up yet.
        first = wait_until(lambda: (ready_pids(srv) & children(srv.pid)) - old, timeout=10)
        assert first, srv.log_text()
        before_second = children(srv.pid)
        srv.send_signal(signal.SIGHUP)
        final = wait_workers(srv, 2, timeout=30, exclude=old | before_second | first)
        time.sleep(1.0)
        assert children(srv.pid) == final
    assert watch.peak <= 3, f"more than one extra worker at a time ({watch.peak})"
    assert count_lines(srv, r"^INFO:     Received SIGHUP, restarting processes\.$") == 2
    assert not load.failures(), load.failures()[:5]
    assert count_lines(srv, r"died") == 0
    wait_serving(srv, final)
    assert srv.alive()


def test_sigterm_during_rolling_restart(cppuvicorn_servers):
    """SIGTERM while a rolling restart brings up a new worker: every worker, the new one
    included, stops; none is left behind; exit code 0."""
    srv = spawn(cppuvicorn_servers, "--no-access-log")
    with ChildWatch(srv) as watch:
        srv.send_signal(signal.SIGHUP)
        three = wait_until(lambda: kids if len(kids := children(srv.pid)) == 3 else None, timeout=5)
        assert three, f"no new worker came up beside the two: {children(srv.pid)}"
        srv.send_signal(signal.SIGTERM)
        assert srv.wait_exit(15) == 0, srv.log_text()
    # The new worker may live too briefly for the watcher's next poll: count the ones seen here.
    seen = watch.seen | three
    assert len(seen) >= 3, seen
    time.sleep(0.2)
    assert not [pid for pid in seen if pid_alive(pid)], srv.log_text()
    lines = srv.log_lines("stderr")
    assert count_lines(srv, r"died|not ready in time|aborting") == 0, srv.log_text()
    assert lines[-1] == f"INFO:     Stopping parent process [{srv.pid}]"
