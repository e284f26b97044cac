#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: deterministic, unlike requests/s on a VM.

    .venv/bin/python benchmarks/callgrind.py [--arms hello,hello-counters] [-n 2000]
        [--out callgrind-<date>]

Each arm runs one single-process server under `valgrind --tool=callgrind` twice: once
answering N keep-alive `GET /` requests on one connection, once 2N, each time from start-up to
a SIGINT shutdown. Instructions per request = (Ir(2N) - Ir(N)) / N, so start-up, imports and
shutdown cancel out, and the client (this process) is not counted. Kernel time is not counted
either: callgrind sees user-space instructions only (the server's read/write syscalls cost the
same in every arm).

Arms:
- `hello`: `python -m cppuvicorn hello:app` (benchmarks/apps/hello.py), access log off.
- `hello-counters`: the same with the metrics counters on, through
  benchmarks/with_metrics_region.py (the `--metrics-port` hot path without the supervisor).
- `fastapi_json`: benchmarks/apps/fastapi_json.py.
- `hello-uvicorn`, `fastapi_json-uvicorn`: the same apps under Uvicorn (httptools, uvloop),
  counted the same way.
- `hello-alone`, `fastapi_json-alone`: the same apps with no server (benchmarks/app_alone.py:
  each call in its own Task on uvloop, a no-op send). What a server cannot go below; an arm's
  count minus its `-alone` count is what the server adds.
- `ws_echo`, `ws_echo-uvicorn`: benchmarks/apps/ws_echo.py on one WebSocket, N 64-byte binary
  messages sent and echoed one at a time ("per request" is per message there); Uvicorn with
  `--ws websockets-sansio`.
Writes benchmarks/results/<out>.md and .json.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
RESULTS = HERE / "results"
HOST = "127.0.0.1"

ARMS = {  # name: (app, metrics counters on, what serves it)
    "hello": ("hello:app", False, "cppuvicorn"),
    "hello-counters": ("hello:app", True, "cppuvicorn"),
    "fastapi_json": ("fastapi_json:app", False, "cppuvicorn"),
    "hello-alone": ("hello:app", False, "alone"),
    "fastapi_json-alone": ("fastapi_json:app", False, "alone"),
    "hello-uvicorn": ("hello:app", False, "uvicorn"),
    "fastapi_json-uvicorn": ("fastapi_json:app", False, "uvicorn"),
    "ws_echo": ("ws_echo:app", False, "cppuvicorn"),
    "ws_echo-uvicorn": ("ws_echo:app", False, "uvicorn"),
}
WS_MESSAGE_SIZE = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server not listening after {timeout:.0f} s")


def requests(port: int, n: int, path: str) -> None:
    req = f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
    with socket.create_connection((HOST, port), timeout=60) as s:
        buf = b""
        for _ in range(n):
            s.sendall(req)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    m = re.search(rb"content-length: *(\d+)", buf[:head_end], re.I)
                    if m is None:
                        raise RuntimeError(f"no content-length in {buf[:head_end]!r}")
                    total = head_end + 4 + int(m.group(1))
                    if len(buf) >= total:
                        if not buf.startswith(b"HTTP/1.1 200"):
                            raise RuntimeError(f"unexpected response {buf[:60]!r}")
                        buf = buf[total:]
                        break
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buf += chunk


def ws_messages(port: int, n: int, size: int = WS_MESSAGE_SIZE) -> None:
    """One WebSocket (no extensions offered): n binary messages, each echo read and checked
    before the next is sent, then a close handshake."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((HOST, port), timeout=60) as s:
        s.sendall(f"GET / HTTP/1.1\r\nhost: {HOST}\r\nupgrade: websocket\r\n"
                  f"connection: Upgrade\r\nsec-websocket-key: {key}\r\n"
                  "sec-websocket-version: 13\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection during the handshake")
            buf += chunk
        if not buf.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {buf[:60]!r}")
        buf = buf[buf.index(b"\r\n\r\n") + 4:]
        mask = b"\x5a\xa5\x3c\xc3"

        def client_frame(opcode: int, data: bytes) -> bytes:  # short (< 126 B) and masked
            assert len(data) < 126
            return (bytes([0x80 | opcode, 0x80 | len(data)]) + mask
                    + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

        payload = bytes(i % 251 for i in range(size))
        frame = client_frame(0x2, payload)
        echo = bytes([0x82, size]) + payload
        for _ in range(n):
            s.sendall(frame)
            while len(buf) < len(echo):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buf += chunk
            if buf[:len(echo)] != echo:
                raise RuntimeError(f"unexpected echo {buf[:20]!r}")
            buf = buf[len(echo):]
        s.sendall(client_frame(0x8, (1000).to_bytes(2, "big")))
        while len(buf) < 2:  # the server's close frame
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk


def ir_by_object(out: Path) -> dict[str, int]:
    """Self instructions per object file (the cost lines of each function, not its calls)."""
    by: dict[str, int] = {}
    ob = "?"
    skip_next = False
    for line in out.read_text(errors="replace").splitlines():
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            if skip_next:
                skip_next = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                by[ob] = by.get(ob, 0) + int(parts[1])
        elif line.startswith("ob="):
            ob = line[3:]
        elif line.startswith("calls="):
            skip_next = True
    return by


def group(obj: str) -> str:
    name = os.path.basename(obj)
    for key, label in (("/uvloop/", "uvloop"), ("/httptools/", "httptools")):
        if key in obj:  # their modules' file names do not say whose they are
            return label
    for key, label in (("_core", "cppuvicorn _core"), ("libpython", "libpython"),
                       ("python3", "python (binary)"), ("libuv", "libuv"),
                       ("libc.so", "libc"), ("ld-linux", "ld.so"), ("pydantic", "pydantic"),
                       ("valgrind", "valgrind"), ("vgpreload", "valgrind")):
        if key in name:
            return label
    return "other"


def total_ir(out: Path) -> int:
    # callgrind writes "summary: N" (or "totals: N") with the event counts of the run.
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out}")


def run_once(args, arm: str, n: int, workdir: Path) -> int:
    app, counters, kind = ARMS[arm]
    alone = kind == "alone"
    port = free_port()
    out = workdir / f"callgrind.{arm}.{n}.out"
    if alone:
        server = [args.python, str(HERE / "app_alone.py"), app, str(n)]
    else:  # kind is the module run: cppuvicorn, or Uvicorn as benchmarks/run.py runs it
        server = [args.python, "-m", kind, app, "--host", HOST, "--port", str(port),
                  "--no-access-log", "--log-level", "warning", "--lifespan", "off"]
        if kind == "uvicorn":
            server += ["--http", "httptools", "--loop", "uvloop"]
            if app.startswith("ws_"):
                server += ["--ws", "websockets-sansio"]
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no",
           "--compress-strings=no", "--compress-pos=no", *server]
    if counters:
        cmd = [args.python, str(HERE / "with_metrics_region.py"), "--", *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(APPS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # A fixed string-hash seed: dict probing then costs the same in every run. With random
    # seeds, libpython's count moved by a few hundred instructions per request between runs
    # of the same build; with a fixed one, by about 30.
    env.setdefault("PYTHONHASHSEED", "0")
    log = open(workdir / f"{arm}.{n}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        if alone:
            if proc.wait(timeout=args.startup_timeout) != 0:
                raise RuntimeError(f"{arm}: app_alone.py exited with {proc.returncode}")
        else:
            wait_ready(port, proc, args.startup_timeout)
            if app.startswith("ws_"):
                ws_messages(port, n)
            else:
                requests(port, n, "/")
            os.kill(proc.pid, signal.SIGINT)  # the server (or the wrapper, which passes it on)
            proc.wait(timeout=args.startup_timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    if counters:
        text = (workdir / f"{arm}.{n}.log").read_text(errors="replace")
        m = re.search(r"slot counted (\d+) requests", text)
        if not m or int(m.group(1)) < n:
            raise RuntimeError(f"the metrics slot was not attached: {text[-300:]}")
    objects: dict[str, int] = {}
    for obj, ir in ir_by_object(out).items():
        objects[group(obj)] = objects.get(group(obj), 0) + ir
    return total_ir(out), objects


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", default="hello,hello-counters,fastapi_json")
    p.add_argument("-n", type=int, default=2000, help="requests in the short run (default 2000)")
    p.add_argument("--python", default=sys.executable, type=os.path.abspath)
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--out", default=None)
    p.add_argument("--compare", metavar="FILE", default=None,
                   help="a recorded baseline (results/callgrind-*.json): print the deltas "
                        "against it after the run")
    args = p.parse_args()
    baseline = json.loads(Path(args.compare).read_text())["results"] if args.compare else None
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (scripts/bootstrap installs it)")
    arms = [a for a in args.arms.split(",") if a]
    for a in arms:
        if a not in ARMS:
            sys.exit(f"unknown arm {a!r}: {', '.join(ARMS)}")
    workdir = Path(tempfile.mkdtemp(prefix="cppuvicorn-callgrind-"))
    results = {}
    for arm in arms:
        small, obj_small = run_once(args, arm, args.n, workdir)
        big, obj_big = run_once(args, arm, 2 * args.n, workdir)
        per = (big - small) / args.n
        per_obj = {k: (obj_big.get(k, 0) - obj_small.get(k, 0)) / args.n
                   for k in sorted(set(obj_small) | set(obj_big))}
        results[arm] = {"ir_n": small, "ir_2n": big, "ir_per_request": per,
                        "per_request_by_object": per_obj}
        print(f"{arm:<16} {per:12,.0f} instructions per request; "
              + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(per_obj.items(), key=lambda kv: -kv[1])
                          if abs(v) >= 50), flush=True)
    date = _dt.date.today().isoformat()
    stem = args.out or f"callgrind-{date}"
    lines = [f"# Instructions per request (callgrind), {date}\n",
             f"Command: `benchmarks/callgrind.py {' '.join(sys.argv[1:])}`; N = {args.n}; "
             "Ir = user-space instructions of the server process, (Ir(2N) - Ir(N)) / N; "
             f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', '0')}.\n",
             "| arm | Ir, N requests | Ir, 2N requests | Ir per request |", "|---|---|---|---|"]
    for arm, r in results.items():
        lines.append(f"| {arm} | {r['ir_n']:,} | {r['ir_2n']:,} | {r['ir_per_request']:,.0f} |")
    groups = sorted({k for r in results.values() for k in r["per_request_by_object"]})
    lines += ["", "Per request, by object (self instructions; differences of two runs, so "
              "small values can be negative):", "",
              "| arm | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for arm, r in results.items():
        lines.append(f"| {arm} | " + " | ".join(f"{r['per_request_by_object'].get(g, 0):,.0f}"
                                                 for g in groups) + " |")
    if "hello" in results and "hello-counters" in results:
        base = results["hello"]["ir_per_request"]
        delta = results["hello-counters"]["ir_per_request"] - base
        core = "cppuvicorn _core"
        core_delta = (results["hello-counters"]["per_request_by_object"].get(core, 0)
                      - results["hello"]["per_request_by_object"].get(core, 0))
        lines.append(f"\nThe metrics counters (all in `_core`): {core_delta:+,.0f} instructions "
                     f"per hello request in `_core`, {100 * core_delta / base:+.2f} % of the "
                     f"{base:,.0f} the server runs per request. Whole process: {delta:+,.0f} "
                     "(the rest is run-to-run variation outside `_core`: timers, GC).")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"date": date, "n": args.n,
                                                      "results": results}, indent=1))
    print("\n".join(lines[-1:]))
    print(f"wrote {RESULTS / (stem + '.md')}")
    if baseline is not None:
        print_comparison(results, baseline, args.compare)
    return 0


def print_comparison(results: dict, baseline: dict, name: str) -> None:
    """Per arm: Ir/request now vs the baseline, in instructions and percent, and the object
    files whose share moved by at least 50 instructions per request."""
    print(f"\nvs {name}:")
    for arm, r in results.items():
        b = baseline.get(arm)
        if b is None:
            print(f"{arm:<16} not in the baseline")
            continue
        now, then = r["ir_per_request"], b["ir_per_request"]
        print(f"{arm:<16} {then:12,.0f} -> {now:12,.0f} instructions per request "
              f"({now - then:+,.0f}, {100 * (now - then) / then:+.2f} %)")
        objs = set(r["per_request_by_object"]) | set(b["per_request_by_object"])
        for g in sorted(objs):
            d = r["per_request_by_object"].get(g, 0) - b["per_request_by_object"].get(g, 0)
            if abs(d) >= 50:
                print(f"{'':<16}   {g}: {d:+,.0f}")


if __name__ == "__main__":
    sys.exit(main())
