#!/usr/bin/env python3
"""Memory per idle WebSocket: N open connections held by one worker, cppuvicorn vs Uvicorn.

    .venv/bin/python benchmarks/ws_idle_rss.py [--conns 10000] [--servers cppuvicorn,uvicorn]
        [--rounds 1] [--idle-messages 1]

For each server (a fresh one per round, one worker, the echo app benchmarks/apps/ws_echo.py,
pinned to CPU 1): wait until it answers, run one echo check (so lazily imported code is loaded),
read VmRSS from /proc/PID/status, then open N WebSockets with `wsload --idle` (pinned to CPU 0),
exchange --idle-messages echoes on each so every receive path has run once, wait --settle
seconds and read VmRSS again. Per-connection memory = (after - before) / N. The target is
cppuvicorn ≤ 1/5 of Uvicorn's per connection. Writes benchmarks/results/ws-idle-rss-*.md/.json.

RLIMIT_NOFILE is raised to its hard limit here, and the servers and wsload inherit it; the hard
limit must exceed N plus a few dozen.
"""
from __future__ import annotations

import argparse
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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402
import ws_common as wsc  # noqa: E402


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def measure(args, wsload: Path, name: str, port_cursor: list[int], workdir: Path) -> dict:
    srv = wsc.SERVERS[name]
    port = base.free_port(port_cursor)
    log = workdir / f"{name}-{port}.log"
    full = ["taskset", "-c", str(args.server_cpu), *srv.build(args.python, wsload, port)]
    rec: dict = {"server": name, "conns": args.conns, "cmd": shlex.join(full), "error": None}
    with open(log, "wb") as logf:
        proc = base.spawn(full, stdout=logf, stderr=subprocess.STDOUT, cwd=base.APPS_DIR,
                          env=base.server_env())
    client = None
    try:
        base.wait_ready(proc, port, args.startup_timeout, log)
        wsc.check_echo(port)
        time.sleep(args.settle)
        rec["before_kib"] = rss_kib(proc.pid)
        rec["tree_before_kib"] = sum(wsc.proc_tree_rss_kib(proc.pid).values())
        cmd = ["taskset", "-c", str(args.client_cpu), str(wsload), "--host", base.HOST,
               "--port", str(port), "--idle", "--conns", str(args.conns),
               "--idle-messages", str(args.idle_messages), "--size", str(args.size),
               "--connect-timeout", str(args.connect_timeout)]
        client = base.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(args.connect_timeout + 30, lambda: base.kill_tree(client))
        watchdog.start()
        try:
            line = client.stdout.readline()
        finally:
            watchdog.cancel()
        if not line.strip():
            raise RuntimeError(f"wsload printed nothing (exit {client.poll()}): "
                               f"{client.stderr.read()[-300:] if client.poll() is not None else ''}")
        report = json.loads(line)
        rec["wsload"] = report
        if report["ready"] != args.conns:
            raise RuntimeError(f"only {report['ready']} of {args.conns} connections ready "
                               f"({report['failed']} failed, {report['lost']} lost): "
                               f"{report['first_error']}")
        time.sleep(args.settle)
        if proc.poll() is not None:
            raise RuntimeError(f"server died (code {proc.returncode}): {base.tail(log, 3)}")
        rec["after_kib"] = rss_kib(proc.pid)
        rec["tree_after_kib"] = sum(wsc.proc_tree_rss_kib(proc.pid).values())
        if client.poll() is not None:
            raise RuntimeError("wsload exited while holding the connections")
        delta = rec["after_kib"]["VmRSS"] - rec["before_kib"]["VmRSS"]
        rec["delta_kib"] = delta
        rec["per_conn_bytes"] = delta * 1024 / args.conns
        rec["anon_per_conn_bytes"] = ((rec["after_kib"].get("RssAnon", 0)
                                      - rec["before_kib"].get("RssAnon", 0)) * 1024 / args.conns)
        rec["connect_s"] = report["connect_s"]
    except (base.CheckError, RuntimeError, OSError, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["log_tail"] = base.tail(log, 10)
    finally:
        if client is not None:
            base.kill_tree(client)
        base.kill_tree(proc, grace=10.0)
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--servers", default="cppuvicorn,uvicorn")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--idle-messages", type=int, default=1,
                   help="echoes exchanged on each connection before it idles (default 1)")
    p.add_argument("--size", type=int, default=64, help="size of those messages")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait before each RSS reading (default 2)")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--target", type=float, default=0.2,
                   help="target per-connection ratio cppuvicorn / uvicorn (default 0.2)")
    p.add_argument("--python", default=sys.executable, type=os.path.abspath)
    p.add_argument("--wsload", default=None)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--out", default=None, help="results file stem in benchmarks/results/")
    p.add_argument("--note", default=None, help="a line of context for the top of the report")
    args = p.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in wsc.SERVERS:
            sys.exit(f"unknown server {s!r}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.conns + 64:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.conns} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wsload = wsc.ensure_wsload(args.wsload)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, base._on_signal)
    atexit.register(base.kill_all)
    os.sched_setaffinity(0, {args.client_cpu})

    started = _dt.datetime.now()
    workdir = Path(tempfile.mkdtemp(prefix="cppuvicorn-wsidle-"))
    port_cursor = [base.PORT_RANGE[0] + random.randrange(base.PORT_RANGE[1] - base.PORT_RANGE[0])]
    records = []
    try:
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                rec = measure(args, wsload, s, port_cursor, workdir)
                rec["round"] = r
                records.append(rec)
                if rec["error"]:
                    print(f"[round {r + 1}] {s:<11} FAILED: {rec['error']}", flush=True)
                else:
                    print(f"[round {r + 1}] {s:<11} RSS {rec['before_kib']['VmRSS'] / 1024:.1f} "
                          f"-> {rec['after_kib']['VmRSS'] / 1024:.1f} MiB with {args.conns} idle "
                          f"WebSockets: {rec['per_conn_bytes'] / 1024:.2f} KiB per connection "
                          f"(anon {rec['anon_per_conn_bytes'] / 1024:.2f} KiB; connected in "
                          f"{rec['connect_s']:.1f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        base.kill_all()

    per = {s: [r["per_conn_bytes"] for r in records if r["server"] == s and not r["error"]]
           for s in servers}
    med = {s: statistics.median(v) for s, v in per.items() if v}
    ratio = None
    if "cppuvicorn" in med and "uvicorn" in med and med["uvicorn"] > 0:
        ratio = med["cppuvicorn"] / med["uvicorn"]
    meta = {
        "date": started.date().isoformat(), "hostname": socket.gethostname(),
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["benchmarks/ws_idle_rss.py", *(sys.argv[1:] if argv is None
                                                               else argv)]),
        "conns": args.conns, "idle_messages": args.idle_messages, "size": args.size,
        "machine": base.machine_info(), "versions": wsc.versions(args.python),
    }
    L = [f"# Idle WebSockets: memory per connection, {meta['date']} on {meta['hostname']}\n",
         *([f"> **{args.note}**\n"] if args.note else []),
         f"Command: `{meta['command']}`\n",
         f"{args.conns} WebSockets opened by `wsload --idle` against one worker running "
         f"`apps/ws_echo.py`; each exchanged {args.idle_messages} echo(es) of {args.size} bytes, "
         "then stayed open. RSS is VmRSS of the server process from /proc, read after "
         f"{args.settle:g} s of settling before and after. Per connection = ΔRSS ÷ "
         f"{args.conns}.\n",
         "| round | server | RSS before | RSS after | per connection | anon per connection |",
         "|---|---|---|---|---|---|"]
    for r in records:
        if r["error"]:
            L.append(f"| {r['round'] + 1} | {r['server']} | FAILED: {r['error'][:160]} | | | |")
            continue
        L.append(f"| {r['round'] + 1} | {r['server']} | {r['before_kib']['VmRSS'] / 1024:.1f} MiB "
                 f"| {r['after_kib']['VmRSS'] / 1024:.1f} MiB | "
                 f"{r['per_conn_bytes'] / 1024:.2f} KiB | {r['anon_per_conn_bytes'] / 1024:.2f} KiB |")
    L.append("")
    for s, v in med.items():
        L.append(f"- {s}: median {v / 1024:.2f} KiB per idle connection")
    if ratio is not None:
        verdict = "meets" if ratio <= args.target else "misses"
        L.append(f"- cppuvicorn / uvicorn per connection: **{ratio:.3f}** (1/{1 / ratio:.1f}); "
                 f"{verdict} the target of ≤ {args.target:g}")
    L.append("\n## Versions\n")
    L.extend(f"- {k}: {v}" for k, v in meta["versions"].items())
    m = meta["machine"]
    L.append(f"- machine: {m['model']}, {m['cpus']} CPUs, kernel {m['kernel']}, load average "
             f"at start {m['loadavg_start']}")
    base.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = args.out or f"ws-idle-rss-{meta['date']}-{meta['hostname']}"
    out = base.RESULTS_DIR / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(L) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "records": records, "median_per_conn_bytes": med, "ratio": ratio},
        indent=1, default=str))
    print(f"wrote {out.with_suffix('.md')}")
    if ratio is not None:
        print(f"cppuvicorn / uvicorn per connection: {ratio:.3f} (target <= {args.target:g})")
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
