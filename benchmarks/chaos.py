#!/usr/bin/env python3
"""Chaos under load: ``cppuvicorn --workers 2`` keeps being loaded while its workers are killed,
restarted, added, removed, blocked, stuck behind clients that never read, and finally
drained; a second server shows that an app leaking tasks still shuts down in time. Every
request is counted and each failure is attributed to a phase.

    python benchmarks/chaos.py                 # every phase, default durations (about 1.5 min)
    python benchmarks/chaos.py --short         # the CI version (about 40 s)

Load: ``--ka-clients`` threads on keep-alive connections (GET /pid; the last one POSTs
1 KiB to /echo) and ``--new-clients`` threads opening a new connection per request (GET
/json), all without pauses; every answer is checked (status 200, exact body). Every
response names its worker (``x-worker-pid``), so a keep-alive connection is known to be
bound to a worker. A request sent on a reused keep-alive connection that the server closed
before answering any byte is retried once on a new connection, as HTTP clients do (RFC 9112
§9.3.1); such requests are counted as *retried*, not failed, and reported.

Phases (``benchmarks/apps/chaos.py``; the server runs with ``--timeout-worker-healthcheck``
``--healthcheck``):

- ``steady``: nothing happens; zero failures.
- ``sigkill``: SIGKILL one worker. Only requests it held may fail: those on keep-alive
  connections bound to it and those in flight on new connections at the kill. The bound is the
  number of such connections at the moment of the kill.
- ``sighup``: rolling restart of both workers; zero failed.
- ``ttin_ttou``: SIGTTIN (3 workers), then SIGTTOU (back to 2); zero failed.
- ``slow_readers``: ``--slow-clients`` clients request a large streamed response and never
  read it. The workers' RSS growth must stay under ``--slow-rss-limit-mib``, the bytes a
  worker holds per such client (what the app handed to ``send`` minus what the kernel holds
  on both ends, from ``/proc/net/tcp``) under the write high-water mark plus one chunk, and
  the other clients are served meanwhile (zero failed).
- ``blocked_loop``: a request runs ``time.sleep`` on a worker's loop for longer than the
  health-check timeout: the worker is detected, killed and replaced. Only requests on that
  worker may fail.
- ``sigterm_drain``: SIGTERM to the supervisor while ``--drain-requests`` slow requests (1.5 s)
  are in flight: they complete, no request started before the signal fails, exit code 0.
- ``leak_shutdown``: a second server (``--timeout-graceful-shutdown`` ``--graceful``) whose app
  has leaked background tasks that never finish (from the lifespan and from requests) and
  handlers that never answer: SIGTERM under load; it must exit 0 within the graceful timeout
  plus ``--margin`` seconds, its workers stopping by themselves.
- ``leak_stubborn`` (not with ``--no-stubborn``): the same with tasks that swallow their
  cancellation; the supervisor has to kill the workers after the graceful timeout (+ 2 s).
- ``leak_stubborn_1w``: the same under ``--workers 1``,
  where no supervisor can kill the worker: it must exit by itself within the graceful timeout
  plus ``--margin``.

The table (phase → requests, failed, retried, expected, verdict) is printed and written to
``results/chaos-<date>.md`` (or ``--out``); ``--json`` writes the raw results. Exit status 0
when every phase passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadtools import (  # noqa: E402
    HOST,
    Connection,
    HttpError,
    ServerProc,
    build_request,
    children,
    fd_count,
    loadavg,
    md_table,
    pid_alive,
    results_path,
    rss_kib,
    tcp_sockets,
)

JSON_BODY = b'{"message":"Hello, world!","id":1,"ok":true,"items":[1,2,3]}'
ECHO_BODY = bytes(range(256)) * 4
WRITE_HIGH_WATER = 65536  # core/config.hpp: write_high_water


# ----------------------------------------------------------------------------- load


@dataclasses.dataclass(slots=True)
class Rec:
    t0: float
    t1: float
    client: str
    bound: int | None  # the worker the connection was bound to before this request (None: a new connection)
    pid: int | None  # the worker that answered
    error: str | None
    retried: str | None  # why the request was sent again (None: it was not)
    rid: str  # its x-request-id


class Client(threading.Thread):
    def __init__(self, load: "Load", name: str, keep_alive: bool, method: str, path: str, body: bytes = b""):
        super().__init__(daemon=True, name=name)
        self.load = load
        self.keep_alive = keep_alive
        self.method, self.path, self.body = method, path, body
        self.conn = Connection(load.port, keep_alive=keep_alive, timeout=load.timeout)

    def bound_to(self) -> int | None:
        conn = self.conn
        return conn.pid if conn.sock is not None else None

    def check(self, resp) -> str | None:
        if resp.status != 200:
            return f"status {resp.status}"
        if self.path == "/pid":
            ok = resp.pid is not None and resp.body == str(resp.pid).encode()
        elif self.path == "/json":
            ok = resp.body == JSON_BODY
        else:
            ok = resp.body == self.body
        return None if ok else f"wrong body {resp.body[:40]!r}"

    def run(self) -> None:
        conn = self.conn
        n = 0
        while not self.load.stopping.is_set():
            n += 1
            rid = f"{self.name}:{n}"
            bound = self.bound_to()
            t0 = time.monotonic()
            pid = None
            try:
                resp, _ = conn.exchange(self.method, self.path, self.body, f"x-request-id: {rid}\r\n")
                pid = resp.pid
                error = self.check(resp)
            except HttpError as exc:
                error = f"{exc.stage}: {exc.detail}"
            self.load.records.append(Rec(t0, time.monotonic(), self.name, bound, pid, error,
                                        conn.retry_reason if conn.retried else None, rid))
            if error is not None:
                conn.close()
                self.load.stopping.wait(0.01)
        conn.close()


class Load:
    """Client threads loading one server until stopped; every request is a ``Rec``."""

    def __init__(self, port: int, ka_clients: int, new_clients: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.records: list[Rec] = []
        self.stopping = threading.Event()
        self.clients = []
        for i in range(ka_clients):
            if i == ka_clients - 1 and ka_clients > 1:
                self.clients.append(Client(self, f"ka-post-{i}", True, "POST", "/echo", ECHO_BODY))
            else:
                self.clients.append(Client(self, f"ka-get-{i}", True, "GET", "/pid"))
        for i in range(new_clients):
            self.clients.append(Client(self, f"new-{i}", False, "GET", "/json"))

    def start(self) -> "Load":
        for c in self.clients:
            c.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for c in self.clients:
            c.join(timeout=self.timeout + 5)

    def bound_to(self, pid: int) -> int:
        """Keep-alive clients whose open connection is bound to ``pid`` right now."""
        return sum(1 for c in self.clients if c.keep_alive and c.bound_to() == pid)

    @property
    def new_clients(self) -> int:
        return sum(1 for c in self.clients if not c.keep_alive)

    def between(self, t0: float, t1: float) -> list[Rec]:
        return [r for r in list(self.records) if t0 <= r.t0 < t1]


# ----------------------------------------------------------------------------- workers


def ready_pids(server: ServerProc) -> set[int]:
    return {int(m.group(1)) for _, line in list(server.lines) if (m := re.match(r"^APP: startup \[(\d+)\]$", line))}


def wait_workers(server: ServerProc, n: int, exclude=(), timeout: float = 20.0) -> set[int]:
    """Until the supervisor has exactly ``n`` children, all started up, none in ``exclude``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(server.pid)
        if len(kids) == n and not kids & set(exclude) and kids <= ready_pids(server):
            time.sleep(0.2)  # startup complete -> serving: a moment
            return kids
        time.sleep(0.05)
    raise RuntimeError(f"expected {n} ready workers (not {sorted(exclude)}), have {sorted(children(server.pid))}\n"
                       + server.log_text()[-3000:])


def wait_gone(pids, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def worker_stats(port: int, pids: set[int], tries: int = 80) -> dict[int, dict]:
    """``/stats`` of every worker in ``pids`` (fresh connections until each one answered)."""
    out: dict[int, dict] = {}
    for _ in range(tries):
        conn = Connection(port, keep_alive=False, timeout=5)
        try:
            resp, _ = conn.exchange("GET", "/stats")
            doc = json.loads(resp.body)
            out[doc["pid"]] = doc
        except (HttpError, ValueError):
            pass
        if pids <= set(out):
            break
    return out


# ----------------------------------------------------------------------------- phases


@dataclasses.dataclass
class Phase:
    name: str
    what: str
    t0: float
    t1: float = 0.0
    graceful: bool = True  # zero failed expected
    bound: int | None = None  # for non-graceful phases: at most this many requests lost
    attributable: object = None  # Rec -> bool, for non-graceful phases
    counted_until: float | None = None  # records started after this are not counted (drain)
    checks: list = dataclasses.field(default_factory=list)  # (name, ok, detail)
    notes: list = dataclasses.field(default_factory=list)
    result: dict = dataclasses.field(default_factory=dict)
    server: ServerProc | None = None
    log_from: int = 0
    log: list = dataclasses.field(default_factory=list)  # the server's WARNING/ERROR lines meanwhile
    stacks: list = dataclasses.field(default_factory=list)  # stack lines the server printed meanwhile

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, bool(ok), detail))


def seen_ids(server: ServerProc) -> dict[int, set[str]]:
    """The request ids each worker's app had received, from its ``APP: seen [pid] ...`` lines
    (logged at its lifespan shutdown: a killed worker logs none)."""
    seen: dict[int, set[str]] = {}
    with server._cond:
        lines = [line for _, line in server.lines]
    for line in lines:
        m = re.match(r"^APP: seen \[(\d+)\] (.*)$", line)
        if m:
            seen.setdefault(int(m.group(1)), set()).update(m.group(2).split(","))
    return seen


def summarize(phase: Phase, records: list[Rec]) -> dict:
    """Requests that ended during the phase; with ``counted_until`` (a SIGTERM), only those
    started before it are counted."""
    ended = [r for r in records if phase.t0 <= r.t1 < phase.t1]
    if phase.counted_until is not None:
        recs = [r for r in ended if r.t0 < phase.counted_until]
        after = [r for r in ended if r.t0 >= phase.counted_until]
    else:
        recs, after = ended, []
    failed = [r for r in recs if r.error is not None]
    retried = [r for r in recs if r.retried and r.error is None]
    # A retry is only harmless if the first attempt never reached the app: check it against
    # the ids the worker logged at its shutdown.
    seen = seen_ids(phase.server)
    verifiable = [r for r in retried if r.bound in seen]
    delivered = [r for r in verifiable if r.rid in seen[r.bound]]
    if phase.graceful:  # the server dropped a request it had let in: a failure
        retried = [r for r in retried if r not in delivered]
        failed = failed + delivered
    res = {"requests": len(recs), "failed": len(failed), "retried": len(retried),
           "failures": sorted({f"{r.client}: {r.error or 'reached the app, then its connection was closed'}"
                               for r in failed})[:8],
           "retries": sorted({f"{r.client} (bound {r.bound}): {r.retried}" for r in retried})[:8],
           "retries_checked": len(verifiable), "retries_delivered": len(delivered)}
    if phase.counted_until is not None:
        res["after_signal"] = len(after)
        res["after_signal_failed"] = sum(1 for r in after if r.error is not None)
    if phase.graceful:
        res["expected"] = "0"
        res["unexpected"] = len(failed)
        ok = not failed
    else:
        lost = [r for r in failed + retried if phase.attributable(r)]
        unexpected = [r for r in failed + retried if not phase.attributable(r)]
        res["lost"] = len(lost)
        res["unexpected"] = len(unexpected)
        res["expected"] = f"≤ {phase.bound}"
        ok = not unexpected and len(lost) <= phase.bound
        if unexpected:
            res["failures"] = sorted({f"{r.client} (bound {r.bound}): {r.error or 'retried'}" for r in unexpected})[:8]
    checks_ok = all(ok for _, ok, _ in phase.checks)
    res["ok"] = ok and checks_ok and len(recs) > 0
    return res


class Chaos:
    def __init__(self, args):
        self.args = args
        self.phases: list[Phase] = []
        self.server: ServerProc | None = None
        self.load: Load | None = None

    # -- helpers
    def begin(self, name: str, what: str, **kw) -> Phase:
        if self.phases and not self.phases[-1].t1:
            if self.phases:
                self.finish(self.phases[-1])
        phase = Phase(name, what, time.monotonic(), server=self.server, log_from=self.server.mark(), **kw)
        self.phases.append(phase)
        print(f"chaos: {name}: {what}", flush=True)
        return phase

    def finish(self, phase: Phase) -> None:
        phase.t1 = time.monotonic()
        with phase.server._cond:
            lines = [line for _, line in phase.server.lines[phase.log_from:]]
        phase.log = [line for line in lines if re.match(r"^(WARNING|ERROR|CRITICAL):", line)]
        # A blocked loop's stack (faulthandler, printed by the worker before it is killed).
        phase.stacks = [line.strip() for line in lines if re.match(r'^\s+File ".*", line \d+ in ', line)]
        if phase.graceful and phase.name != "leak_stubborn":
            trouble = [line for line in phase.log if re.search(r"died|blocked|did not stop", line)]
            phase.check("no worker died or was killed", not trouble, "; ".join(trouble[:3]))

    def settle(self, seconds: float) -> None:
        time.sleep(seconds)

    def workers(self) -> set[int]:
        return children(self.server.pid)

    def victim(self, workers: set[int]) -> int:
        """The worker with the most keep-alive clients bound to it (the kill then hits some)."""
        return max(sorted(workers), key=lambda p: self.load.bound_to(p))

    # -- phases on the main server
    def steady(self) -> None:
        self.begin("steady", "load only")
        self.settle(self.args.steady)

    def sigkill(self) -> None:
        workers = self.workers()
        victim = self.victim(workers)
        bound = self.load.bound_to(victim) + self.load.new_clients
        t_kill = time.monotonic()
        phase = self.begin("sigkill", f"SIGKILL worker {victim}", graceful=False, bound=bound)
        os.kill(victim, signal.SIGKILL)
        phase.check("the killed worker is gone", wait_gone([victim], 5))
        t_dead = time.monotonic()
        phase.attributable = lambda r: r.bound == victim or (r.bound is None and r.t0 <= t_dead)
        new = wait_workers(self.server, 2, exclude={victim})
        phase.result["replaced_in_s"] = round(time.monotonic() - t_kill, 2)
        phase.notes.append(f"replaced in {phase.result['replaced_in_s']} s; bound = {bound - self.load.new_clients} "
                           f"keep-alive connection(s) on the victim + {self.load.new_clients} new-connection client(s)")
        phase.check("the other worker was left alone", workers - {victim} <= new)
        self.settle(self.args.settle)

    def sighup(self) -> None:
        old = self.workers()
        phase = self.begin("sighup", "rolling restart (SIGHUP)")
        self.server.signal(signal.SIGHUP)
        t = time.monotonic()
        new = wait_workers(self.server, 2, exclude=old)
        phase.check("both workers replaced", not new & old and wait_gone(old, 10), f"{sorted(old)} → {sorted(new)}")
        # The retried-request check relies on the ids a worker's app logs at shutdown: each old
        # worker's log must hold the last request it answered.
        for pid in old:
            self.server.wait_for(rf"^APP: shutdown \[{pid}\]$", timeout=5)
        seen = seen_ids(self.server)
        last = {}
        for r in list(self.load.records):
            if r.error is None and r.pid in old:
                last[r.pid] = r.rid
        phase.check("the old workers logged the request ids they received",
                    set(last) == old and all(rid in seen.get(pid, ()) for pid, rid in last.items()),
                    f"last answered {last}, logged {[len(seen.get(p, ())) for p in sorted(old)]} ids")
        phase.notes.append(f"restarted in {time.monotonic() - t:.2f} s")
        self.settle(self.args.settle)

    def ttin_ttou(self) -> None:
        two = self.workers()
        phase = self.begin("ttin_ttou", "SIGTTIN (3 workers), then SIGTTOU (2)")
        self.server.signal(signal.SIGTTIN)
        three = wait_workers(self.server, 3)
        phase.check("SIGTTIN added a worker", two < three)
        self.settle(self.args.settle)
        self.server.signal(signal.SIGTTOU)
        back = wait_workers(self.server, 2)
        phase.check("SIGTTOU retired one", back < three)
        self.settle(self.args.settle)

    def slow_readers(self) -> None:
        args = self.args
        n, size, chunk = args.slow_clients, args.slow_size, args.slow_chunk
        workers = self.workers()
        phase = self.begin("slow_readers", f"{n} clients never read a {size >> 20} MiB streamed response")
        rss0 = {p: rss_kib(p) for p in workers}
        fds0 = {p: fd_count(p) for p in workers}
        socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            s.settimeout(10)
            s.connect((HOST, self.server.port))
            s.sendall(build_request("GET", f"/stream?size={size}&chunk={chunk}"))
            socks.append(s)
            # One at a time: each new stream first fills the kernel's send buffer (a few MiB on
            # loopback) without suspending, as with Uvicorn's send(); fifty of them in one loop
            # turn could starve the heartbeat past the 2 s health check on a busy machine.
            time.sleep(0.02)
        ports = {s.getsockname()[1] for s in socks}
        # Wait until every stream is stuck: the bytes the app handed to send() stop growing.
        last, still_since, handed = -1, time.monotonic(), {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = worker_stats(self.server.port, workers)
            handed = {int(p): b for doc in stats.values() for p, b in doc["streams"].items() if int(p) in ports}
            total = sum(handed.values())
            if total != last or len(handed) < n:
                last, still_since = total, time.monotonic()
            elif time.monotonic() - still_since >= 1.0:
                break
            time.sleep(0.2)
        tcp = tcp_sockets(self.server.port)
        held = sorted(handed[p] - tcp.get((self.server.port, p), (0, 0))[0] - tcp.get((p, self.server.port), (0, 0))[1]
                      for p in handed)
        rss1 = {p: rss_kib(p) for p in workers}
        time.sleep(args.slow_hold)
        rss2 = {p: rss_kib(p) for p in workers}
        dead = sorted(p for p in workers if rss2[p] is None or not pid_alive(p))
        phase.check("no worker died meanwhile", not dead, f"gone: {dead}")
        if dead:
            for s in socks:
                s.close()
            return
        growth = (sum(rss2.values()) - sum(rss0.values())) / 1024
        growth_stuck = (sum(rss1.values()) - sum(rss0.values())) / 1024
        limit_held = WRITE_HIGH_WATER + chunk + 4096
        unbounded = n * size / 2 ** 20
        phase.result.update({"rss_before_kib": rss0, "rss_stuck_kib": rss1, "rss_after_hold_kib": rss2,
                             "rss_growth_mib": round(growth, 1), "held_bytes_max": max(held, default=None),
                             "held_bytes_mean": round(sum(held) / len(held)) if held else None,
                             "handed_mean": round(sum(handed.values()) / len(handed)) if handed else None})
        phase.check("every stream started and got stuck", len(handed) == n and all(b < size for b in handed.values()),
                    f"{len(handed)}/{n} streams, handed {min(handed.values(), default=0)}–{max(handed.values(), default=0)} bytes")
        phase.check(f"RSS growth ≤ {args.slow_rss_limit_mib:g} MiB", growth <= args.slow_rss_limit_mib,
                    f"{growth_stuck:+.1f} MiB once stuck, {growth:+.1f} MiB after {args.slow_hold:g} s more "
                    f"(unbounded buffering would be {unbounded:.0f} MiB)")
        phase.check(f"held per client ≤ high-water + one chunk ({limit_held // 1024} KiB)",
                    held and held[-1] <= limit_held,
                    f"max {held[-1] if held else '?'} bytes, mean {phase.result['held_bytes_mean']}")
        for s in socks:
            s.close()  # unread data: the kernel resets the connection
        def streams_gone():
            stats = worker_stats(self.server.port, workers)
            return sum(1 for doc in stats.values() for p in doc["streams"] if int(p) in ports)
        deadline = time.monotonic() + 10
        while (left := streams_gone()) and time.monotonic() < deadline:
            time.sleep(0.2)
        # The server's side of each stuck connection must be gone (TIME_WAIT holds no fd).
        open_socks = sorted(v[2] for k, v in tcp_sockets(self.server.port).items()
                            if k[0] == self.server.port and k[1] in ports and v[2] != "TIME_WAIT")
        fds1 = {p: fd_count(p) for p in workers}
        slack = len(self.load.clients) + 2
        phase.check("the stuck streams ended and their sockets closed", not left and not open_socks,
                    f"{left} streams left, server sockets left: {open_socks}")
        phase.check("worker fds back to their level", all(fds1[p] <= fds0[p] + slack for p in workers),
                    f"before {sorted(fds0.values())}, after {sorted(fds1.values())} (load connections: ±{slack})")
        phase.notes.append(f"RSS {sum(rss0.values()) / 1024:.1f} → {sum(rss2.values()) / 1024:.1f} MiB (2 workers); "
                           f"held per stuck client: max {held[-1] if held else '?'} B, mean {phase.result['held_bytes_mean']} B")
        self.settle(self.args.settle)

    def blocked_loop(self) -> None:
        args = self.args
        workers = self.workers()
        phase = self.begin("blocked_loop", f"time.sleep({args.healthcheck * 5}) on a worker's loop "
                                           f"(health check {args.healthcheck} s)", graceful=False)
        mark = self.server.mark()
        blocker = socket.create_connection((HOST, self.server.port), timeout=30)
        blocker.sendall(build_request("GET", f"/block?t={args.healthcheck * 5}"))
        m = self.server.wait_for(r"^APP: block start \S+ \[(\d+)\]$", timeout=10, after=mark)
        if m is None:
            raise RuntimeError("the /block request did not start:\n" + self.server.log_text(mark))
        victim = int(m.group(1))
        t_block = time.monotonic()
        phase.bound = self.load.bound_to(victim) + self.load.new_clients
        phase.attributable = lambda r: r.bound == victim or (r.bound is None and r.t0 <= t_block)
        detected = self.server.wait_for(rf"Child process \[{victim}\] event loop blocked", timeout=args.healthcheck + 10,
                                        after=mark)
        t_detect = time.monotonic()
        gone = wait_gone([victim], 10)
        new = wait_workers(self.server, 2, exclude={victim})
        phase.result.update({"detected_after_s": round(t_detect - t_block, 2),
                             "replaced_after_s": round(time.monotonic() - t_block, 2)})
        phase.check("blocked worker detected, killed, replaced", detected is not None and gone and victim not in new,
                    f"detected after {t_detect - t_block:.1f} s, replaced after {phase.result['replaced_after_s']} s")
        blocker.settimeout(5)
        try:
            data = blocker.recv(100)
        except OSError:
            data = b""
        blocker.close()
        phase.check("the blocking request itself got no answer", data == b"", repr(data[:40]))
        phase.notes.append(f"detected {phase.result['detected_after_s']} s after the block started; the blocking "
                           f"request itself is not counted")
        self.settle(self.args.settle)

    def sigterm_drain(self) -> None:
        args = self.args
        workers = self.workers()
        phase = self.begin("sigterm_drain", f"SIGTERM with {args.drain_requests} slow requests (1.5 s) in flight")
        results: list = [None] * args.drain_requests

        def slow(i):
            conn = Connection(self.server.port, keep_alive=False, timeout=15)
            try:
                resp, _ = conn.exchange("GET", "/slow?t=1.5")
                results[i] = (resp.status, resp.body == str(resp.pid).encode())
            except HttpError as exc:
                results[i] = (None, f"{exc.stage}: {exc.detail}")

        threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(args.drain_requests)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t_sig = time.monotonic()
        phase.counted_until = t_sig
        self.server.signal(signal.SIGTERM)
        code = self.server.wait_exit(30)
        t_exit = time.monotonic()
        for t in threads:
            t.join(timeout=15)
        self.load.stop()
        ok_slow = sum(1 for r in results if r and r[0] == 200 and r[1] is True)
        phase.result.update({"exit_code": code, "exit_after_s": round(t_exit - t_sig, 2), "slow_ok": ok_slow})
        phase.check("slow requests in flight completed", ok_slow == args.drain_requests,
                    f"{ok_slow}/{args.drain_requests}: {[r for r in results if not (r and r[0] == 200)][:3]}")
        phase.check("exit code 0", code == 0, f"exit {code} after {t_exit - t_sig:.2f} s")
        phase.check("every worker finished", all(f"Finished server process [{p}]" in self.server.log_text() for p in workers))
        phase.notes.append(f"exited {t_exit - t_sig:.2f} s after the signal; requests started after it are not counted")

    # -- the leaking app, on its own server
    def leak_shutdown(self, stubborn: bool, workers: int = 2) -> None:
        args = self.args
        name = ("leak_stubborn" if stubborn else "leak_shutdown") + ("_1w" if workers == 1 else "")
        what = ("tasks that swallow cancellation" if stubborn else "background tasks that never finish")
        if workers == 1:
            what += ", one worker (no supervisor)"
        server = ServerProc("chaos:app", ["--workers", str(workers), "--timeout-graceful-shutdown", str(args.graceful),
                                          "--no-access-log"], env={"CHAOS_LEAK_LIFESPAN": "1"}, python=args.python)
        server.start()
        single = workers == 1
        try:
            workers = {server.pid} if single else wait_workers(server, 2)
            load = Load(server.port, args.ka_clients, args.new_clients, args.timeout).start()
            self.load, self.server = load, server
            phase = self.begin(name, f"SIGTERM, app leaked {what} (+ handlers that never answer)")
            time.sleep(0.5)
            for _ in range(10):
                conn = Connection(server.port, keep_alive=False, timeout=5)
                conn.exchange("GET", f"/leak?n=100&stubborn={int(stubborn)}")
            stats = worker_stats(server.port, workers)
            leaked = {pid: doc["leaked"] for pid, doc in stats.items()}
            forever = [socket.create_connection((HOST, server.port), timeout=10) for _ in range(2)]
            for s in forever:
                s.sendall(build_request("GET", "/forever"))
            time.sleep(0.5)
            mark = server.mark()
            t_sig = time.monotonic()
            phase.counted_until = t_sig
            server.signal(signal.SIGTERM)
            code = server.wait_exit(args.graceful + 2 + args.margin + 5)
            elapsed = time.monotonic() - t_sig
            load.stop()
            for s in forever:
                s.close()
            killed = server.count(r"did not stop in time", after=mark)
            phase.result.update({"exit_code": code, "exit_after_s": round(elapsed, 2), "leaked": leaked,
                                 "killed_by_supervisor": killed})
            phase.check("tasks leaked in every worker", set(leaked) == workers and all(v > 1 for v in leaked.values()),
                        str(leaked))
            phase.check("exit code 0", code == 0, f"exit {code}")
            if code is None:
                phase.notes.append(f"still running {elapsed:.1f} s after the signal: killed by the harness")
            if stubborn and single:
                phase.notes.append("no supervisor here: the worker abandons the tasks that swallow their "
                                   "cancellation after a bounded wait and exits 0 by itself")
            if stubborn and not single:
                limit = args.graceful + 2 + args.margin  # the supervisor's kill deadline + margin
                phase.check(f"exited within graceful + 2 s + {args.margin:g} s", elapsed <= limit,
                            f"{elapsed:.2f} s (limit {limit:g} s)")
                phase.notes.append(f"exit after {elapsed:.2f} s; {killed} worker(s) killed by the supervisor "
                                   "(a task that ignores cancellation never lets asyncio finish)")
            else:
                limit = args.graceful + args.margin
                phase.check(f"exited within graceful + {args.margin:g} s", elapsed <= limit,
                            f"{elapsed:.2f} s (limit {limit:g} s)")
                phase.check("workers stopped by themselves", killed == 0, f"{killed} killed by the supervisor")
                phase.notes.append(f"exit after {elapsed:.2f} s; leaked tasks per worker {sorted(leaked.values())}")
            self.finish(phase)
            phase.result.update(summarize(phase, load.records))
        finally:
            server.kill()

    # -- driver
    def run(self) -> None:
        args = self.args
        self.server = ServerProc("chaos:app", ["--workers", "2", "--timeout-worker-healthcheck", str(args.healthcheck),
                                               "--no-access-log"], python=args.python)
        self.server.start()
        try:
            wait_workers(self.server, 2)
            self.load = Load(self.server.port, args.ka_clients, args.new_clients, args.timeout).start()
            time.sleep(0.5)
            steps = {"steady": self.steady, "sigkill": self.sigkill, "sighup": self.sighup,
                     "ttin_ttou": self.ttin_ttou, "slow_readers": self.slow_readers,
                     "blocked_loop": self.blocked_loop, "sigterm_drain": self.sigterm_drain}
            for name, step in steps.items():
                if name in args.skip:
                    continue
                step()
            if "sigterm_drain" in args.skip:
                self.load.stop()
            if self.phases:
                self.finish(self.phases[-1])
            records = self.load.records
            for phase in self.phases:
                phase.result.update(summarize(phase, records))
            self.main_records = len(records)
            if args.records:
                with open(args.records, "w") as f:
                    for r in records:
                        f.write(json.dumps(dataclasses.asdict(r)) + "\n")
                    for p in self.phases:
                        f.write(json.dumps({"phase": p.name, "t0": p.t0, "t1": p.t1}) + "\n")
            self.main_log = self.server.log_text()
        except BaseException:
            print(self.server.log_text()[-4000:], file=sys.stderr)
            raise
        finally:
            self.server.kill()
        if "leak_shutdown" not in args.skip:
            self.leak_shutdown(stubborn=False)
        if "leak_stubborn" not in args.skip:
            self.leak_shutdown(stubborn=True)
        if "leak_stubborn_1w" not in args.skip:
            self.leak_shutdown(stubborn=True, workers=1)


# ----------------------------------------------------------------------------- report


def table_rows(phases: list[Phase]) -> list[list]:
    rows = []
    for p in phases:
        r = p.result
        failed = r["failed"] if p.graceful else f"{r['failed']} (+{r['retried']} retried; lost {r['lost']})"
        rows.append([p.name, r["requests"], failed, r["retried"], r["expected"],
                     "pass" if r["ok"] else "**FAIL**"])
    return rows


def render(meta: dict, phases: list[Phase]) -> str:
    ok = all(p.result["ok"] for p in phases)
    out = [f"# Chaos under load: {meta['label']}", "",
           f"**{'PASS' if ok else 'FAIL'}** — {meta['date']} on `{meta['host']}` ({meta['cpus']} CPUs, load "
           f"average {meta['load_start']} at the start, {meta['load_end']} at the end)."]
    if meta["note"]:
        out += ["", meta["note"]]
    out += ["", f"Command: `{meta['command']}`; {meta['server']}.", "",
            f"Load: {meta['ka_clients']} keep-alive clients (GET /pid, the last one POST /echo 1 KiB) and "
            f"{meta['new_clients']} clients opening a new connection per request (GET /json), no pauses, every "
            f"answer checked. *Retried*: a request on a reused keep-alive connection that the server closed before "
            f"answering any byte, sent again on a new connection as HTTP clients do (RFC 9112 §9.3.1). For the "
            f"phases that kill a worker, *lost* = failed + retried requests on that worker; *expected* is the number "
            f"of connections it could have held at that moment.", "",
            md_table(["phase", "requests", "failed", "retried", "expected failed", "verdict"], table_rows(phases)), ""]
    out += ["## Phases", ""]
    for p in phases:
        out += [f"### {p.name}: {p.what}", ""]
        for note in p.notes:
            out.append(f"- {note}")
        r = p.result
        if r.get("after_signal") is not None:
            out.append(f"- after the signal: {r['after_signal']} requests, {r['after_signal_failed']} failed (not counted)")
        for name, passed, detail in p.checks:
            out.append(f"- {'pass' if passed else '**FAIL**'}: {name}" + (f" — {detail}" if detail else ""))
        if r.get("failures"):
            label = "failures" if p.graceful or r["unexpected"] else "failed (on the killed worker's connections)"
            out.append(f"- {label}: " + "; ".join(f"`{f}`" for f in r["failures"]))
        if r.get("retries"):
            checked = (f" ({r['retries_checked']} checked against the ids the closing worker's app logged: "
                       f"{r['retries_delivered']} had reached it)" if r["retries_checked"] else "")
            out.append("- retried" + checked + ": " + "; ".join(f"`{f}`" for f in r["retries"]))
        if p.log:
            out.append(f"- server log ({len(p.log)} warning/error lines): " + "; ".join(f"`{line}`" for line in p.log[:6]))
        if p.stacks:
            out.append("- stack printed by the server: " + " ← ".join(f"`{line}`" for line in p.stacks[:12]))
        out.append("")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--short", action="store_true", help="CI durations (about 40 s in all)")
    p.add_argument("--steady", type=float, default=None, help="seconds of plain load first (default 5; --short 2)")
    p.add_argument("--settle", type=float, default=None, help="seconds of load after each event (default 2; --short 1)")
    p.add_argument("--healthcheck", type=int, default=2, help="--timeout-worker-healthcheck (default %(default)s)")
    p.add_argument("--graceful", type=int, default=2, help="--timeout-graceful-shutdown of the leak server (default %(default)s)")
    p.add_argument("--margin", type=float, default=2.0, help="allowed shutdown time over the graceful timeout (default %(default)s)")
    p.add_argument("--ka-clients", type=int, default=3, help="keep-alive client threads (default %(default)s)")
    p.add_argument("--new-clients", type=int, default=2, help="new-connection client threads (default %(default)s)")
    p.add_argument("--slow-clients", type=int, default=50, help="clients that never read (default %(default)s)")
    p.add_argument("--slow-size", type=int, default=8 << 20, help="bytes each of them asks for (default 8 MiB)")
    p.add_argument("--slow-chunk", type=int, default=16384, help="bytes per http.response.body (default %(default)s)")
    p.add_argument("--slow-hold", type=float, default=None, help="seconds they stay stuck (default 5; --short 2)")
    p.add_argument("--slow-rss-limit-mib", type=float, default=32.0,
                   help="allowed RSS growth of the workers (default %(default)s MiB)")
    p.add_argument("--drain-requests", type=int, default=8, help="slow requests in flight at SIGTERM (default %(default)s)")
    p.add_argument("--timeout", type=float, default=15.0, help="per-request client timeout (default %(default)s s)")
    p.add_argument("--skip", default="", help="comma list of phases to leave out")
    p.add_argument("--no-stubborn", action="store_true", help="leave out leak_stubborn")
    p.add_argument("--python", default=sys.executable, type=os.path.abspath, help="interpreter that runs cppuvicorn (default: this one)")
    p.add_argument("--out", default=None, help="Markdown report path (default results/chaos-<date>.md)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON to this path")
    p.add_argument("--records", default=None, help="write every request (JSON lines) to this path")
    p.add_argument("--label", default=None)
    p.add_argument("--note", default="", help="a sentence for the report (e.g. what else ran on the machine)")
    a = p.parse_args(argv)
    a.steady = a.steady if a.steady is not None else (2.0 if a.short else 5.0)
    a.settle = a.settle if a.settle is not None else (1.0 if a.short else 2.0)
    a.slow_hold = a.slow_hold if a.slow_hold is not None else (2.0 if a.short else 5.0)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()} | ({"leak_stubborn"} if a.no_stubborn else set())
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    meta = {"label": args.label or ("short (CI) durations" if args.short else "default durations"),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpus": os.cpu_count(), "load_start": loadavg(), "note": args.note,
            "command": shlex.join(["python", "benchmarks/chaos.py", *(sys.argv[1:] if argv is None else argv)]),
            "ka_clients": args.ka_clients, "new_clients": args.new_clients,
            "server": ServerProc("chaos:app", [], python=args.python).describe()}
    chaos = Chaos(args)
    started = time.monotonic()
    chaos.run()
    meta["load_end"] = loadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    phases = chaos.phases
    ok = all(p.result["ok"] for p in phases)
    rows = table_rows(phases)
    header = ["phase", "requests", "failed", "retried", "expected failed", "verdict"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    for p in phases:
        for name, passed, detail in p.checks:
            if not passed:
                print(f"FAIL {p.name}: {name} — {detail}")
        if p.result.get("failures") and not p.result["ok"]:
            print(f"{p.name} failures: {p.result['failures']}")
    path = results_path("chaos", args.out)
    path.write_text(render(meta, phases))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "ok": ok,
                       "phases": [{"name": p.name, "what": p.what, "checks": p.checks, "notes": p.notes,
                                   "result": p.result, "log": p.log, "stacks": p.stacks, "seconds": round(p.t1 - p.t0, 2)}
                                  for p in phases]},
                      f, indent=1, default=str)
    print(f"chaos: {'PASS' if ok else 'FAIL'} in {meta['seconds']} s; report {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
