#!/usr/bin/env python3
"""WebSocket echo benchmark: cppuvicorn vs Uvicorn (websockets-sansio) and a native anchor.

One command:

    .venv/bin/python benchmarks/ws_run.py [--servers native,cppuvicorn,uvicorn]
        [--sizes 64,16384] [--connections 50,1000] [--pipeline 1]
        [--rounds 5] [--duration 5] [--warmup 2] [--quick]

Every measurement gets a fresh server (benchmarks/apps/ws_echo.py, or `wsload --serve` for the
native anchor) pinned to one CPU (taskset -c 1) and the wsload client (benchmarks/wsload, C++
on libuv) pinned to the other (taskset -c 0). Each connection does the opening handshake and
keeps --pipeline messages in flight, sending the next one when an echo arrives; echoes are
checked byte for byte and counted over --duration seconds after a warm-up. Servers are
interleaved within a round, the order rotated each round; ratios against Uvicorn are taken
inside each round and reported as median [min-max], with server and client CPU shares.

The native anchor shows what the client can drive on this machine: if it reaches well above
cppuvicorn's rate, the client is not what limits cppuvicorn. Method and caveats:
benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import random
import shlex
import shutil
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
from run import cell, fmt_ms, fmt_pct, fmt_rate, fmt_ratio, spread  # noqa: E402


def size_name(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def run_wsload(args, wsload: Path, port: int, conns: int, size: int, on_start) -> tuple[dict, float]:
    """Runs one wsload load pinned to the client CPU. Calls on_start(pid) when its measured
    window begins; returns (its JSON report, wall seconds from window start to exit)."""
    cmd = ["taskset", "-c", str(args.client_cpu), str(wsload), "--host", base.HOST,
           "--port", str(port), "--conns", str(conns), "--size", str(size),
           "--pipeline", str(args.pipeline), "--duration", str(args.duration),
           "--warmup", str(args.warmup)]
    proc = base.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(args.duration + args.warmup + 90, lambda: base.kill_tree(proc))
    watchdog.start()
    report, t_start = None, None
    try:
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            if doc.get("event") == "measure_start":
                t_start = time.monotonic()
                on_start(proc.pid)
            elif doc.get("mode") == "load":
                report = doc
        proc.wait()
    finally:
        watchdog.cancel()
        base._LIVE.pop(proc.pid, None)
    wall = time.monotonic() - t_start if t_start else 0.0
    if report is None:
        err = proc.stderr.read().strip()[-300:] if proc.stderr else ""
        raise RuntimeError(f"wsload exited {proc.returncode} without a report: {err}")
    return report, wall


def measure(args, wsload: Path, name: str, conns: int, size: int, port_cursor: list[int],
            workdir: Path) -> dict:
    srv = wsc.SERVERS[name]
    port = base.free_port(port_cursor)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-c{conns}-s{size}-", dir=workdir))
    log = tmp / "server.log"
    full = ["taskset", "-c", str(args.server_cpu), *srv.build(args.python, wsload, port)]
    rec: dict = {"server": name, "conns": conns, "size": size, "pipeline": args.pipeline,
                 "port": port, "error": None, "cmd": shlex.join(full),
                 "started": _dt.datetime.now().isoformat(timespec="seconds")}
    with open(log, "wb") as logf:
        proc = base.spawn(full, stdout=logf, stderr=subprocess.STDOUT, cwd=base.APPS_DIR,
                          env=base.server_env())
    try:
        rec["startup_s"] = round(base.wait_ready(proc, port, args.startup_timeout, log), 3)
        wsc.check_echo(port)
        box: dict = {}

        def on_start(pid: int) -> None:
            box["client_pid"] = pid
            box["snap0"] = base.snapshot()

        data, wall = run_wsload(args, wsload, port, conns, size, on_start)
        snap1 = base.snapshot()
        rec["wsload"] = data
        if "snap0" not in box or data["failed"] or data["lost"] or data["mismatches"]:
            raise RuntimeError(f"wsload: {data['open']} open, {data['failed']} failed, "
                               f"{data['lost']} lost, {data['mismatches']} wrong echoes: "
                               f"{data['first_error']}")
        client_cpu_s = data["client_cpu"] * data["duration_s"]
        acct = base.cpu_accounting(box["snap0"], snap1, proc.pid, box["client_pid"],
                                   client_cpu_s, args.server_cpu)
        alive = proc.poll() is None
        post = None
        if alive:
            try:
                wsc.check_echo(port)
                post = True
            except base.CheckError as e:
                post = str(e)
        rec.update({
            "mps": data["msgs_per_s"], "messages": data["messages"],
            "p50_ms": data["lat_p50_us"] / 1000, "p99_ms": data["lat_p99_us"] / 1000,
            "client_cpu": data["client_cpu"], **acct,
            "server_alive_after": alive, "post_check": post,
        })
        if not alive:
            rec["error"] = f"server died during the load (code {proc.returncode})"
        elif post is not True:
            rec["error"] = f"echo check after the load failed: {post}"
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    except base.CheckError as e:
        rec["error"] = f"startup/correctness: {e}"
        rec["log_tail"] = e.log_tail or base.tail(log, 15)
    except RuntimeError as e:
        rec["error"] = f"load: {e}"
        rec["log_tail"] = base.tail(log, 15)
    finally:
        base.kill_tree(proc)
    return rec


def progress_line(r: int, rounds: int, rec: dict) -> str:
    head = (f"[round {r + 1}/{rounds}] {size_name(rec['size']):>6} c{rec['conns']:<5} "
            f"{rec['server']:<11}")
    if not rec.get("mps"):
        return f"{head} FAILED: {rec['error']}"
    s = (f"{head} {rec['mps']:>9,.0f} msg/s  p50 {fmt_ms(rec['p50_ms'])} ms  "
         f"p99 {fmt_ms(rec['p99_ms'])} ms  srv {fmt_pct(rec['server_cpu'])}  "
         f"cli {fmt_pct(rec['client_cpu'])}  other {fmt_pct(rec['others_cpu'])}")
    if rec.get("error"):
        s += f"  !! {rec['error']}"
    return s


def aggregate(records: list[dict], baseline: str, servers: list[str], sizes: list[int],
              connections: list[int]) -> list[dict]:
    good = [r for r in records if r.get("mps") and not r.get("error")]
    by = {(r["size"], r["conns"], r["server"], r["round"]): r for r in good}
    rows = []
    for size in sizes:
        for c in connections:
            for s in servers:
                key = (size, c, s)
                mine = [r for r in good if (r["size"], r["conns"], r["server"]) == key]
                failed = [r for r in records if (r["size"], r["conns"], r["server"]) == key
                          and (not r.get("mps") or r.get("error"))]
                if not mine and not failed:
                    continue
                ratios, core_ratios = [], []
                for r in mine:
                    b = by.get((size, c, baseline, r["round"]))
                    if b and b["mps"] > 0:
                        ratios.append(r["mps"] / b["mps"])
                        if r.get("server_cpu") and b.get("server_cpu"):
                            core_ratios.append((r["mps"] / r["server_cpu"])
                                               / (b["mps"] / b["server_cpu"]))
                rows.append({
                    "size": size, "conns": c, "server": s,
                    "rounds_ok": len(mine), "rounds_failed": len(failed),
                    "failures": sorted({r["error"] for r in failed}),
                    "mps": spread([r["mps"] for r in mine]),
                    "ratio_vs_baseline": spread(ratios) if s != baseline else None,
                    "ratios_per_round": [round(x, 3) for x in ratios],
                    "mps_per_server_core": spread([r["mps"] / r["server_cpu"] for r in mine
                                                   if r.get("server_cpu")]),
                    "ratio_per_core_vs_baseline": spread(core_ratios) if s != baseline else None,
                    "p50_ms": spread([r["p50_ms"] for r in mine]),
                    "p99_ms": spread([r["p99_ms"] for r in mine]),
                    "server_cpu": spread([r.get("server_cpu") for r in mine]),
                    "client_cpu": spread([r.get("client_cpu") for r in mine]),
                    "noisy_rounds": sum(1 for r in mine if r.get("noisy")),
                })
    return rows


def render_markdown(meta: dict, rows: list[dict], records: list[dict], baseline: str) -> str:
    L = []
    title = "cppuvicorn WebSocket echo benchmark" + (" (quick smoke run)" if meta["quick"] else "")
    if meta.get("interrupted"):
        title += " — INTERRUPTED, partial results"
    L.append(f"# {title}: {meta['date']} on {meta['hostname']}\n")
    if meta.get("note"):
        L.append(f"> **{meta['note']}**\n")
    if meta["quick"]:
        L.append("> A smoke run (1 round, short windows) checks that the harness and the servers "
                 "work. Its numbers have no spread and should not be quoted.\n")
    L.append(f"Command: `{meta['command']}`\n")
    L.append(f"Started {meta['started']}, finished {meta['finished']} "
             f"({meta['elapsed_min']:.1f} min).\n")
    m = meta["machine"]
    L.append("## Machine and versions\n")
    L.append(f"- CPU: {m['model']} — {m['cpus']} CPUs ({m['topology']})"
             f"{', ' + m['hypervisor'] if m.get('hypervisor') else ''}")
    L.append(f"- Kernel: {m['kernel']}; load average at start: {m['loadavg_start']}")
    L.append(f"- Pinning: server on CPU {meta['server_cpu']}, wsload (one thread) and the "
             f"harness on CPU {meta['client_cpu']}")
    for k, v in meta["versions"].items():
        L.append(f"- {k}: {v}")
    L.append("\n## Settings\n")
    L.append(f"- rounds {meta['rounds']}, warm-up {meta['warmup']:g} s, measure "
             f"{meta['duration']:g} s; message sizes {', '.join(size_name(s) for s in meta['sizes'])}"
             f" (binary, uncompressed: wsload offers no permessage-deflate); connections "
             f"{', '.join(map(str, meta['connections']))}; {meta['pipeline']} message(s) in flight "
             f"per connection; fresh server per measurement; order rotated each round")
    L.append(f"- ratio: msg/s ÷ {baseline}'s msg/s in the same round, median [min–max]; "
             "*per core* = msg/s ÷ server CPU share")
    L.append("- servers:")
    for s in meta["servers"]:
        L.append(f"  - `{s}`: `{wsc.SERVERS[s].describe}`")
    for s, why in meta["skipped"].items():
        L.append(f"- **{s} skipped**: {why}")
    L.append("\n## Results (messages echoed per second)\n")
    for size in meta["sizes"]:
        for c in meta["connections"]:
            cell_rows = [r for r in rows if (r["size"], r["conns"]) == (size, c)]
            if not cell_rows:
                continue
            L.append(f"### {size_name(size)} messages, {c} connections\n")
            L.append("| server | msg/s | ratio | per-round ratios | msg/s per server core | "
                     "per-core ratio | p50 ms | p99 ms | server CPU | client CPU | notes |")
            L.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in cell_rows:
                if not r["mps"]:
                    L.append(f"| {r['server']} | FAILED | | | | | | | | | "
                             f"{'; '.join(r['failures'])[:200]} |")
                    continue
                notes = []
                if r["rounds_failed"]:
                    notes.append(f"{r['rounds_failed']} round(s) failed: "
                                 + "; ".join(r["failures"])[:160])
                if r["noisy_rounds"]:
                    notes.append(f"{r['noisy_rounds']} noisy")
                if r["client_cpu"] and r["client_cpu"]["median"] >= 0.9:
                    notes.append("‡ client-bound: wsload used ≥ 90% of its core, msg/s is a "
                                 "lower bound")
                is_base = r["server"] == baseline
                L.append("| " + " | ".join([
                    r["server"], cell(r["mps"], fmt_rate),
                    "1" if is_base else cell(r["ratio_vs_baseline"], fmt_ratio),
                    "" if is_base else ", ".join(f"{x:.2f}" for x in r["ratios_per_round"]),
                    cell(r["mps_per_server_core"], fmt_rate),
                    "1" if is_base else cell(r["ratio_per_core_vs_baseline"], fmt_ratio),
                    cell(r["p50_ms"], fmt_ms), cell(r["p99_ms"], fmt_ms),
                    cell(r["server_cpu"], fmt_pct), cell(r["client_cpu"], fmt_pct),
                    "; ".join(notes),
                ]) + " |")
            L.append("")
    # Client headroom: the native anchor against cppuvicorn, cell by cell.
    if "native" in meta["servers"] and "cppuvicorn" in meta["servers"]:
        L.append("## Is the client the bottleneck?\n")
        L.append("`native` is wsload's own C++ echo server on the server core. The client "
                 "drove it at the rate shown; if that is well above cppuvicorn's, the client "
                 "was not what limited cppuvicorn.\n")
        L.append("*client capacity* = the native run's msg/s ÷ wsload's CPU share: what one "
                 "client core can drive at that size and connection count.\n")
        L.append("| size | conns | native msg/s | cppuvicorn msg/s | native ÷ cppuvicorn | "
                 "client CPU with native | client CPU with cppuvicorn | client capacity |")
        L.append("|---|---|---|---|---|---|---|---|")
        for size in meta["sizes"]:
            for c in meta["connections"]:
                n = next((r for r in rows if (r["size"], r["conns"], r["server"])
                          == (size, c, "native") and r["mps"]), None)
                p = next((r for r in rows if (r["size"], r["conns"], r["server"])
                          == (size, c, "cppuvicorn") and r["mps"]), None)
                if not n or not p:
                    continue
                L.append(f"| {size_name(size)} | {c} | {fmt_rate(n['mps']['median'])} | "
                         f"{fmt_rate(p['mps']['median'])} | "
                         f"{n['mps']['median'] / p['mps']['median']:.2f}× | "
                         f"{fmt_pct(n['client_cpu']['median'])} | "
                         f"{fmt_pct(p['client_cpu']['median'])} | "
                         f"{fmt_rate(n['mps']['median'] / n['client_cpu']['median']) if n['client_cpu']['median'] else '–'} msg/s |")
        L.append("")
    noisy = [r for r in records if (r.get("others_cpu") or 0) > meta["noise_threshold"]]
    L.append("## Noise\n")
    if noisy:
        for r in noisy:
            L.append(f"- round {r['round'] + 1} {size_name(r['size'])} c{r['conns']} "
                     f"{r['server']}: others {fmt_pct(r['others_cpu'])} "
                     f"({base.describe_others(r)})")
    else:
        L.append(f"No kept measurement had other processes above "
                 f"{meta['noise_threshold']:.2f} of a core.")
    L.append("\n## Every measurement\n")
    L.append("| round | size | conns | server | msg/s | p50 ms | p99 ms | server CPU | "
             "client CPU | others | note |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: (r["size"], r["conns"], r["server"], r["round"])):
        note = r.get("error") or ""
        if r.get("noisy"):
            note = (note + "; " if note else "") + "noisy: " + base.describe_others(r)
        L.append(f"| {r['round'] + 1} | {size_name(r['size'])} | {r['conns']} | {r['server']} | "
                 f"{fmt_rate(r.get('mps'))} | {fmt_ms(r.get('p50_ms'))} | "
                 f"{fmt_ms(r.get('p99_ms'))} | {fmt_pct(r.get('server_cpu'))} | "
                 f"{fmt_pct(r.get('client_cpu'))} | {fmt_pct(r.get('others_cpu'))} | "
                 f"{note[:160]} |")
    L.append("\nEvery record (wsload's report, CPU accounting, server command) is in the JSON "
             "file next to this one.\n")
    return "\n".join(L)


def results_base(quick: bool, override: str | None) -> Path:
    base.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if override:
        (base.RESULTS_DIR / override).parent.mkdir(parents=True, exist_ok=True)
        return base.RESULTS_DIR / override
    stem = (f"ws-{_dt.date.today().isoformat()}-{socket.gethostname()}"
            + ("-quick" if quick else ""))
    out, n = base.RESULTS_DIR / stem, 2
    while out.with_suffix(".md").exists() or out.with_suffix(".json").exists():
        out = base.RESULTS_DIR / f"{stem}-{n}"
        n += 1
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="native,cppuvicorn,uvicorn",
                   help="comma list from: " + ",".join(wsc.SERVERS) + " (default: %(default)s)")
    p.add_argument("--sizes", default="64,16384", help="message sizes in bytes (default: %(default)s)")
    p.add_argument("--connections", default="50,1000", help="comma list (default: %(default)s)")
    p.add_argument("--pipeline", type=int, default=1,
                   help="messages in flight per connection (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --quick: 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds per run (default 5; --quick: 2)")
    p.add_argument("--warmup", type=float, default=None,
                   help="warm-up seconds per run after every handshake is done (default 2; "
                   "--quick: 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s, 1 s warm-up")
    p.add_argument("--baseline", default="uvicorn", help="ratios are vs this server")
    p.add_argument("--python", default=sys.executable, type=os.path.abspath,
                   help="interpreter that runs the Python servers (default: this one)")
    p.add_argument("--wsload", default=None,
                   help="wsload binary (default: build benchmarks/wsload/build/wsload with g++)")
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--noise-threshold", type=float, default=0.10)
    p.add_argument("--noise-retries", type=int, default=1)
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="wait up to this many seconds for a quiet machine before each run "
                   "(default 60; --quick: 10; 0 = off)")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--out", default=None, help="results file stem in benchmarks/results/")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--note", default=None, help="a line of context for the top of the report")
    a = p.parse_args(argv)
    a.rounds = a.rounds if a.rounds is not None else (1 if a.quick else 5)
    a.duration = a.duration if a.duration is not None else (2.0 if a.quick else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 2.0)
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else (10.0 if a.quick else 60.0)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    connections = [int(x) for x in args.connections.split(",") if x.strip()]
    for s in servers:
        if s not in wsc.SERVERS:
            sys.exit(f"unknown server {s!r}; choose from {', '.join(wsc.SERVERS)}")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.pipeline < 1:
        sys.exit("rounds >= 1, duration > 0, warmup >= 0, pipeline >= 1")
    if not shutil.which("taskset"):
        sys.exit("taskset not found on PATH")
    ncpu = os.cpu_count() or 1
    if args.server_cpu == args.client_cpu or max(args.server_cpu, args.client_cpu) >= ncpu:
        sys.exit(f"need two distinct CPUs < {ncpu} for --server-cpu/--client-cpu")
    wsload = wsc.ensure_wsload(args.wsload)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, base._on_signal)
    atexit.register(base.kill_all)
    os.sched_setaffinity(0, {args.client_cpu})
    try:  # 1,000 connections need 1,000+ descriptors in the client and the server
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass

    skipped = {}
    for s in servers:
        if wsc.SERVERS[s].python:
            ok, why = wsc.probe(args.python, s)
            if not ok:
                skipped[s] = f"`import {s}` fails with {args.python}: {why}"
                print(f"SKIPPING {s}: {skipped[s]}", flush=True)
    active = [s for s in servers if s not in skipped]
    if not active:
        sys.exit("no runnable server")

    per_round = len(active) * len(sizes) * len(connections)
    est = per_round * args.rounds * (args.warmup + args.duration + 4.0) / 60
    print(f"servers: {', '.join(active)}; sizes {sizes}; connections {connections}; "
          f"{args.rounds} round(s) x {per_round} runs; about {est:.0f} min (plus quiet waits)",
          flush=True)
    started = _dt.datetime.now()
    out = results_base(args.quick, args.out)
    workdir = Path(tempfile.mkdtemp(prefix="cppuvicorn-wsbench-"))
    meta = {
        "date": started.date().isoformat(), "hostname": socket.gethostname(),
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["benchmarks/ws_run.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick, "rounds": args.rounds, "duration": args.duration,
        "warmup": args.warmup, "sizes": sizes, "connections": connections,
        "pipeline": args.pipeline, "servers": active, "skipped": skipped,
        "baseline": args.baseline, "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
        "noise_threshold": args.noise_threshold, "machine": base.machine_info(),
        "versions": wsc.versions(args.python), "wsload": str(wsload), "note": args.note,
    }
    records: list[dict] = []
    discarded: list[dict] = []
    port_cursor = [base.PORT_RANGE[0] + random.randrange(base.PORT_RANGE[1] - base.PORT_RANGE[0])]
    interrupted = False
    try:
        for r in range(args.rounds):
            rot = r % len(active)
            order = active[rot:] + active[:rot]
            for size in sizes:
                for c in connections:
                    for s in order:
                        attempt = 0
                        while True:
                            waited = 0.0
                            if args.quiet_wait > 0:
                                waited, _ = base.wait_for_quiet(args.noise_threshold,
                                                                args.quiet_wait)
                            rec = measure(args, wsload, s, c, size, port_cursor, workdir)
                            rec["round"], rec["attempt"] = r, attempt
                            rec["quiet_wait_s"] = round(waited, 1)
                            rec["noisy"] = (rec.get("others_cpu") or 0) > args.noise_threshold
                            print(progress_line(r, args.rounds, rec)
                                  + (f"  [noisy: {base.describe_others(rec)}]"
                                     if rec["noisy"] else ""), flush=True)
                            if rec["noisy"] and attempt < args.noise_retries:
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
        base.kill_all()
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)

    finished = _dt.datetime.now()
    meta.update({"finished": finished.isoformat(timespec="seconds"),
                 "elapsed_min": (finished - started).total_seconds() / 60,
                 "interrupted": interrupted})
    rows = aggregate(records, args.baseline, active, sizes, connections)
    out.with_suffix(".md").write_text(render_markdown(meta, rows, records, args.baseline))
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "records": records, "discarded_noisy": discarded},
        indent=1, default=str))
    print(f"\nwrote {out.with_suffix('.md')}\n      {out.with_suffix('.json')}")
    failures = [r for r in records if r.get("error")]
    if failures:
        print(f"{len(failures)} measurement(s) had errors; see the report", file=sys.stderr)
    return 130 if interrupted else (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
