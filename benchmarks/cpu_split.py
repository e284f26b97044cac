#!/usr/bin/env python3
"""Where a server's time goes per request: user space against kernel, and by object file.

Issue #2 asks, where a target is missed, for where the time goes. This runs cppuvicorn and
Uvicorn side by side (server on one core, wrk on the other, interleaved rounds, the same method
as run.py) and, during each measured wrk run, reads the server's user and system CPU time from
/proc/<pid>/stat and, if `perf` works here, samples it with `perf record` to split its time by
object file (kernel, libpython, cppuvicorn's _core, uvloop, libuv, libc, ...).

From the split it derives a bound: even with no user-space work at all, a server that spends
K µs of kernel time per request cannot pass 1e6 / K requests/s on one core. That bound divided
by Uvicorn's rate is the most any user-space optimisation could reach on this machine.

    .venv/bin/python benchmarks/cpu_split.py                       # hello and fastapi_json
    .venv/bin/python benchmarks/cpu_split.py --scenarios hello --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402

SERVERS = {"cppuvicorn": base.cmd_cppuvicorn, "uvicorn": base.cmd_uvicorn}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def perf_usable() -> bool:
    if shutil.which("perf") is None:
        return False
    r = subprocess.run(["perf", "record", "-q", "-o", "/dev/null", "--", "true"],
                       capture_output=True)
    return r.returncode == 0


_DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def short_dso(name: str) -> str:
    if name.startswith("[kernel"):
        return "kernel"
    if name.startswith("_core."):
        return "cppuvicorn _core"
    if name.startswith("libpython"):
        return "libpython"
    for key in ("uvloop", "loop.cpython", "httptools", "parser.cpython", "libuv", "libc.so",
                "libstdc++", "ld-linux"):
        if key in name:
            return {"loop.cpython": "uvloop", "parser.cpython": "httptools",
                    "libc.so": "libc", "ld-linux": "ld.so"}.get(key, key)
    return "other"


def perf_split(data: Path) -> dict[str, float]:
    r = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
                       capture_output=True, text=True)
    split: dict[str, float] = {}
    for line in r.stdout.splitlines():
        m = _DSO_LINE.match(line)
        if m:
            key = short_dso(m.group(2))
            split[key] = split.get(key, 0.0) + float(m.group(1))
    return split


def measure(args, name: str, scenario: base.Scenario, ports: list[int], work: Path,
            use_perf: bool) -> dict:
    ctx = base.Ctx(python=args.python, server_cpu=args.server_cpu, client_cpu=args.client_cpu)
    port = base.free_port(ports)
    log = work / f"{name}-{scenario.name}-{port}.log"
    cmd = ["taskset", "-c", str(args.server_cpu), *SERVERS[name](ctx, scenario, port, work)]
    with open(log, "wb") as logf:
        proc = base.spawn(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=base.APPS_DIR,
                          env=base.server_env())
    rec: dict = {"server": name, "scenario": scenario.name, "cmd": " ".join(cmd)}
    try:
        base.wait_ready(proc, port, 30, log)
        scenario.check(port)
        base.run_wrk(ctx, port, args.connections, 1, scenario.lua, work / "warmup.txt")
        perf_proc = None
        perf_data = work / f"perf-{name}-{scenario.name}-{port}.data"

        def on_start(_pid: int) -> None:
            nonlocal perf_proc, before
            before = cpu_ticks(proc.pid)
            if use_perf:
                perf_proc = subprocess.Popen(
                    ["perf", "record", "-q", "-F", "999", "-p", str(proc.pid), "-o",
                     str(perf_data), "--", "sleep", str(args.duration - 0.5)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        before = (0, 0)
        data, _client_cpu, wall = base.run_wrk(ctx, port, args.connections, args.duration,
                                               scenario.lua, work / f"wrk-{name}-{port}.txt",
                                               on_start=on_start)
        after = cpu_ticks(proc.pid)
        if perf_proc is not None:
            perf_proc.wait(timeout=30)
            rec["perf"] = perf_split(perf_data)
        requests = data["requests"]
        user_s = (after[0] - before[0]) / TICK
        sys_s = (after[1] - before[1]) / TICK
        rec.update(rps=requests / (data["duration_us"] / 1e6), requests=requests,
                   user_us=1e6 * user_s / requests, sys_us=1e6 * sys_s / requests,
                   cpu_share=(user_s + sys_s) / wall, p99_ms=data["lat_p99_us"] / 1e3)
    finally:
        base.kill_tree(proc)
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="hello,fastapi_json")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=4)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--python", default=sys.executable, type=os.path.abspath)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--no-perf", action="store_true")
    p.add_argument("--out", default=None, help="results file stem in benchmarks/results/")
    args = p.parse_args()
    scenarios = [base.SCENARIOS[s] for s in args.scenarios.split(",") if s]
    use_perf = not args.no_perf and perf_usable()
    work = Path(tempfile.mkdtemp(prefix="cppuvicorn-cpusplit-"))
    ports = [18600]
    records = []
    for r in range(1, args.rounds + 1):
        for sc in scenarios:
            order = list(SERVERS) if r % 2 else list(reversed(SERVERS))
            for name in order:
                rec = measure(args, name, sc, ports, work, use_perf)
                rec["round"] = r
                records.append(rec)
                print(f"[round {r}] {sc.name:<13} {name:<10} {rec['rps']:>9,.0f} req/s  "
                      f"user {rec['user_us']:5.1f} µs  kernel {rec['sys_us']:5.1f} µs per request"
                      f"  (server CPU {100 * rec['cpu_share']:.0f} %)", flush=True)

    def med(sc: str, name: str, key: str) -> float:
        return statistics.median(x[key] for x in records
                                 if x["scenario"] == sc and x["server"] == name)

    date = _dt.date.today().isoformat()
    lines = [f"# Where the time goes per request, {date}\n",
             f"Command: `benchmarks/cpu_split.py {' '.join(sys.argv[1:])}`. One server process on "
             f"CPU {args.server_cpu}, `wrk -t1 -c{args.connections}` on CPU {args.client_cpu}, "
             f"{args.rounds} interleaved rounds of {args.duration} s. User and kernel CPU time "
             "of the server process from /proc/<pid>/stat over each measured run, divided by "
             "the requests wrk completed; medians over the rounds.\n",
             "| scenario | server | req/s | user µs/req | kernel µs/req | total µs/req | "
             "req/s ratio vs uvicorn |", "|---|---|---|---|---|---|---|"]
    bounds = []
    for sc in scenarios:
        base_rps = med(sc.name, "uvicorn", "rps")
        for name in SERVERS:
            u, k = med(sc.name, name, "user_us"), med(sc.name, name, "sys_us")
            rps = med(sc.name, name, "rps")
            lines.append(f"| {sc.name} | {name} | {rps:,.0f} | {u:.1f} | {k:.1f} | {u + k:.1f} | "
                         f"{rps / base_rps:.2f}x |")
        k_cpp = med(sc.name, "cppuvicorn", "sys_us")
        bound = 1e6 / k_cpp
        bounds.append(f"- {sc.name}: cppuvicorn spends {k_cpp:.1f} µs per request in the kernel "
                      f"(socket reads and writes, the loopback TCP stack, epoll). With no "
                      f"user-space work at all it could not pass {bound:,.0f} req/s on one core: "
                      f"**{bound / base_rps:.2f}x** Uvicorn's {base_rps:,.0f}.")
    lines += ["", "Ceiling from kernel time alone:", "", *bounds]
    if use_perf:
        groups = sorted({g for x in records for g in x.get("perf", {})},
                        key=lambda g: (g != "kernel", g))
        lines += ["", "Samples by object file (`perf record -F 999 -p <server>`, percent of the "
                  "server's samples, median over rounds):", "",
                  "| scenario | server | " + " | ".join(groups) + " |",
                  "|---" * (len(groups) + 2) + "|"]
        for sc in scenarios:
            for name in SERVERS:
                vals = []
                for g in groups:
                    xs = [x.get("perf", {}).get(g, 0.0) for x in records
                          if x["scenario"] == sc.name and x["server"] == name]
                    vals.append(f"{statistics.median(xs):.1f}")
                lines.append(f"| {sc.name} | {name} | " + " | ".join(vals) + " |")
    stem = args.out or f"cpu-split-{date}"
    (base.RESULTS_DIR / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (base.RESULTS_DIR / f"{stem}.json").write_text(json.dumps(
        {"date": date, "args": vars(args), "records": records}, indent=1))
    print("\n".join(lines))
    print(f"wrote {base.RESULTS_DIR / (stem + '.md')}")


if __name__ == "__main__":
    main()
