#!/usr/bin/env python3
"""Builds and runs the microbenchmarks (bench_micro, bench_scope) and writes a Markdown summary.

    .venv/bin/python benchmarks/micro/run.py [--build-dir build/bench] [--samples 100]
        [--repeat 5] [--out micro-<date>] [--no-build] [-- CATCH2 ARGS]

Configures build/bench (Release, -DCPPUVICORN_BUILD_BENCHMARKS=ON, no tests, no module), builds
the two targets with `nice`, runs each with Catch2's XML reporter and writes
benchmarks/results/<out>.md. Each program runs --repeat times (in turn); the table gives the
median over the runs of Catch2's mean ns per call (each mean is over --samples samples), the
lowest and highest of those means, and for a benchmark named "... [N B]" ns per byte and MB/s.
On a shared machine one run's mean can be pulled up by a few preempted samples; the median of
several runs is what to compare. Both programs check their inputs before
timing; a failed check fails the run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = ["bench_micro", "bench_scope"]
SIZE = re.compile(r"\[(\d+) B\]$")


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def build(build_dir: Path) -> None:
    cmake_args = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                  "-DCPPUVICORN_BUILD_BENCHMARKS=ON", "-DCPPUVICORN_BUILD_TESTS=OFF",
                  "-DCPPUVICORN_BUILD_MODULE=OFF", f"-DPython_EXECUTABLE={sys.executable}"]
    sh(cmake_args, stdout=subprocess.DEVNULL)
    sh(["nice", "cmake", "--build", str(build_dir), "-j2", "--target", *TARGETS])


def run(exe: Path, samples: int, extra: list[str]) -> list[dict]:
    cmd = ["nice", str(exe), "-r", "xml", "--benchmark-samples", str(samples),
           "--benchmark-resamples", "10000", *extra]
    print("+", " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"{exe.name} failed (exit {p.returncode})")
    rows = []
    for tc in ET.fromstring(p.stdout).iter("TestCase"):
        for b in tc.iter("BenchmarkResults"):
            mean = b.find("mean")
            sd = b.find("standardDeviation")
            rows.append({
                "group": tc.get("name"),
                "name": b.get("name"),
                "mean": float(mean.get("value")),
                "low": float(mean.get("lowerBound")),
                "high": float(mean.get("upperBound")),
                "sd": float(sd.get("value")),
                "iterations": int(b.get("iterations")),
                "samples": int(b.get("samples")),
            })
    return rows


def fmt_ns(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def report(rows: list[dict], args, exes: dict[str, Path]) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    out = [f"# Microbenchmarks, {_dt.date.today().isoformat()}", "",
           f"Command: `{' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}` "
           f"(Catch2 BENCHMARK, {args.samples} samples each, Release build in `{args.build_dir}`).",
           f"Commit {commit}{' + local changes' if dirty else ''}; {cpu}, {os.cpu_count()} CPUs, "
           f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the end; "
           f"Python {platform.python_version()} (bench_scope).", "",
           f"ns/op: the median over {args.repeat} runs of Catch2's mean per call; min / max: the "
           "lowest and highest of those run means (a shared VM: preempted samples pull single "
           "runs up). Bytes are the input (parser, decoder), the payload (encoder, chunking, "
           "deflate) or the output (response head).", "",
           "| group | benchmark | ns/op | min – max of runs | ns/byte | MB/s |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        m = SIZE.search(r["name"])
        per_byte = mbps = ""
        if m:
            n = int(m.group(1))
            per_byte = f"{r['mean'] / n:.3f}"
            mbps = f"{n / r['mean'] * 1e3:,.0f}"
        out.append(f"| {r['group']} | {r['name']} | {fmt_ns(r['mean'])} | "
                   f"{fmt_ns(r['low'])} – {fmt_ns(r['high'])} | {per_byte} | {mbps} |")
    out += ["", "What each measures (benchmarks/micro/):", "",
            "- HttpParser: one parser kept across calls like a keep-alive connection's; each call "
            "feeds the whole buffer, resuming after every message as HttpConnection does.",
            "- ResponseWriter: `write_response_head` with the cached date line and the default "
            "`server` header into a reused buffer; chunked framing is `write_body_chunk` × 16 + "
            "`write_body_end`.",
            "- WebSocket: `WsDecoder::feed` + `next` of one masked client frame; `ws_encode_frame`; "
            "permessage-deflate as negotiated by default (12-bit windows, context takeover): "
            "`WsDeflate::compress` on one side, `decompress` on the other.",
            "- Scope: `asgi_bridge/scope.cpp`'s `build_http_scope` in an embedded interpreter with "
            "the bridge's inputs, plus the scope's `Py_DECREF` (what one request costs).", ""]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build/bench")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5, help="runs of each program (median taken)")
    p.add_argument("--out", default=f"micro-{_dt.date.today().isoformat()}")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("catch_args", nargs="*", help="passed to both programs (after --)")
    args = p.parse_args()
    build_dir = (ROOT / args.build_dir).resolve()
    if not args.no_build:
        build(build_dir)
    exes = {t: build_dir / "benchmarks" / "micro" / t for t in TARGETS}
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for t, exe in exes.items():
            if not exe.exists():
                if t == "bench_scope":
                    print("bench_scope was not built (no embeddable Python): skipped",
                          file=sys.stderr)
                    continue
                raise SystemExit(f"{exe} not found")
            for r in run(exe, args.samples, args.catch_args):
                runs.setdefault((r["group"], r["name"]), []).append(r["mean"])
    rows = [{"group": g, "name": n, "mean": statistics.median(v), "low": min(v), "high": max(v)}
            for (g, n), v in runs.items()]
    text = report(rows, args, exes)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.out}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
