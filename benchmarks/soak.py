#!/usr/bin/env python3
"""Soak: one cppuvicorn worker under constant load, then many short connections; every failed
request is counted and the server's open file descriptors and RSS are sampled throughout.

    python benchmarks/soak.py                          # 30 min of load + 100,000 connections
    python benchmarks/soak.py --duration 120           # a short run
    python benchmarks/soak.py --duration 15 --connections-total 5000 --sample-interval 1

1. ``python -m cppuvicorn chaos:app --workers 1`` (no supervisor; ``benchmarks/apps/chaos.py``),
   checked with one request of each kind; its idle fd count is the baseline.
2. Constant load: ``wrk`` (``lua/soak.lua``: GET /, GET /json, POST /echo with 1 KiB, every
   response checked for status 200 and its exact body) in segments of ``--segment`` seconds
   until ``--duration`` has passed. wrk's connect/read/write/timeout errors, non-200 answers
   and wrong bodies are all failures.
3. The fds must come back to the idle baseline once wrk's connections are gone.
4. ``--connections-total`` connections opened and closed by ``--client-threads`` Python
   threads: most send one request with ``connection: close`` (the three kinds in turn; status
   and body checked), a ``--no-request-share`` of them send nothing (half close at once, half
   half-close and expect the server to close without a byte). Every error is a failure.
5. The fds must be back to the baseline again; RSS may not have grown by more than
   ``--rss-limit-mib`` over its value after the warm-up (the first ``--warmup`` seconds).

The fds (``/proc/PID/fd``) and RSS (``VmRSS``) are sampled every ``--sample-interval`` seconds.
A Markdown report (``results/soak-<date>.md``, or ``--out``) has the verdict, the wrk segments,
the start/mid/end values with slopes, and the samples; ``--json`` writes the raw results.
Exit status: 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadtools import (  # noqa: E402
    HOST,
    HERE,
    Connection,
    HttpError,
    ServerProc,
    fd_count,
    linear_slope,
    loadavg,
    md_table,
    results_path,
    rss_kib,
)

HELLO = b"Hello, world!"
JSON_BODY = b'{"message":"Hello, world!","id":1,"ok":true,"items":[1,2,3]}'
ECHO_BODY = b"".join(b"%04d" % i + bytes([97 + i % 26]) * 59 + b"\n" for i in range(16))  # = lua/soak.lua's
KINDS = [("GET", "/", b"", HELLO), ("GET", "/json", b"", JSON_BODY), ("POST", "/echo", ECHO_BODY, ECHO_BODY)]


# ----------------------------------------------------------------------------- sampling


class Sampler:
    """Samples the server's fds and RSS every ``interval`` seconds, labelled with the phase."""

    def __init__(self, pid: int, interval: float):
        self.pid = pid
        self.interval = interval
        self.t0 = time.monotonic()
        self.phase = "idle"
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def take(self) -> dict:
        s = {"t": round(time.monotonic() - self.t0, 2), "phase": self.phase,
             "fds": fd_count(self.pid), "rss_kib": rss_kib(self.pid)}
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.take()

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def wait_fds(pid: int, baseline: int, timeout: float) -> tuple[int | None, float]:
    """Poll until the fd count is back to ``baseline`` (or the timeout): (last count, seconds)."""
    start = time.monotonic()
    while True:
        n = fd_count(pid)
        if n is not None and n <= baseline or time.monotonic() - start >= timeout:
            return n, time.monotonic() - start
        time.sleep(0.2)


# ----------------------------------------------------------------------------- load


def check_once(port: int) -> None:
    conn = Connection(port, keep_alive=True, timeout=10)
    try:
        for method, path, body, expected in KINDS:
            resp, _ = conn.exchange(method, path, body)
            if resp.status != 200 or resp.body != expected:
                raise SystemExit(f"check failed: {method} {path} -> {resp.status} {resp.body[:80]!r}")
    finally:
        conn.close()


def run_wrk(port: int, seconds: int, connections: int, timeout_s: int) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s",
           "-s", str(HERE / "lua" / "soak.lua"), f"http://{HOST}:{port}/"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line[len("WRK_JSON "):])
            result["seconds"] = result["duration_us"] / 1e6
            result["failed"] = (result["err_connect"] + result["err_read"] + result["err_write"]
                                + result["err_timeout"] + result["non200"] + result["bad_body"])
            # wrk stops mid-request at the end of its duration: those are neither counted nor checked.
            result["unchecked"] = result["requests"] - result["checked"]
            return result
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def open_close(port: int, total: int, threads: int, no_request_share: float, timeout: float) -> dict:
    """``total`` connections, each opened and closed; most carry one request with
    ``connection: close``. Returns counts and the first failures."""
    lock = threading.Lock()
    counter = iter(range(total))
    stats = {"connections": 0, "with_request": 0, "without_request": 0, "failed": 0, "failures": {},
             "examples": []}

    def no_request(i: int) -> int:
        return int((i + 1) * no_request_share) > int(i * no_request_share)

    def one(i: int) -> str | None:
        if no_request(i):
            try:
                sock = socket.create_connection((HOST, port), timeout=timeout)
            except OSError as exc:
                return f"connect: {exc!r}"
            with sock:
                if (i // 2) % 2 == 0:
                    return None  # open, close at once
                sock.shutdown(socket.SHUT_WR)  # half-close: the server must close, answering nothing
                try:
                    data = sock.recv(4096)
                except OSError as exc:
                    return f"half-close: {exc!r}"
                return None if data == b"" else f"half-close: got {data[:60]!r}"
        method, path, body, expected = KINDS[i % len(KINDS)]
        conn = Connection(port, keep_alive=False, timeout=timeout)
        try:
            resp, _ = conn.exchange(method, path, body)
        except HttpError as exc:
            return f"{exc.stage}: {exc.detail}"
        finally:
            conn.close()
        if resp.status != 200:
            return f"status {resp.status}"
        if resp.body != expected:
            return f"body {resp.body[:60]!r}"
        return None

    def worker() -> None:
        local = {"connections": 0, "with_request": 0, "without_request": 0}
        errors = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            err = one(i)
            local["connections"] += 1
            local["without_request" if no_request(i) else "with_request"] += 1
            if err is not None:
                errors.append((i, err))
        with lock:
            for k, v in local.items():
                stats[k] += v
            for i, err in errors:
                stats["failed"] += 1
                reason = re.sub(r"\d+", "N", err)[:80]
                stats["failures"][reason] = stats["failures"].get(reason, 0) + 1
                if len(stats["examples"]) < 10:
                    stats["examples"].append(f"#{i}: {err}")

    start = time.monotonic()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    stats["seconds"] = time.monotonic() - start
    return stats


# ----------------------------------------------------------------------------- report


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.2f}"


def render(meta: dict, segments: list[dict], oc: dict | None, points: dict, samples: list[dict],
           checks: list[tuple[str, bool, str]], slopes: dict) -> str:
    ok = all(passed for _, passed, _ in checks)
    out = [f"# Soak: {meta['label']}", ""]
    out.append(f"**{'PASS' if ok else 'FAIL'}** — {meta['date']} on `{meta['host']}` "
               f"({meta['cpus']} CPUs, load average {meta['load_start']} at the start, "
               f"{meta['load_end']} at the end).")
    if meta["note"]:
        out += ["", meta["note"]]
    out += ["", f"Command: `{meta['command']}`", "",
            f"Server: `{meta['server_command']}` (pid {meta['pid']}); {meta.get('server', '')}; {meta['wrk']}.", ""]
    out += ["## Checks", "", md_table(["check", "result", "detail"],
                                      [[name, "pass" if passed else "**FAIL**", detail]
                                       for name, passed, detail in checks]), ""]

    out += ["## Constant load (wrk)", "",
            f"`wrk -t1 -c{meta['wrk_connections']}` with `lua/soak.lua` (GET /, GET /json, POST /echo "
            f"1 KiB in turn; each response checked), in segments of {meta['segment']} s.", ""]
    rows = []
    for i, s in enumerate(segments, 1):
        rows.append([i, f"{s['seconds']:.1f}", s["requests"], f"{s['requests'] / s['seconds']:.0f}",
                     s["err_connect"], s["err_read"], s["err_write"], s["err_timeout"], s["non200"],
                     s["bad_body"], f"{s['lat_p99_us'] / 1000:.1f}"])
    if segments:
        tot = {k: sum(s[k] for s in segments) for k in ("requests", "seconds", "err_connect", "err_read",
                                                          "err_write", "err_timeout", "non200", "bad_body")}
        rows.append(["**total**", f"{tot['seconds']:.1f}", tot["requests"], f"{tot['requests'] / tot['seconds']:.0f}",
                     tot["err_connect"], tot["err_read"], tot["err_write"], tot["err_timeout"], tot["non200"],
                     tot["bad_body"], ""])
    out += [md_table(["segment", "s", "requests", "req/s", "connect err", "read err", "write err", "timeouts",
                      "non-200", "wrong body", "p99 ms"], rows), ""]

    if oc is not None:
        out += ["## Connections opened and closed", "",
                f"{oc['connections']:,} connections from {meta['client_threads']} threads in {oc['seconds']:.1f} s "
                f"({oc['connections'] / oc['seconds']:.0f}/s): {oc['with_request']:,} with one request "
                f"(`connection: close`, status and body checked), {oc['without_request']:,} without a request. "
                f"Failed: **{oc['failed']}**.", ""]
        if oc["failures"]:
            out += [md_table(["failure", "count"], [[k, v] for k, v in oc["failures"].items()]), ""]
            out += ["Examples:", ""] + [f"- `{e}`" for e in oc["examples"]] + [""]

    out += ["## File descriptors and RSS", "",
            md_table(["point", "t (s)", "fds", "RSS (MiB)"],
                     [[name, p["t"], p["fds"], mib(p["rss_kib"])] for name, p in points.items() if p]), ""]
    out += [f"Slopes over the load after the warm-up (least squares over {slopes['n']} samples): "
            f"RSS {slopes['rss_kib_per_min']} KiB/min, fds {slopes['fds_per_min']} per minute (wrk closes and "
            f"reopens its connections between segments, so the fd count dips at segment boundaries).", ""]

    step = max(1, len(samples) // 150)
    shown = samples[::step]
    if samples and shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    out += ["## Samples", "",
            f"Every {meta['sample_interval']} s" + (f" (every {step}th sample shown; all are in the JSON)" if step > 1 else "")
            + ".", "",
            md_table(["t (s)", "phase", "fds", "RSS (MiB)"], [[s["t"], s["phase"], s["fds"], mib(s["rss_kib"])]
                                                               for s in shown]), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--duration", type=float, default=1800, help="seconds of constant load (default %(default)s)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after which RSS is the reference (default: 60, or a fifth of a shorter duration)")
    p.add_argument("--segment", type=int, default=60, help="seconds per wrk run (default %(default)s)")
    p.add_argument("--wrk-connections", type=int, default=16, help="wrk connections (default %(default)s)")
    p.add_argument("--connections-total", type=int, default=100_000,
                   help="connections opened and closed after the load (default %(default)s)")
    p.add_argument("--no-request-share", type=float, default=0.1,
                   help="share of those that send no request (default %(default)s)")
    p.add_argument("--client-threads", type=int, default=4, help="threads opening connections (default %(default)s)")
    p.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples (default %(default)s)")
    p.add_argument("--rss-limit-mib", type=float, default=16.0,
                   help="allowed RSS growth over the value after the warm-up (default %(default)s MiB)")
    p.add_argument("--fd-settle", type=float, default=15.0,
                   help="seconds the fds may take to come back to the baseline (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (default %(default)s)")
    p.add_argument("--python", default=sys.executable, type=os.path.abspath, help="interpreter that runs cppuvicorn (default: this one)")
    p.add_argument("--out", default=None, help="Markdown report path (default results/soak-<date>.md)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON to this path")
    p.add_argument("--label", default=None, help="report title (default: from the durations)")
    p.add_argument("--note", default="", help="a sentence for the report (e.g. what else ran on the machine)")
    a = p.parse_args(argv)
    if a.warmup is None:
        a.warmup = min(60.0, a.duration / 5)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk not found on PATH (scripts/bootstrap installs it)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    label = args.label or (f"{args.duration / 60:g} min of load + {args.connections_total:,} connections"
                           if args.duration >= 60 else f"{args.duration:g} s of load + {args.connections_total:,} connections")
    meta = {
        "label": label, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
        "cpus": os.cpu_count(), "load_start": loadavg(), "note": args.note,
        "command": shlex.join(["python", "benchmarks/soak.py", *(sys.argv[1:] if argv is None else argv)]),
        "python": platform.python_version(), "segment": args.segment, "wrk_connections": args.wrk_connections,
        "client_threads": args.client_threads, "sample_interval": args.sample_interval,
        "duration": args.duration, "warmup": args.warmup, "rss_limit_mib": args.rss_limit_mib,
    }
    try:
        w = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        meta["wrk"] = (w.stdout + w.stderr).strip().splitlines()[0].split(" [")[0]
    except Exception:
        meta["wrk"] = "wrk"

    server = ServerProc("chaos:app", ["--workers", "1", "--no-access-log"], python=args.python)
    meta["server_command"] = shlex.join(["python", *server.command[1:]])
    meta["server"] = server.describe()
    segments: list[dict] = []
    oc = None
    points: dict[str, dict | None] = {}
    checks: list[tuple[str, bool, str]] = []
    with server.start():
        m = server.wait_for(r"Started server process \[(\d+)\]", timeout=5)
        pid = int(m.group(1)) if m else server.pid
        meta["pid"] = pid
        check_once(server.port)
        time.sleep(0.5)
        sampler = Sampler(pid, args.sample_interval).start()
        points["idle (baseline)"] = sampler.take()
        fd_baseline = points["idle (baseline)"]["fds"]

        # Constant load.
        sampler.phase = "load"
        load_start = time.monotonic()
        print(f"soak: load for {args.duration:g} s ({args.segment} s wrk segments, {args.wrk_connections} connections)",
              flush=True)
        warm_point = None
        while (left := args.duration - (time.monotonic() - load_start)) >= 1:
            seconds = int(min(args.segment, left))
            seg = run_wrk(server.port, seconds, args.wrk_connections, int(args.timeout))
            segments.append(seg)
            print(f"  segment {len(segments)}: {seg['requests']} requests, {seg['requests'] / seg['seconds']:.0f}/s, "
                  f"failed {seg['failed']}; fds {fd_count(pid)}, RSS {mib(rss_kib(pid))} MiB", flush=True)
            if not server.alive():
                break
        load_end = time.monotonic()
        samples_in_load = [s for s in sampler.samples if s["phase"] == "load"]
        warm = [s for s in samples_in_load if s["t"] >= load_start - sampler.t0 + args.warmup]
        warm_point = warm[0] if warm else (samples_in_load[-1] if samples_in_load else None)
        points["after warm-up"] = warm_point
        points["mid-load"] = warm[len(warm) // 2] if warm else None
        points["end of load"] = sampler.take()
        sampler.phase = "settle"
        fds_after_load, settle_s = wait_fds(pid, fd_baseline, args.fd_settle)
        points["load + settle"] = sampler.take()

        # Connections opened and closed.
        if args.connections_total > 0 and server.alive():
            sampler.phase = "open/close"
            print(f"soak: {args.connections_total:,} connections opened and closed", flush=True)
            oc = open_close(server.port, args.connections_total, args.client_threads, args.no_request_share,
                            args.timeout)
            print(f"  {oc['connections']} connections in {oc['seconds']:.1f} s, failed {oc['failed']}", flush=True)
            points["end of open/close"] = sampler.take()
            sampler.phase = "settle"
            fds_after_oc, settle_oc = wait_fds(pid, fd_baseline, args.fd_settle)
            points["open/close + settle"] = sampler.take()
        sampler.stop()
        alive = server.alive()
        if alive:
            server.signal(signal.SIGTERM)
            exit_code = server.wait_exit(15)
        else:
            exit_code = server.proc.returncode
    meta["load_end"] = loadavg()

    # Slopes over the post-warm-up load samples.
    warm_samples = [s for s in sampler.samples if s["phase"] == "load" and warm_point and s["t"] >= warm_point["t"]]
    rss_slope = linear_slope([(s["t"] / 60, s["rss_kib"]) for s in warm_samples if s["rss_kib"] is not None])
    fd_slope = linear_slope([(s["t"] / 60, s["fds"]) for s in warm_samples if s["fds"] is not None])
    slopes = {"n": len(warm_samples), "rss_kib_per_min": "?" if rss_slope is None else f"{rss_slope:+.1f}",
              "fds_per_min": "?" if fd_slope is None else f"{fd_slope:+.2f}"}

    wrk_failed = sum(s["failed"] for s in segments)
    total_requests = sum(s["requests"] for s in segments)
    checks.append(("server alive through the run", alive, "" if alive else server.log_text()[-500:]))
    checks.append(("zero failed requests under load", wrk_failed == 0 and bool(segments),
                   f"{total_requests:,} requests, {wrk_failed} failed"))
    checks.append(("fds back to the baseline after the load", fds_after_load is not None and fds_after_load <= fd_baseline,
                   f"baseline {fd_baseline}, {fds_after_load} after {settle_s:.1f} s"))
    limit = args.rss_limit_mib * 1024
    if warm_point is not None and points["end of load"]["rss_kib"] is None:
        # The server was gone by the end of the load (see "server alive"): no RSS to compare.
        checks.append((f"RSS growth after the warm-up ≤ {args.rss_limit_mib:g} MiB (load)", False,
                       "no RSS at the end of the load: the server was gone"))
    elif warm_point is not None:
        grow_load = points["end of load"]["rss_kib"] - warm_point["rss_kib"]
        checks.append((f"RSS growth after the warm-up ≤ {args.rss_limit_mib:g} MiB (load)", grow_load <= limit,
                       f"{grow_load / 1024:+.2f} MiB ({mib(warm_point['rss_kib'])} → {mib(points['end of load']['rss_kib'])})"))
    if oc is not None:
        checks.append(("zero failed connections (open/close)", oc["failed"] == 0 and oc["connections"] == args.connections_total,
                       f"{oc['connections']:,} connections, {oc['failed']} failed"))
        checks.append(("fds back to the baseline after open/close", fds_after_oc is not None and fds_after_oc <= fd_baseline,
                       f"baseline {fd_baseline}, {fds_after_oc} after {settle_oc:.1f} s"))
        if warm_point is not None and points["open/close + settle"]["rss_kib"] is not None:
            grow_oc = points["open/close + settle"]["rss_kib"] - warm_point["rss_kib"]
            checks.append((f"RSS growth after the warm-up ≤ {args.rss_limit_mib:g} MiB (open/close)", grow_oc <= limit,
                           f"{grow_oc / 1024:+.2f} MiB"))
    checks.append(("SIGTERM: exit code 0", exit_code == 0, f"exit code {exit_code}"))

    md = render(meta, segments, oc, points, sampler.samples, checks, slopes)
    path = results_path("soak", args.out)
    path.write_text(md)
    ok = all(passed for _, passed, _ in checks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "ok": ok, "checks": checks, "segments": segments, "open_close": oc,
                       "points": points, "slopes": slopes, "samples": sampler.samples, "fd_baseline": fd_baseline},
                      f, indent=1)
    for name, passed, detail in checks:
        print(f"  {'pass' if passed else 'FAIL'}  {name}: {detail}")
    print(f"soak: {'PASS' if ok else 'FAIL'}; report {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
