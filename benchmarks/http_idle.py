#!/usr/bin/env python3
"""Idle keep-alive HTTP connections: memory per connection, and the latency of the active ones.

    .venv/bin/python benchmarks/http_idle.py [--conns 10000] [--servers cppuvicorn,uvicorn]
        [--rounds 1] [--active 64] [--duration 3]

For each server (a fresh one per round, one worker, benchmarks/apps/hello.py, pinned to CPU 1,
`--timeout-keep-alive 600` so idle connections are kept; both servers get the same options):

1. wait until it answers; measure `wrk -c ACTIVE` for DURATION s (the baseline: req/s, p50,
   p99); read VmRSS from /proc.
2. open N connections from an asyncio client in this process (pinned to CPU 0), send one
   `GET /` on each and read its response, keep them open and silent; wait --settle s and read
   VmRSS again. Per connection = ΔRSS / N (the response buffers, parser state and whatever a
   connection keeps between requests).
3. with the N connections still open, measure wrk again: the active connections' req/s and
   latency next to N idle ones ("flat": p99 and req/s close to the baseline).

With `--control`, each round first holds the N idle connections on a second server of the same
kind (fresh, idle, on the same CPU) and measures wrk against the first one: the active
connections' latency next to N idle connections that are not the measured server's. If p99
rises as much there, what raises it is the machine (the kernel, the client core), not the
server's handling of its idle connections.

Targets (issue #6): cppuvicorn's memory per idle connection ≤ 1/10 of Uvicorn's; 10,000
concurrent connections in one worker with flat latency for the active ones. RLIMIT_NOFILE is
raised to its hard limit here and inherited by the servers. Writes
benchmarks/results/http-idle-<date>.md/.json.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as _dt
import json
import os
import random
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402

KEEP_ALIVE = "600"


def cmd(name: str, python: str, port: int) -> list[str]:
    common = ["hello:app", "--host", base.HOST, "--port", str(port), "--no-access-log",
              "--log-level", "warning", "--timeout-keep-alive", KEEP_ALIVE]
    if name == "cppuvicorn":
        return [python, "-m", "cppuvicorn", *common]
    if name == "uvicorn":
        return [python, "-m", "uvicorn", *common, "--http", "httptools", "--loop", "uvloop"]
    raise SystemExit(f"unknown server {name!r} (cppuvicorn, uvicorn)")


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1])
    return out


async def open_idle(port: int, n: int, batch: int, timeout: float) -> list:
    """N connections, one GET / answered on each; returns the open writers."""
    request = f"GET / HTTP/1.1\r\nhost: {base.HOST}:{port}\r\n\r\n".encode()
    writers: list = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection(base.HOST, port)
        writers.append((reader, writer))
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer {head[:40]!r}")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)

    deadline = time.monotonic() + timeout
    for start in range(0, n, batch):
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(min(batch, n - start)))),
                               max(1.0, deadline - time.monotonic()))
    return writers


def wrk(args, port: int, out: Path) -> dict:
    ctx = base.Ctx(python=args.python, server_cpu=args.server_cpu, client_cpu=args.client_cpu)
    data, _cpu, _wall = base.run_wrk(ctx, port, args.active, args.duration, "report.lua", out)
    errors = sum(data[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                   "err_timeout"))
    return {"rps": data["requests"] / (data["duration_us"] / 1e6), "p50_ms": data["lat_p50_us"] / 1e3,
            "p99_ms": data["lat_p99_us"] / 1e3, "errors": errors + data["non2xx_text"]}


def start_server(args, name: str, port: int, workdir: Path):
    """Starts one pinned server; returns (process, log path, command)."""
    log = workdir / f"{name}-{port}.log"
    full = ["taskset", "-c", str(args.server_cpu), *cmd(name, args.python, port)]
    with open(log, "wb") as logf:
        proc = base.spawn(full, stdout=logf, stderr=subprocess.STDOUT, cwd=base.APPS_DIR,
                          env=base.server_env())
    return proc, log, full


def close_idle(loop, writers: list) -> None:
    for _r, w in writers:
        w.transport.abort()
    writers.clear()
    loop.run_until_complete(asyncio.sleep(0.5))


def measure_control(args, name: str, port: int, port_cursor: list[int], workdir: Path,
                    loop) -> dict:
    """wrk against `port` while N idle connections are held by another, idle server."""
    other_port = base.free_port(port_cursor)
    other, other_log, _ = start_server(args, name, other_port, workdir)
    writers: list = []
    try:
        base.wait_ready(other, other_port, args.startup_timeout, other_log)
        writers = loop.run_until_complete(open_idle(other_port, args.conns, args.batch,
                                                    args.connect_timeout))
        time.sleep(args.settle)
        result = wrk(args, port, workdir / f"wrk-{name}-{port}-control.txt")
        result["idle_open"] = len(writers)
        return result
    finally:
        close_idle(loop, writers)
        base.kill_tree(other, grace=10.0)
        time.sleep(args.settle)


def measure(args, name: str, port_cursor: list[int], workdir: Path) -> dict:
    port = base.free_port(port_cursor)
    proc, log, full = start_server(args, name, port, workdir)
    rec: dict = {"server": name, "conns": args.conns, "cmd": shlex.join(full), "error": None}
    loop = asyncio.new_event_loop()
    writers: list = []
    try:
        base.wait_ready(proc, port, args.startup_timeout, log)
        base.check_hello(port)
        rec["wrk_before"] = wrk(args, port, workdir / f"wrk-{name}-{port}-a.txt")
        time.sleep(args.settle)
        if args.control:
            rec["wrk_idle_elsewhere"] = measure_control(args, name, port, port_cursor, workdir,
                                                        loop)
        rec["before_kib"] = rss_kib(proc.pid)
        t0 = time.monotonic()
        writers = loop.run_until_complete(open_idle(port, args.conns, args.batch,
                                                    args.connect_timeout))
        rec["connect_s"] = time.monotonic() - t0
        time.sleep(args.settle)
        if proc.poll() is not None:
            raise RuntimeError(f"server died (code {proc.returncode}): {base.tail(log, 3)}")
        rec["after_kib"] = rss_kib(proc.pid)
        rec["wrk_with_idle"] = wrk(args, port, workdir / f"wrk-{name}-{port}-b.txt")
        # The idle connections must still be open (not closed by a keep-alive timeout).
        alive = loop.run_until_complete(count_open(writers))
        rec["idle_still_open"] = alive
        delta = rec["after_kib"]["VmRSS"] - rec["before_kib"]["VmRSS"]
        rec["per_conn_bytes"] = delta * 1024 / args.conns
        rec["anon_per_conn_bytes"] = ((rec["after_kib"]["RssAnon"] - rec["before_kib"]["RssAnon"])
                                      * 1024 / args.conns)
    except (base.CheckError, RuntimeError, OSError, ValueError, asyncio.TimeoutError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["log_tail"] = base.tail(log, 10)
    finally:
        close_idle(loop, writers)
        loop.close()
        base.kill_tree(proc, grace=10.0)
    return rec


async def count_open(conns: list) -> int:
    """Connections the server has not closed (a close would have been read as EOF by now)."""
    await asyncio.sleep(0.5)
    return sum(1 for r, w in conns if not r.at_eof() and not w.transport.is_closing())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--servers", default="cppuvicorn,uvicorn")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--active", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    p.add_argument("--batch", type=int, default=500, help="connections opened at a time")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--target", type=float, default=0.1,
                   help="target per-connection ratio cppuvicorn / uvicorn (default 0.1)")
    p.add_argument("--python", default=sys.executable, type=os.path.abspath)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--out", default=None, help="results file stem in benchmarks/results/")
    p.add_argument("--note", default=None, help="a line of context for the top of the report")
    p.add_argument("--control", action="store_true",
                   help="also measure with the idle connections held by another, idle server")
    args = p.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.conns + 64:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.conns} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, base._on_signal)
    atexit.register(base.kill_all)
    os.sched_setaffinity(0, {args.client_cpu})

    started = _dt.datetime.now()
    workdir = Path(tempfile.mkdtemp(prefix="cppuvicorn-httpidle-"))
    port_cursor = [base.PORT_RANGE[0] + random.randrange(base.PORT_RANGE[1] - base.PORT_RANGE[0])]
    records = []
    try:
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                rec = measure(args, s, port_cursor, workdir)
                rec["round"] = r
                records.append(rec)
                if rec["error"]:
                    print(f"[round {r + 1}] {s:<11} FAILED: {rec['error']}", flush=True)
                    continue
                a, b = rec["wrk_before"], rec["wrk_with_idle"]
                c = rec.get("wrk_idle_elsewhere")
                control = (f" (idle elsewhere: {c['rps']:,.0f} req/s, p99 {c['p99_ms']:.2f} ms)"
                           if c else "")
                print(f"[round {r + 1}] {s:<11} {rec['per_conn_bytes'] / 1024:.2f} KiB per idle "
                      f"connection ({rec['idle_still_open']}/{args.conns} still open); "
                      f"{args.active} active: {a['rps']:,.0f} -> {b['rps']:,.0f} req/s, p99 "
                      f"{a['p99_ms']:.2f} -> {b['p99_ms']:.2f} ms{control}", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        base.kill_all()

    ok = [r for r in records if not r["error"]]
    med = {s: statistics.median([r["per_conn_bytes"] for r in ok if r["server"] == s])
           for s in servers if any(r["server"] == s for r in ok)}
    ratio = (med["cppuvicorn"] / med["uvicorn"]
             if "cppuvicorn" in med and med.get("uvicorn", 0) > 0 else None)
    meta = {"date": started.date().isoformat(), "hostname": socket.gethostname(),
            "started": started.isoformat(timespec="seconds"),
            "command": shlex.join(["benchmarks/http_idle.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
            "conns": args.conns, "active": args.active, "duration": args.duration,
            "machine": base.machine_info()}
    L = [f"# Idle keep-alive HTTP connections, {meta['date']} on {meta['hostname']}\n",
         *([f"> **{args.note}**\n"] if args.note else []),
         f"Command: `{meta['command']}`\n",
         f"One worker per server (`apps/hello.py`, `--timeout-keep-alive {KEEP_ALIVE}`, server on "
         f"CPU {args.server_cpu}, clients on CPU {args.client_cpu}). {args.conns} connections each "
         "sent one `GET /`, read the answer and stayed open and silent. Per connection = ΔVmRSS "
         f"÷ {args.conns}. The active load is `wrk -t1 -c{args.active} -d{args.duration:g}s` "
         "(hello), measured before the idle connections were opened and again while they were "
         "open.\n",
         *(["*Idle elsewhere* (`--control`): the same load while the same number of idle "
            "connections was held by a second, idle server of the same kind on the same CPU, "
            "not by the measured one.\n"] if args.control else []),
         "| round | server | per idle connection | anon | still open | req/s alone | req/s with "
         "idle | p99 alone | p99 with idle | "
         + ("req/s, idle elsewhere | p99, idle elsewhere | " if args.control else "")
         + "wrk errors |",
         "|---" * (12 if args.control else 10) + "|"]
    for r in records:
        if r["error"]:
            L.append(f"| {r['round'] + 1} | {r['server']} | FAILED: {r['error'][:160]} |"
                     + " |" * (9 if args.control else 7))
            continue
        a, b = r["wrk_before"], r["wrk_with_idle"]
        c = r.get("wrk_idle_elsewhere")
        control = f"{c['rps']:,.0f} | {c['p99_ms']:.2f} ms | " if c else ""
        L.append(f"| {r['round'] + 1} | {r['server']} | {r['per_conn_bytes'] / 1024:.2f} KiB | "
                 f"{r['anon_per_conn_bytes'] / 1024:.2f} KiB | {r['idle_still_open']} | "
                 f"{a['rps']:,.0f} | {b['rps']:,.0f} | {a['p99_ms']:.2f} ms | {b['p99_ms']:.2f} ms "
                 f"| {control}{a['errors']} / {b['errors']} |")
    L.append("")
    for s, v in med.items():
        L.append(f"- {s}: median {v / 1024:.2f} KiB per idle connection")
    if ratio is not None:
        verdict = "met" if ratio <= args.target else "NOT met"
        L.append(f"- ratio cppuvicorn / uvicorn: **{ratio:.3f}** (target ≤ {args.target:g}: "
                 f"{verdict})")
    for s in servers:
        rs = [r for r in ok if r["server"] == s]
        if rs:
            rps = statistics.median(r["wrk_with_idle"]["rps"] / r["wrk_before"]["rps"] for r in rs)
            p99 = statistics.median(r["wrk_with_idle"]["p99_ms"] / max(r["wrk_before"]["p99_ms"], 1e-3)
                                    for r in rs)
            L.append(f"- {s}: with {args.conns} idle connections the active ones keep "
                     f"{rps:.2f}× their req/s and {p99:.2f}× their p99")
            rc = [r for r in rs if r.get("wrk_idle_elsewhere")]
            if rc:
                p99c = statistics.median(r["wrk_idle_elsewhere"]["p99_ms"]
                                         / max(r["wrk_before"]["p99_ms"], 1e-3) for r in rc)
                here = statistics.median(r["wrk_with_idle"]["p99_ms"]
                                         / max(r["wrk_idle_elsewhere"]["p99_ms"], 1e-3)
                                         for r in rc)
                L.append(f"  - with the idle connections on another server instead: "
                         f"{p99c:.2f}× their p99; idle here ÷ idle elsewhere: {here:.2f}× "
                         "(what the measured server's own idle connections add)")
    stem = args.out or f"http-idle-{meta['date']}"
    out_md = base.RESULTS_DIR / f"{stem}.md"
    out_md.write_text("\n".join(L) + "\n")
    (base.RESULTS_DIR / f"{stem}.json").write_text(json.dumps({"meta": meta, "records": records},
                                                              indent=1, default=str))
    print(f"wrote {out_md}")
    return 0 if ok and len(ok) == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
