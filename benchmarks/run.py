#!/usr/bin/env python3
"""Benchmark harness for cppuvicorn against Uvicorn, Granian, Hypercorn and an nginx anchor.

One command:

    .venv/bin/python benchmarks/run.py [--servers cppuvicorn,uvicorn,granian,nginx]
        [--scenarios hello,fastapi_json,echo_64k,stream_100x1k,sleep_10ms]
        [--connections 64,256] [--rounds 5] [--duration 5] [--warmup 2] [--quick]

Method (see benchmarks/README.md): every measurement gets a fresh server process tree pinned
to one CPU (taskset -c 1) while wrk -t1 runs pinned to the other (taskset -c 0); the server is
checked for a correct response before it is loaded; wrk warms it up, then measures; servers
are interleaved within a round with the order rotated per round; ratios against Uvicorn are
computed inside each round and reported as median [min-max]. Server CPU share (process-tree
utime+stime from /proc over the measured window), wrk's CPU share and what else used the CPU
are recorded for every measurement.

Loopback only. Every process started here runs in its own session / process group and is
killed (SIGTERM, then SIGKILL) when its measurement ends, on errors, on Ctrl-C and at exit.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
APPS_DIR = HERE / "apps"
LUA_DIR = HERE / "lua"
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"  # loopback only, always
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT_RANGE = (20000, 29999)  # below the ephemeral range, so wrk's client ports never collide


# --------------------------------------------------------------------------------------------
# Process bookkeeping: every child lives in its own process group and is always cleaned up.
# --------------------------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen] = {}  # pgid -> Popen


def _die_with_parent() -> None:
    """preexec: ask the kernel to SIGTERM the child if the harness dies without cleaning up
    (e.g. SIGKILL). The normal path is kill_tree(); this only covers the direct child."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kw)
    _LIVE[proc.pid] = proc
    return proc


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, info in read_all_procs().items():
        children.setdefault(info[0], []).append(pid)
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def kill_tree(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group (and any descendant that left it), wait up to `grace`
    seconds, then SIGKILL; finally reap our direct child."""
    pgid = proc.pid
    stray = [p for p in _descendants(pgid) if _pgid_of(p) not in (pgid, None)]

    def done() -> bool:
        proc.poll()
        return (proc.returncode is not None and not _group_alive(pgid)
                and not any(_pid_alive(p) for p in stray))

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        if done():
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for p in stray:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not done():
            time.sleep(0.02)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        print(f"warning: process {pgid} did not exit after SIGKILL", file=sys.stderr)
    _LIVE.pop(pgid, None)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_all() -> None:
    for proc in list(_LIVE.values()):
        kill_tree(proc, grace=2.0)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------------
# /proc accounting
# --------------------------------------------------------------------------------------------


def read_all_procs() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, utime+stime ticks) for every process (threads are included in
    the process's own counters)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        lp, rp = data.find("("), data.rfind(")")
        comm = data[lp + 1 : rp]
        rest = data[rp + 2 :].split()
        # rest[0] = state (field 3); ppid = field 4; utime = 14; stime = 15
        try:
            out[int(name)] = (int(rest[1]), comm, int(rest[11]) + int(rest[12]))
        except (IndexError, ValueError):
            continue
    return out


def read_cpu_stat() -> dict[str, list[int]]:
    res = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                parts = line.split()
                res[parts[0]] = [int(x) for x in parts[1:]]
    return res


def tree_pids(procs: dict[int, tuple[int, str, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = {root}, [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen & (set(procs) | {root})


@dataclass
class Snapshot:
    t: float
    procs: dict
    cpu: dict


def snapshot() -> Snapshot:
    return Snapshot(time.monotonic(), read_all_procs(), read_cpu_stat())


def _noise_key(comm: str) -> str:
    return re.sub(r"/\d+(:\d+)?(-.*)?$", "", comm)  # kworker/1:1-events -> kworker


def other_processes(a: Snapshot, b: Snapshot, exclude: set[int]) -> tuple[float, list, dict]:
    """CPU (in cores) used between two snapshots by processes not in `exclude` (and not this
    harness). Returns (total excluding ksoftirqd, top consumers, per-name shares)."""
    wall = b.t - a.t
    me = os.getpid()
    others: dict[str, int] = {}
    for pid, (ppid, comm, ticks) in b.procs.items():
        if pid in exclude or pid == me:
            continue
        d = ticks - a.procs[pid][2] if pid in a.procs else ticks
        if d > 0:
            key = _noise_key(comm)
            others[key] = others.get(key, 0) + d
    shares = {k: v / CLK_TCK / wall for k, v in others.items()}
    total = sum(v for k, v in shares.items() if k != "ksoftirqd")
    top = [[k, round(v, 3)] for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:4]
           if v >= 0.005]
    return total, top, shares


def _task_ticks(a: Snapshot, b: Snapshot) -> int:
    """user + nice + system ticks over all CPUs between two snapshots."""
    if "cpu" not in a.cpu or "cpu" not in b.cpu:
        return 0
    d = [y - x for x, y in zip(a.cpu["cpu"], b.cpu["cpu"])]
    return d[0] + d[1] + d[2]


def _my_ticks(a: Snapshot, b: Snapshot) -> int:
    me = os.getpid()
    return b.procs.get(me, (0, "", 0))[2] - a.procs.get(me, (0, "", 0))[2]


def cpu_accounting(a: Snapshot, b: Snapshot, server_root: int, client_pid: int,
                   client_cpu_s: float, server_cpu: int) -> dict:
    wall = b.t - a.t
    srv = tree_pids(a.procs, server_root) | tree_pids(b.procs, server_root)
    server_ticks = 0
    for pid in srv:
        if pid in b.procs:
            d = b.procs[pid][2] - (a.procs[pid][2] if pid in a.procs else 0)
            server_ticks += max(d, 0)
    others_total, top, shares = other_processes(a, b, srv | {client_pid})
    # per-core busy/steal from /proc/stat: user nice system idle iowait irq softirq steal
    cores = {}
    for name in (f"cpu{server_cpu}", "cpu"):
        if name in a.cpu and name in b.cpu:
            d = [y - x for x, y in zip(a.cpu[name], b.cpu[name])]
            busy = d[0] + d[1] + d[2] + d[5] + d[6] + (d[7] if len(d) > 7 else 0)
            cores[name] = {
                "busy": busy / CLK_TCK / wall,
                "softirq": d[6] / CLK_TCK / wall,
                "steal": (d[7] if len(d) > 7 else 0) / CLK_TCK / wall,
            }
    # Short-lived processes (a compiler job, a test) can start and end inside the window and
    # never show up in either process snapshot, so also derive "everything else" from the
    # machine-wide counters: busy time minus irq/softirq minus server, wrk and this harness.
    stat_other = max(0.0, (_task_ticks(a, b) - server_ticks - _my_ticks(a, b)) / CLK_TCK / wall
                     - client_cpu_s / wall)
    return {
        "server_cpu": server_ticks / CLK_TCK / wall,
        "others_cpu": max(others_total, stat_other),
        "others_cpu_procs": others_total,
        "others_cpu_stat": stat_other,
        "others_top": top,
        "ksoftirqd_cpu": shares.get("ksoftirqd", 0.0),
        "server_core_busy": cores.get(f"cpu{server_cpu}", {}).get("busy"),
        "server_core_softirq": cores.get(f"cpu{server_cpu}", {}).get("softirq"),
        "steal_total": cores.get("cpu", {}).get("steal"),
        "window_s": wall,
    }


def wait_for_quiet(threshold: float, max_wait: float) -> tuple[float, list]:
    """Sample the machine in 0.5 s windows until other processes use <= threshold of a core,
    or max_wait seconds passed. Returns (seconds waited, last top consumers)."""
    t0 = time.monotonic()
    announced = False
    while True:
        a = snapshot()
        time.sleep(0.5)
        b = snapshot()
        total, top, _ = other_processes(a, b, set())
        total = max(total, (_task_ticks(a, b) - _my_ticks(a, b)) / CLK_TCK / (b.t - a.t))
        waited = time.monotonic() - t0
        if total <= threshold or waited >= max_wait:
            if announced:
                print(f"    ... {'quiet' if total <= threshold else 'still busy'} after "
                      f"{waited:.0f} s (others {total:.2f} cores)", flush=True)
            return waited, top
        if not announced and max_wait > 0.5:
            print(f"    waiting up to {max_wait:.0f} s for a quiet machine: others use "
                  f"{total:.2f} cores ({', '.join(f'{k} {v:.2f}' for k, v in top)})",
                  flush=True)
            announced = True


# --------------------------------------------------------------------------------------------
# Apps, scenarios and correctness checks
# --------------------------------------------------------------------------------------------


def _load_app_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_app_{name}", APPS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def wrk_post_body() -> bytes:
    """The exact body benchmarks/lua/post_64k.lua sends (65536 bytes)."""
    return b"".join(
        (b"%06d" % i) + bytes([97 + i % 26]) * 57 + b"\n" for i in range(1024)
    )


class CheckError(Exception):
    def __init__(self, msg: str, log_tail: str | None = None):
        super().__init__(msg)
        self.log_tail = log_tail


def _request(conn: http.client.HTTPConnection, method: str, path: str = "/",
             body: bytes | None = None, headers: dict | None = None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    hdrs = {k.lower(): v for k, v in resp.getheaders()}
    return resp.status, hdrs, data


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckError(msg)


def _short(b: bytes, n: int = 80) -> str:
    return repr(b[:n]) + (f"... ({len(b)} bytes)" if len(b) > n else "")


def check_hello(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(2):  # two requests on one connection: keep-alive must work
            st, h, body = _request(conn, "GET")
            _expect(st == 200, f"status {st}")
            _expect(body == b"Hello, world!", f"body {_short(body)}")
            _expect(h.get("content-type", "").startswith("text/plain"),
                    f"content-type {h.get('content-type')!r}")
    finally:
        conn.close()


def check_sleep(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            st, h, body = _request(conn, "GET")
            dt = time.perf_counter() - t0
            _expect(st == 200, f"status {st}")
            _expect(body == b"Hello, world!", f"body {_short(body)}")
            _expect(dt >= 0.0095, f"answered in {dt * 1000:.1f} ms (< 10 ms sleep)")
    finally:
        conn.close()


def check_fastapi_json(port: int) -> None:
    expected = _load_app_module("fastapi_json").EXPECTED
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(2):
            st, h, body = _request(conn, "GET")
            _expect(st == 200, f"status {st}")
            _expect(h.get("content-type", "").startswith("application/json"),
                    f"content-type {h.get('content-type')!r}")
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise CheckError(f"body is not JSON ({e}): {_short(body)}")
            _expect(doc == expected, f"JSON {doc!r} != {expected!r}")
    finally:
        conn.close()


def check_echo(port: int) -> None:
    rnd = random.Random(1234).randbytes(200_000)
    bodies = [wrk_post_body(), rnd, b"", b"x"]
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for payload in bodies:
            st, h, body = _request(conn, "POST", body=payload,
                                   headers={"Content-Type": "application/octet-stream"})
            _expect(st == 200, f"status {st}")
            _expect(h.get("content-length") == str(len(payload)),
                    f"content-length {h.get('content-length')!r}, expected {len(payload)}")
            _expect(body == payload,
                    f"echoed {len(body)} bytes (sha1 {hashlib.sha1(body).hexdigest()[:10]}) "
                    f"!= posted {len(payload)} bytes")
    finally:
        conn.close()


def check_stream(port: int) -> None:
    expected = _load_app_module("stream").EXPECTED_BODY
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(2):
            st, h, body = _request(conn, "GET")
            _expect(st == 200, f"status {st}")
            _expect(body == expected,
                    f"body {len(body)} bytes != expected {len(expected)} bytes "
                    f"(first diff at {next((i for i, (x, y) in enumerate(zip(body, expected)) if x != y), min(len(body), len(expected)))})")
    finally:
        conn.close()


def check_file(port: int) -> None:
    expected = _load_app_module("file").EXPECTED_BODY
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(2):
            st, h, body = _request(conn, "GET")
            _expect(st == 200, f"status {st}")
            _expect(h.get("content-length") == str(len(expected)), f"content-length {h.get('content-length')!r}")
            _expect(body == expected, f"body {len(body)} bytes differs from the file ({len(expected)} bytes)")
    finally:
        conn.close()


@dataclass
class Scenario:
    name: str
    module: str  # file in benchmarks/apps
    lua: str  # file in benchmarks/lua
    check: Callable[[int], None]
    description: str
    nginx: bool = False  # nginx `return 200` anchor applies
    ideal: Callable[[int], float] | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("hello", "hello", "report.lua", check_hello,
                 "raw ASGI hello world (GET, 13-byte body)", nginx=True),
        Scenario("hello_pipe16", "hello", "pipeline16.lua", check_hello,
                 "raw ASGI hello world, 16 requests pipelined per round trip (latency per batch)",
                 nginx=True),
        Scenario("fastapi_json", "fastapi_json", "report.lua", check_fastapi_json,
                 "FastAPI GET returning a small JSON dict"),
        Scenario("echo_64k", "echo", "post_64k.lua", check_echo,
                 "raw ASGI echo: 64 KiB POST body, 64 KiB response with content-length"),
        Scenario("stream_100x1k", "stream", "report.lua", check_stream,
                 "raw ASGI streamed response, 100 x 1 KiB chunks (more_body)"),
        Scenario("file_256k", "file", "report.lua", check_file,
                 "Starlette FileResponse of a 256 KiB file (pathsend where advertised)"),
        Scenario("sleep_10ms", "sleep", "report.lua", check_sleep,
                 "raw ASGI `await asyncio.sleep(0.01)` then hello",
                 ideal=lambda c: c / 0.01),
    ]
}


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    build: Callable[["Ctx", Scenario, int, Path], list[str]]
    describe: str
    scenarios: set[str] | None = None  # None = every scenario
    available: bool = True
    skip_reason: str = ""
    version: str = ""


@dataclass
class Ctx:
    python: str
    server_cpu: int
    client_cpu: int
    granian_extra: list[str] = field(default_factory=list)


def cmd_cppuvicorn(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    return [ctx.python, "-m", "cppuvicorn", f"{sc.module}:app", "--host", HOST,
            "--port", str(port), "--no-access-log", "--log-level", "warning"]


def cmd_cppuvicorn_metrics(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    # The cost of --metrics-port: the same single worker, under the supervisor that serves
    # the endpoint (any free port), counting every request into shared memory.
    return cmd_cppuvicorn(ctx, sc, port, tmp) + ["--metrics-port", "0"]


def cmd_cppuvicorn_counters(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    # The counters alone, without the supervisor: the same single process as `cppuvicorn`,
    # with a metrics region attached by benchmarks/with_metrics_region.py.
    return [ctx.python, str(Path(__file__).resolve().parent / "with_metrics_region.py"), "--",
            *cmd_cppuvicorn(ctx, sc, port, tmp)]


def cmd_uvicorn(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    return [ctx.python, "-m", "uvicorn", f"{sc.module}:app", "--host", HOST,
            "--port", str(port), "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning"]


# Best single-worker settings found on the 2-core VM: one worker with one single-threaded Rust
# runtime, uvloop, HTTP/1 only (no h2 sniffing; wrk speaks HTTP/1.1). The task implementation
# stays at granian's default (asyncio): `--task-impl rust` was ~5-15% faster on hello and
# FastAPI but about 3x slower on echo_64k (request-body receive); try it with
# --granian-extra='--task-impl rust'.
GRANIAN_ARGS = ["--interface", "asgi", "--workers", "1", "--runtime-mode", "st",
                "--runtime-threads", "1", "--loop", "uvloop",
                "--http", "1", "--no-access-log", "--log-level", "warning"]


def cmd_granian(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    return [ctx.python, "-m", "granian", *GRANIAN_ARGS, *ctx.granian_extra,
            "--host", HOST, "--port", str(port), f"{sc.module}:app"]


def cmd_hypercorn(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    return [ctx.python, "-m", "hypercorn", f"{sc.module}:app", "--bind", f"{HOST}:{port}",
            "--worker-class", "uvloop", "--workers", "1", "--log-level", "warning"]


def cmd_socketify(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    # socketify.py: uWebSockets (C++) with its own ASGI layer; one worker by default.
    return [ctx.python, "-m", "socketify", f"{sc.module}:app", "--interface", "asgi",
            "--host", HOST, "--port", str(port), "--disable-listen-log", "true"]


NGINX_CONF = """\
# generated by benchmarks/run.py: nginx `return 200` anchor, 1 worker, loopback only
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile 8192;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000000;
    keepalive_timeout 75s;
    server {{
        listen {host}:{port};
        location / {{
            default_type text/plain;
            return 200 "Hello, world!";
        }}
    }}
}}
"""


def cmd_nginx(ctx: Ctx, sc: Scenario, port: int, tmp: Path) -> list[str]:
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, host=HOST, port=port))
    return [shutil.which("nginx") or "nginx", "-p", str(tmp), "-c", str(conf),
            "-e", str(tmp / "error.log")]


SERVERS: dict[str, Server] = {
    s.name: s
    for s in [
        Server("cppuvicorn", cmd_cppuvicorn,
               "python -m cppuvicorn APP --host 127.0.0.1 --port P --no-access-log "
               "--log-level warning"),
        Server("cppuvicorn-metrics", cmd_cppuvicorn_metrics,
               "python -m cppuvicorn APP --host 127.0.0.1 --port P --no-access-log "
               "--log-level warning --metrics-port 0"),
        Server("cppuvicorn-counters", cmd_cppuvicorn_counters,
               "python benchmarks/with_metrics_region.py -- python -m cppuvicorn APP --host "
               "127.0.0.1 --port P --no-access-log --log-level warning"),
        Server("uvicorn", cmd_uvicorn,
               "python -m uvicorn APP --host 127.0.0.1 --port P --http httptools "
               "--loop uvloop --no-access-log --log-level warning"),
        Server("granian", cmd_granian,
               "python -m granian " + " ".join(GRANIAN_ARGS) + " --host 127.0.0.1 --port P APP"),
        Server("hypercorn", cmd_hypercorn,
               "python -m hypercorn APP --bind 127.0.0.1:P --worker-class uvloop "
               "--workers 1 --log-level warning"),
        Server("socketify", cmd_socketify,
               "python -m socketify APP --interface asgi --host 127.0.0.1 --port P "
               "--disable-listen-log true"),
        Server("nginx", cmd_nginx,
               "nginx -p TMP -c TMP/nginx.conf -e TMP/error.log  # daemon off, 1 worker, "
               "return 200 \"Hello, world!\", keepalive_requests 1e9, access_log off",
               scenarios={"hello", "hello_pipe16"}),
    ]
}

PY_MODULE = {"cppuvicorn": "cppuvicorn", "cppuvicorn-metrics": "cppuvicorn",
             "cppuvicorn-counters": "cppuvicorn", "uvicorn": "uvicorn", "granian": "granian",
             "hypercorn": "hypercorn", "socketify": "socketify"}


def probe_servers(ctx: Ctx, names: list[str]) -> None:
    env = server_env()
    for name in names:
        srv = SERVERS[name]
        if name == "nginx":
            exe = shutil.which("nginx")
            if not exe:
                srv.available, srv.skip_reason = False, "nginx not found on PATH"
                continue
            r = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10)
            srv.version = (r.stderr or r.stdout).strip().split("/")[-1]
            continue
        mod = PY_MODULE[name]
        r = subprocess.run(
            [ctx.python, "-c",
             f"import {mod}, importlib.metadata as m, importlib.util as u\n"
             f"if u.find_spec('{mod}._core'): import {mod}._core  # native part must load too\n"
             f"try: print(m.version({mod!r}))\n"
             f"except Exception: print(getattr({mod}, '__version__', '?'))"],
            capture_output=True, text=True, cwd=APPS_DIR, env=env, timeout=60)
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["?"])[-1]
            srv.available = False
            srv.skip_reason = (f"`import {mod}` (including a native `{mod}._core` if present) "
                               f"fails with {ctx.python}: {err}")
            if name == "cppuvicorn":
                srv.skip_reason += " (build/install it into that interpreter, e.g. `pip install -e .`)"
            continue
        srv.version = r.stdout.strip()
        if name == "cppuvicorn":
            # importable is not enough: the CLI entry point must work too
            r = subprocess.run([ctx.python, "-m", "cppuvicorn", "--help"], capture_output=True,
                               text=True, cwd=APPS_DIR, env=env, timeout=60)
            if r.returncode != 0:
                err = ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
                srv.available = False
                srv.skip_reason = (f"`python -m cppuvicorn --help` exited {r.returncode}: {err}")


def server_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(APPS_DIR) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(start: list[int]) -> int:
    lo, hi = PORT_RANGE
    for _ in range(hi - lo):
        port = start[0]
        start[0] = lo if port >= hi else port + 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        # also make sure nobody is listening there (e.g. on 0.0.0.0 with SO_REUSEPORT)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                continue
        return port
    raise RuntimeError("no free port")


def wait_ready(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> float:
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise CheckError(f"server exited with code {proc.returncode} before answering: "
                             f"{tail(log, 1)}", log_tail=tail(log, 15))
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return time.monotonic() - t0
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() - t0 > timeout:
            raise CheckError(f"server did not answer within {timeout:.0f} s: {tail(log, 1)}",
                             log_tail=tail(log, 15))
        time.sleep(0.05)


def tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

_WRK_RPS = re.compile(r"Requests/sec:\s*([\d.]+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def run_wrk(ctx: Ctx, port: int, conns: int, duration: float, lua: str, out: Path,
            on_start: Callable[[int], None] | None = None) -> tuple[dict, float, float]:
    """Run wrk pinned to the client CPU; returns (parsed, client_cpu_seconds, wall)."""
    cmd = ["taskset", "-c", str(ctx.client_cpu), "wrk", "-t1", f"-c{conns}",
           f"-d{int(duration)}s", "--latency", "--timeout", "5s", "-s", str(LUA_DIR / lua),
           f"http://{HOST}:{port}/"]
    with open(out, "wb") as f:
        t0 = time.monotonic()
        proc = spawn(cmd, stdout=f, stderr=subprocess.STDOUT)
        if on_start:
            on_start(proc.pid)
        deadline = t0 + duration + 30
        status, ru = None, None
        try:
            while True:
                pid, st, r = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status, ru = st, r
                    break
                if time.monotonic() > deadline:
                    kill_tree(proc)
                    raise RuntimeError(f"wrk did not finish within {duration + 30:.0f} s")
                time.sleep(0.05)
        finally:
            wall = time.monotonic() - t0
            if status is not None:  # reaped here; otherwise kill_all() still owns it
                proc.returncode = os.waitstatus_to_exitcode(status)
                _LIVE.pop(proc.pid, None)
    text = out.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {text.strip()[-300:]}")
    m = re.search(r"^WRK_JSON (\{.*\})\s*$", text, re.M)
    if not m:
        raise RuntimeError(f"could not parse wrk output: {text.strip()[-300:]}")
    data = json.loads(m.group(1))
    m_rps = _WRK_RPS.search(text)
    data["rps_text"] = float(m_rps.group(1)) if m_rps else None
    m_non = _WRK_NON2XX.search(text)
    data["non2xx_text"] = int(m_non.group(1)) if m_non else 0
    data["raw"] = text
    return data, ru.ru_utime + ru.ru_stime, wall


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


def measure(ctx: Ctx, args, srv: Server, sc: Scenario, conns: int, port_cursor: list[int],
            workdir: Path) -> dict:
    port = free_port(port_cursor)
    tmp = Path(tempfile.mkdtemp(prefix=f"{srv.name}-{sc.name}-c{conns}-", dir=workdir))
    log = tmp / "server.log"
    cmd = srv.build(ctx, sc, port, tmp)
    full = ["taskset", "-c", str(ctx.server_cpu), *cmd]
    rec: dict = {"server": srv.name, "scenario": sc.name, "conns": conns, "port": port,
                 "ok": False, "error": None, "cmd": shlex.join(full),
                 "started": _dt.datetime.now().isoformat(timespec="seconds")}
    with open(log, "wb") as logf:
        proc = spawn(full, stdout=logf, stderr=subprocess.STDOUT, cwd=APPS_DIR,
                     env=server_env())
    try:
        rec["startup_s"] = round(wait_ready(proc, port, args.startup_timeout, log), 3)
        try:
            sc.check(port)
        except (OSError, http.client.HTTPException) as e:
            raise CheckError(f"{type(e).__name__}: {e}")
        if args.warmup > 0:
            run_wrk(ctx, port, conns, args.warmup, sc.lua, tmp / "wrk-warmup.txt")
        if proc.poll() is not None:
            raise CheckError(f"server died during warm-up (code {proc.returncode}): "
                             f"{tail(log, 1)}", log_tail=tail(log, 15))
        box: dict = {}

        def on_start(pid: int) -> None:
            box["client_pid"] = pid
            box["snap0"] = snapshot()

        data, client_cpu_s, wall = run_wrk(ctx, port, conns, args.duration, sc.lua,
                                           tmp / "wrk.txt", on_start=on_start)
        snap1 = snapshot()
        acct = cpu_accounting(box["snap0"], snap1, proc.pid, box["client_pid"],
                              client_cpu_s, ctx.server_cpu)
        alive = proc.poll() is None
        post = None
        if alive:
            try:
                sc.check(port)
                post = True
            except (CheckError, OSError, http.client.HTTPException) as e:
                post = f"{type(e).__name__}: {e}"
        dur_s = data["duration_us"] / 1e6
        rps = data["requests"] / dur_s if dur_s > 0 else 0.0
        sock = {k: data[f"err_{k}"] for k in ("connect", "read", "write", "timeout")}
        rec.update({
            "ok": True,
            "rps": rps,
            "requests": data["requests"],
            "bytes": data["bytes"],
            "wrk_duration_s": dur_s,
            "p50_ms": data["lat_p50_us"] / 1000,
            "p75_ms": data["lat_p75_us"] / 1000,
            "p90_ms": data["lat_p90_us"] / 1000,
            "p99_ms": data["lat_p99_us"] / 1000,
            "p999_ms": data["lat_p999_us"] / 1000,
            "mean_ms": data["lat_mean_us"] / 1000,
            "max_ms": data["lat_max_us"] / 1000,
            "non2xx": data["err_status"],
            "socket_errors": sock,
            "client_cpu": client_cpu_s / wall if wall > 0 else None,
            **acct,
            "server_alive_after": alive,
            "post_check": post,
        })
        if not alive:
            rec["error"] = f"server died during measurement (code {proc.returncode})"
        elif post is not True:
            rec["error"] = f"correctness check after load failed: {post}"
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    except CheckError as e:
        rec["error"] = f"startup/correctness: {e}"
        if e.log_tail:
            rec["log_tail"] = e.log_tail
    except RuntimeError as e:
        rec["error"] = f"load: {e}"
    finally:
        kill_tree(proc)
    return rec


def describe_others(rec: dict) -> str:
    named = ", ".join(f"{k} {v:.2f}" for k, v in rec.get("others_top", []))
    unattributed = (rec.get("others_cpu") or 0) - (rec.get("others_cpu_procs") or 0)
    if unattributed >= 0.02:
        named += (", " if named else "") + f"short-lived processes {unattributed:.2f}"
    return named or "?"


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100_000:
        return f"{x / 1000:.0f}k"
    if x >= 1000:
        return f"{x / 1000:.1f}k"
    return f"{x:.0f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.0f}%"


def progress_line(r: int, rounds: int, rec: dict) -> str:
    head = f"[round {r + 1}/{rounds}] {rec['scenario']:<14} c{rec['conns']:<4} {rec['server']:<11}"
    if not rec.get("rps"):
        return f"{head} FAILED: {rec['error']}"
    errs = rec["non2xx"] + sum(rec["socket_errors"].values())
    s = (f"{head} {rec['rps']:>9,.0f} req/s  p50 {fmt_ms(rec['p50_ms'])} ms  "
         f"p99 {fmt_ms(rec['p99_ms'])} ms  srv {fmt_pct(rec['server_cpu'])}  "
         f"cli {fmt_pct(rec['client_cpu'])}  other {fmt_pct(rec['others_cpu'])}")
    if errs:
        s += f"  errors {errs}"
    if rec.get("error"):
        s += f"  !! {rec['error']}"
    return s


# --------------------------------------------------------------------------------------------
# Aggregation and reports
# --------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def paired_ratios(mine: list[dict], by: dict, other: str) -> tuple[list[float], list[float]]:
    """Per round: each of ``mine``'s req/s over ``other``'s in the same scenario, connections
    and round, and the same per server core. ``by`` maps (scenario, conns, server, round) to
    a good record."""
    ratios, core_ratios = [], []
    for r in mine:
        o = by.get((r["scenario"], r["conns"], other, r["round"]))
        if o and o["rps"] > 0:
            ratios.append(r["rps"] / o["rps"])
            if r.get("server_cpu") and o.get("server_cpu"):
                core_ratios.append((r["rps"] / r["server_cpu"]) / (o["rps"] / o["server_cpu"]))
    return ratios, core_ratios


def aggregate(records: list[dict], baseline: str, servers: list[str], scenarios: list[str],
              connections: list[int]) -> list[dict]:
    good = [r for r in records if r.get("rps") and not r.get("error")]
    by = {}
    for r in good:
        by[(r["scenario"], r["conns"], r["server"], r["round"])] = r
    rows = []
    for sc in scenarios:
        for c in connections:
            for s in servers:
                if SERVERS[s].scenarios is not None and sc not in SERVERS[s].scenarios:
                    continue
                mine = [r for r in good if (r["scenario"], r["conns"], r["server"]) == (sc, c, s)]
                failed = [r for r in records
                          if (r["scenario"], r["conns"], r["server"]) == (sc, c, s)
                          and (not r.get("rps") or r.get("error"))]
                if not mine and not failed:
                    continue
                ratios, core_ratios = paired_ratios(mine, by, baseline)
                per_core = [r["rps"] / r["server_cpu"] for r in mine if r.get("server_cpu")]
                rows.append({
                    "scenario": sc, "conns": c, "server": s,
                    "rounds_ok": len(mine), "rounds_failed": len(failed),
                    "failures": sorted({r["error"] for r in failed}),
                    "rps": spread([r["rps"] for r in mine]),
                    "p50_ms": spread([r["p50_ms"] for r in mine]),
                    "p99_ms": spread([r["p99_ms"] for r in mine]),
                    "ratio_vs_baseline": spread(ratios) if s != baseline else None,
                    "rps_per_server_core": spread(per_core),
                    "ratio_per_core_vs_baseline": spread(core_ratios) if s != baseline else None,
                    "server_cpu": spread([r.get("server_cpu") for r in mine]),
                    "client_cpu": spread([r.get("client_cpu") for r in mine]),
                    "others_cpu": spread([r.get("others_cpu") for r in mine]),
                    "non2xx": sum(r["non2xx"] for r in mine),
                    "socket_errors": sum(sum(r["socket_errors"].values()) for r in mine),
                    "noisy_rounds": sum(1 for r in mine if r.get("noisy")),
                    "ideal_rps": SCENARIOS[sc].ideal(c) if SCENARIOS[sc].ideal else None,
                })
    return rows


def head_to_head(records: list[dict], subject: str = "cppuvicorn") -> list[dict]:
    """``subject``'s req/s over every other server's, per round, so that anchors other than
    the baseline get ratios measured side by side."""
    good = [r for r in records if r.get("rps") and not r.get("error")]
    by = {(r["scenario"], r["conns"], r["server"], r["round"]): r for r in good}
    out = []
    for sc in SCENARIOS:
        for c in sorted({r["conns"] for r in good}):
            mine = [r for r in good if (r["scenario"], r["conns"], r["server"]) == (sc, c, subject)]
            for other in sorted({r["server"] for r in good} - {subject}):
                ratios, core_ratios = paired_ratios(mine, by, other)
                if ratios:
                    out.append({"scenario": sc, "conns": c, "other": other,
                                "ratio": spread(ratios), "per_core": spread(core_ratios)})
    return out


def cell(sp: dict | None, f: Callable[[float], str]) -> str:
    if not sp:
        return "–"
    if sp["n"] == 1:
        return f(sp["median"])
    return f"{f(sp['median'])} [{f(sp['min'])}–{f(sp['max'])}]"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×"


def render_markdown(meta: dict, rows: list[dict], records: list[dict], chart_files: list[str],
                    baseline: str, client_bound: float) -> str:
    L = []
    title = "cppuvicorn benchmark" + (" (quick)" if meta["quick"] else "")
    if meta.get("interrupted"):
        title += " — INTERRUPTED, partial results"
    L.append(f"# {title}: {meta['date']} on {meta['hostname']}\n")
    L.append(f"Command: `{meta['command']}`\n")
    L.append(f"Started {meta['started']}, finished {meta['finished']} "
             f"({meta['elapsed_min']:.1f} min).\n")
    L.append("## Machine\n")
    m = meta["machine"]
    L.append(f"- CPU: {m['model']} — {m['cpus']} CPUs ({m['topology']}){', ' + m['hypervisor'] if m.get('hypervisor') else ''}")
    L.append(f"- Kernel: {m['kernel']}; load average at start: {m['loadavg_start']}")
    L.append(f"- Pinning: server process tree on CPU {meta['server_cpu']} (`taskset -c "
             f"{meta['server_cpu']}`), wrk on CPU {meta['client_cpu']} (`taskset -c "
             f"{meta['client_cpu']} wrk -t1`), harness on CPU {meta['client_cpu']}\n")
    L.append("## Versions\n")
    for k, v in meta["versions"].items():
        L.append(f"- {k}: {v}")
    L.append("")
    L.append("## Settings\n")
    L.append(f"- rounds {meta['rounds']}, warm-up {meta['warmup']:g} s, measure "
             f"{meta['duration']:g} s, connections {', '.join(map(str, meta['connections']))}; "
             f"fresh server per measurement; server order rotated each round")
    L.append(f"- ratios: per round vs `{baseline}`, reported as median [min–max]; "
             f"latency percentiles are wrk's (--latency, --timeout 5s)")
    L.append(f"- noise: before each measurement the harness waits up to {meta['quiet_wait']:g} s "
             f"for other processes to use ≤ {meta['noise_threshold']:.2f} of a core; a "
             f"measurement during which they used more is re-run (up to "
             f"{meta['noise_retries']}×) and flagged *noisy* if it stays noisy")
    L.append("- server commands:")
    for s in meta["servers"]:
        L.append(f"  - `{s}`: `{SERVERS[s].describe}`")
    for s, why in meta["skipped"].items():
        L.append(f"- **{s} skipped**: {why}")
    L.append("")
    L.append("## Results\n")
    L.append("req/s and p99 are median [min–max] over rounds. *ratio* = req/s ÷ "
             f"{baseline}'s req/s in the same round. *per core* = req/s ÷ server CPU share "
             "(compare these when the client is saturated). CPU shares are fractions of one core.\n")
    for sc in meta["scenarios"]:
        sc_rows = [r for r in rows if r["scenario"] == sc]
        if not sc_rows:
            continue
        L.append(f"### {sc} — {SCENARIOS[sc].description}\n")
        L.append("| conns | server | req/s | ratio | p99 ms | p50 ms | server CPU | client CPU "
                 "| req/s per server core | per-core ratio | errors |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sc_rows:
            if not r["rps"]:
                L.append(f"| {r['conns']} | {r['server']} | FAILED | | | | | | | | "
                         f"{'; '.join(r['failures'])[:200]} |")
                continue
            notes = []
            cc = r["client_cpu"]["median"] if r["client_cpu"] else 0
            rate = cell(r["rps"], fmt_rate)
            if cc >= client_bound:
                rate += " ‡"
            if r["ideal_rps"]:
                rate += f" (ideal {fmt_rate(r['ideal_rps'])})"
            errs = f"{r['non2xx']} non-2xx, {r['socket_errors']} socket"
            if r["rounds_failed"]:
                errs += f"; {r['rounds_failed']} round(s) failed: " + "; ".join(r["failures"])[:160]
            if r["noisy_rounds"]:
                errs += f"; {r['noisy_rounds']} noisy"
            L.append("| " + " | ".join([
                str(r["conns"]), r["server"], rate,
                cell(r["ratio_vs_baseline"], fmt_ratio) if r["server"] != baseline else "1",
                cell(r["p99_ms"], fmt_ms), cell(r["p50_ms"], fmt_ms),
                cell(r["server_cpu"], fmt_pct), cell(r["client_cpu"], fmt_pct),
                cell(r["rps_per_server_core"], fmt_rate),
                cell(r["ratio_per_core_vs_baseline"], fmt_ratio) if r["server"] != baseline else "1",
                errs,
            ]) + " |")
        L.append("")
    L.append(f"‡ client-bound: wrk used ≥ {client_bound * 100:.0f}% of its core, so req/s is a "
             "lower bound for that server; compare *req/s per server core* instead.\n")
    # compact summary: ratio vs baseline per scenario/conns
    others = [s for s in meta["servers"] if s != baseline]
    if others and any(r["ratio_vs_baseline"] for r in rows):
        L.append(f"### Summary: req/s ratio vs {baseline} (median [min–max])\n")
        L.append("| scenario | conns | " + " | ".join(others) + " |")
        L.append("|---|---|" + "---|" * len(others))
        for sc in meta["scenarios"]:
            for c in meta["connections"]:
                vals = []
                for s in others:
                    rr = next((r for r in rows if (r["scenario"], r["conns"], r["server"])
                               == (sc, c, s)), None)
                    vals.append(cell(rr["ratio_vs_baseline"], fmt_ratio) if rr else "–")
                if any(v != "–" for v in vals):
                    L.append(f"| {sc} | {c} | " + " | ".join(vals) + " |")
        L.append("")
    h2h = head_to_head(records)
    if any(h["other"] != baseline for h in h2h):
        L.append("### Summary: cppuvicorn against each server (median [min–max] of per-round "
                 "ratios)\n")
        L.append("| scenario | conns | against | req/s ratio | per-core ratio |")
        L.append("|---|---|---|---|---|")
        for h in h2h:
            L.append(f"| {h['scenario']} | {h['conns']} | {h['other']} | "
                     f"{cell(h['ratio'], fmt_ratio)} | {cell(h['per_core'], fmt_ratio)} |")
        L.append("")
    noisy = [r for r in records if r.get("others_cpu") is not None
             and r["others_cpu"] > meta["noise_threshold"]]
    L.append("## Noise\n")
    if noisy:
        L.append("Measurements kept although other processes used CPU during them:\n")
        for r in noisy:
            L.append(f"- round {r['round'] + 1} {r['scenario']} c{r['conns']} {r['server']}: "
                     f"others {fmt_pct(r['others_cpu'])} ({describe_others(r)})")
    else:
        L.append(f"No kept measurement had other processes above "
                 f"{meta['noise_threshold']:.2f} of a core.")
    st = [r.get("steal_total") for r in records if r.get("steal_total") is not None]
    if st:
        L.append(f"\nHypervisor steal over all measured windows: median {statistics.median(st):.3f}, "
                 f"max {max(st):.3f} cores.")
    L.append("")
    if chart_files:
        L.append("## Charts\n")
        for c in chart_files:
            L.append(f"![{c}]({c})")
        L.append("")
    L.append("## Every measurement\n")
    L.append("<details><summary>per round (others = CPU used by other processes, in cores)"
             "</summary>\n")
    L.append("| round | scenario | conns | server | req/s | p50 ms | p99 ms | server CPU | "
             "client CPU | others | errors | note |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: (r["scenario"], r["conns"], r["server"], r["round"])):
        errs = (r["non2xx"] + sum(r["socket_errors"].values())) if r.get("rps") else "–"
        note = r.get("error") or ""
        if r.get("noisy"):
            note = (note + "; " if note else "") + "noisy: " + describe_others(r)
        L.append(f"| {r['round'] + 1} | {r['scenario']} | {r['conns']} | {r['server']} | "
                 f"{fmt_rate(r.get('rps'))} | {fmt_ms(r.get('p50_ms'))} | "
                 f"{fmt_ms(r.get('p99_ms'))} | {fmt_pct(r.get('server_cpu'))} | "
                 f"{fmt_pct(r.get('client_cpu'))} | {fmt_pct(r.get('others_cpu'))} | {errs} | "
                 f"{note[:160]} |")
    L.append("\n</details>\n")
    L.append("Raw per-measurement records (every round, CPU accounting, wrk numbers, exact "
             "server command lines) are in the JSON file next to this one.\n")
    return "\n".join(L)


def make_charts(rows: list[dict], meta: dict, base: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # pragma: no cover
        print(f"charts skipped: matplotlib unavailable ({e})", file=sys.stderr)
        return []
    files = []
    scen = [s for s in meta["scenarios"] if any(r["scenario"] == s and r["rps"] for r in rows)]
    if not scen:
        return []
    servers = meta["servers"]
    colors = {s: c for s, c in zip(["cppuvicorn", "uvicorn", "granian", "hypercorn", "nginx", "cppuvicorn-metrics",
                                      "socketify"],
                                    ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f", "#ff7f0e",
                                     "#8c564b"])}
    for metric, label, fname, fmt, what in (
        ("rps", "requests/s (median, whiskers min–max)", "rps", fmt_rate, "Requests/s"),
        ("p99_ms", "p99 latency ms (median, whiskers min–max)", "p99", fmt_ms,
         "p99 latency (ms)"),
    ):
        ncols = min(3, len(scen))
        nrows = (len(scen) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
        for i, sc in enumerate(scen):
            ax = axes[i // ncols][i % ncols]
            present = [s for s in servers
                       if any(r["scenario"] == sc and r["server"] == s and r[metric] for r in rows)]
            width = 0.8 / max(1, len(present))
            for j, s in enumerate(present):
                xs, ys, lo, hi = [], [], [], []
                for k, c in enumerate(meta["connections"]):
                    r = next((r for r in rows if (r["scenario"], r["conns"], r["server"])
                              == (sc, c, s) and r[metric]), None)
                    if not r:
                        continue
                    sp = r[metric]
                    xs.append(k - 0.4 + width * (j + 0.5))
                    ys.append(sp["median"])
                    lo.append(sp["median"] - sp["min"])
                    hi.append(sp["max"] - sp["median"])
                bars = ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=3, label=s,
                              color=colors.get(s))
                for b, y in zip(bars, ys):
                    ax.annotate(fmt(y), (b.get_x() + b.get_width() / 2, y), ha="center",
                                va="bottom", fontsize=7, xytext=(0, 2),
                                textcoords="offset points")
            ax.set_xticks(range(len(meta["connections"])))
            ax.set_xticklabels([f"{c} conns" for c in meta["connections"]])
            ax.set_title(sc)
            ax.grid(axis="y", alpha=0.3)
            ax.margins(y=0.15)
            if i % ncols == 0:
                ax.set_ylabel(label, fontsize=8)
            ax.legend(fontsize=7)
        for k in range(len(scen), nrows * ncols):
            axes[k // ncols][k % ncols].axis("off")
        fig.suptitle(f"{what} — {meta['hostname']} {meta['date']}"
                     f"{' (quick)' if meta['quick'] else ''}: server on CPU "
                     f"{meta['server_cpu']}, wrk -t1 on CPU {meta['client_cpu']}", fontsize=10)
        fig.tight_layout()
        out = base.parent / f"{base.name}-{fname}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        files.append(out.name)
    return files


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    info = {"model": platform.processor() or "?", "cpus": os.cpu_count(), "topology": "?",
            "kernel": platform.release(), "hypervisor": ""}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        kv = {}
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                kv[k.strip()] = v.strip()
        info["model"] = kv.get("Model name", info["model"])
        info["cpus"] = int(kv.get("CPU(s)", info["cpus"]))
        info["topology"] = (f"{kv.get('Socket(s)', '?')} socket × {kv.get('Core(s) per socket', '?')} "
                            f"cores × {kv.get('Thread(s) per core', '?')} threads")
        if kv.get("Hypervisor vendor"):
            info["hypervisor"] = f"{kv['Hypervisor vendor']} guest"
    except Exception:
        pass
    with open("/proc/loadavg") as f:
        info["loadavg_start"] = " ".join(f.read().split()[:3])
    return info


def versions(ctx: Ctx, probed: dict[str, Server]) -> dict:
    v = {}
    r = subprocess.run(
        [ctx.python, "-c",
         "import sys, json, importlib.metadata as m\n"
         "out = {'Python': sys.version.split()[0] + ' (' + sys.executable + ')'}\n"
         "for p in ['uvicorn','uvloop','httptools','granian','hypercorn','socketify','fastapi','starlette',"
         "'pydantic','cppuvicorn']:\n"
         "    try: out[p] = m.version(p)\n"
         "    except Exception: out[p] = 'not installed'\n"
         "print(json.dumps(out))"],
        capture_output=True, text=True, timeout=60, cwd=APPS_DIR, env=server_env())
    try:
        v.update(json.loads(r.stdout))
    except ValueError:
        v["Python"] = "?"
    cpp = probed.get("cppuvicorn")
    if cpp is not None:
        v["cppuvicorn"] = cpp.version if cpp.available else f"not run ({cpp.skip_reason})"
    try:
        w = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        v["wrk"] = (w.stdout + w.stderr).strip().splitlines()[0]
    except Exception:
        v["wrk"] = "?"
    if shutil.which("nginx"):
        n = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10)
        v["nginx"] = (n.stderr or n.stdout).strip()
    return v


def results_base(quick: bool, override: str | None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if override:
        return RESULTS_DIR / override
    stem = f"{_dt.date.today().isoformat()}-{socket.gethostname()}" + ("-quick" if quick else "")
    base, n = RESULTS_DIR / stem, 2
    while base.with_suffix(".md").exists() or base.with_suffix(".json").exists():
        base = RESULTS_DIR / f"{stem}-{n}"
        n += 1
    return base


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="cppuvicorn,uvicorn,granian,nginx",
                   help="comma list from: " + ",".join(SERVERS) +
                   " (nginx runs the hello scenarios only; default: %(default)s)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma list (default: %(default)s)")
    p.add_argument("--connections", default="64,256", help="comma list (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --quick: 1)")
    p.add_argument("--duration", type=int, default=None,
                   help="measured whole seconds per run (default 5; --quick: 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up whole seconds per run, 0 = none (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 2 s measure, 1 s warm-up (unless given explicitly)")
    p.add_argument("--baseline", default="uvicorn", help="ratios are vs this server")
    # abspath, not resolve: the servers run in a temporary directory, and resolving a venv's
    # python symlink would leave the venv.
    p.add_argument("--python", default=sys.executable, type=os.path.abspath,
                   help="interpreter that runs the Python servers (default: this one)")
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--granian-extra", default="",
                   help="extra granian CLI args, e.g. '--task-impl rust'")
    p.add_argument("--noise-threshold", type=float, default=0.10,
                   help="re-run a measurement when other processes used more than this "
                   "fraction of a core during it (default %(default)s)")
    p.add_argument("--noise-retries", type=int, default=1,
                   help="how often a noisy measurement is re-run (default %(default)s)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each measurement wait up to this many seconds for other "
                   "processes to drop below --noise-threshold (default 60; --quick: 10; 0 = off)")
    p.add_argument("--client-bound", type=float, default=0.90,
                   help="client CPU share from which a rate is flagged client-bound")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--out", default=None,
                   help="results file stem inside benchmarks/results/ "
                   "(default <date>-<hostname>[-quick])")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep per-measurement server logs and wrk output in the work dir")
    p.add_argument("--no-charts", action="store_true")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="measure nothing: write the report (and charts) again from a results "
                   "JSON this script wrote, e.g. after the report's format changed")
    a = p.parse_args(argv)
    a.rounds = a.rounds if a.rounds is not None else (1 if a.quick else 5)
    a.duration = a.duration if a.duration is not None else (2 if a.quick else 5)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else (10.0 if a.quick else 60.0)
    return a


def render_saved(path: Path, args) -> int:
    data = json.loads(path.read_text())
    meta, records = data["meta"], data["records"]
    rows = aggregate(records, args.baseline, meta["servers"], meta["scenarios"],
                     meta["connections"])
    base = path.with_suffix("")
    charts = [] if args.no_charts else make_charts(rows, meta, base)
    base.with_suffix(".md").write_text(
        render_markdown(meta, rows, records, charts, args.baseline, args.client_bound))
    print(f"wrote {base.with_suffix('.md')}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_saved(Path(args.render).absolute(), args)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    for s in servers:
        if s not in SERVERS:
            sys.exit(f"unknown server {s!r}; choose from {', '.join(SERVERS)}")
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        sys.exit("rounds must be >= 1, duration > 0, warmup >= 0")
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found on PATH")
    ncpu = os.cpu_count() or 1
    if args.server_cpu == args.client_cpu or max(args.server_cpu, args.client_cpu) >= ncpu:
        sys.exit(f"need two distinct CPUs < {ncpu} for --server-cpu/--client-cpu")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(kill_all)
    # the harness itself (checks, polling, /proc reads) stays off the server's core
    os.sched_setaffinity(0, {args.client_cpu})

    ctx = Ctx(python=args.python, server_cpu=args.server_cpu, client_cpu=args.client_cpu,
              granian_extra=shlex.split(args.granian_extra))
    started = _dt.datetime.now()
    print(f"probing servers with {ctx.python} ...", flush=True)
    probe_servers(ctx, servers)
    skipped = {}
    for s in servers:
        if not SERVERS[s].available:
            skipped[s] = SERVERS[s].skip_reason
            print(f"SKIPPING {s}: {SERVERS[s].skip_reason}", flush=True)
    active = [s for s in servers if SERVERS[s].available]
    if args.baseline not in active:
        print(f"note: baseline {args.baseline!r} is not among the servers run; no ratios",
              flush=True)
    if not active:
        sys.exit("no runnable server")

    cells = [(sc, c) for sc in scenarios for c in connections]
    per_round = sum(1 for sc, c in cells for s in active
                    if SERVERS[s].scenarios is None or sc in SERVERS[s].scenarios)
    est = per_round * args.rounds * (args.warmup + args.duration + 2.0) / 60
    print(f"servers: {', '.join(active)}; scenarios: {', '.join(scenarios)}; connections: "
          f"{connections}; {args.rounds} round(s) x {per_round} measurements, "
          f"warm-up {args.warmup:g} s + {args.duration:g} s each; about {est:.0f} min", flush=True)

    base = results_base(args.quick, args.out)
    workdir = Path(tempfile.mkdtemp(prefix="cppuvicorn-bench-"))
    meta = {
        "date": started.date().isoformat(), "hostname": socket.gethostname(),
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None
        else shlex.join(["benchmarks/run.py", *argv]),
        "quick": args.quick, "rounds": args.rounds, "duration": args.duration,
        "warmup": args.warmup, "connections": connections, "scenarios": scenarios,
        "servers": active, "skipped": skipped, "baseline": args.baseline,
        "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
        "noise_threshold": args.noise_threshold, "noise_retries": args.noise_retries,
        "quiet_wait": args.quiet_wait,
        "granian_args": GRANIAN_ARGS + ctx.granian_extra,
        "machine": machine_info(), "versions": versions(ctx, SERVERS),
        "workdir": str(workdir) if args.keep_logs else None,
    }
    records: list[dict] = []
    discarded: list[dict] = []  # noisy attempts that were re-measured
    port_cursor = [PORT_RANGE[0] + random.randrange(PORT_RANGE[1] - PORT_RANGE[0])]
    interrupted = False
    try:
        for r in range(args.rounds):
            rot = r % len(active)
            order = active[rot:] + active[:rot]
            for sc_name in scenarios:
                sc = SCENARIOS[sc_name]
                for c in connections:
                    for s in order:
                        srv = SERVERS[s]
                        if srv.scenarios is not None and sc_name not in srv.scenarios:
                            continue
                        attempt = 0
                        while True:
                            waited = 0.0
                            if args.quiet_wait > 0:
                                waited, _ = wait_for_quiet(args.noise_threshold, args.quiet_wait)
                            rec = measure(ctx, args, srv, sc, c, port_cursor, workdir)
                            rec["round"], rec["attempt"] = r, attempt
                            rec["quiet_wait_s"] = round(waited, 1)
                            noisy = (rec.get("others_cpu") or 0) > args.noise_threshold
                            rec["noisy"] = noisy
                            print(progress_line(r, args.rounds, rec)
                                  + (f"  [noisy: {describe_others(rec)}]" if noisy else ""),
                                  flush=True)
                            if noisy and attempt < args.noise_retries:
                                discarded.append(rec)
                                attempt += 1
                                time.sleep(1.0)
                                continue
                            break
                        records.append(rec)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping servers and writing partial results", flush=True)
    finally:
        kill_all()
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)

    finished = _dt.datetime.now()
    meta.update({"finished": finished.isoformat(timespec="seconds"),
                 "elapsed_min": (finished - started).total_seconds() / 60,
                 "interrupted": interrupted})
    rows = aggregate(records, args.baseline, active, scenarios, connections)
    charts = [] if args.no_charts else make_charts(rows, meta, base)
    md = render_markdown(meta, rows, records, charts, args.baseline, args.client_bound)
    base.with_suffix(".md").write_text(md)
    base.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "records": records, "discarded_noisy": discarded}, indent=1, default=str))
    print(f"\nwrote {base.with_suffix('.md')}\n      {base.with_suffix('.json')}"
          + "".join(f"\n      {base.parent / c}" for c in charts))
    failures = [r for r in records if r.get("error")]
    if failures:
        print(f"{len(failures)} measurement(s) had errors; see the report", file=sys.stderr)
    return 130 if interrupted else (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
