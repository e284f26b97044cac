"""What ws_run.py and ws_idle_rss.py share: the wsload client binary, the WebSocket servers
and their correctness check. Process bookkeeping (own process group, cleanup, CPU accounting)
comes from run.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import run as base  # benchmarks/run.py

HERE = base.HERE
HOST = base.HOST
WSLOAD_SRC = HERE / "wsload" / "wsload.cpp"
WSLOAD_BUILD = HERE / "wsload" / "build" / "wsload"
APP = "ws_echo:app"


def ensure_wsload(path: str | None) -> Path:
    """The wsload binary: `path` if given, else benchmarks/wsload/build/wsload, compiled with
    g++ against libuv and libcrypto when missing or older than its source."""
    if path:
        p = Path(path)
        if not os.access(p, os.X_OK):
            sys.exit(f"--wsload {p} is not an executable")
        return p
    if WSLOAD_BUILD.exists() and WSLOAD_BUILD.stat().st_mtime >= WSLOAD_SRC.stat().st_mtime:
        return WSLOAD_BUILD
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        sys.exit("no C++ compiler to build wsload (set CXX or pass --wsload)")
    WSLOAD_BUILD.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cxx, "-O2", "-std=c++20", "-o", str(WSLOAD_BUILD), str(WSLOAD_SRC), "-luv", "-lcrypto"]
    print(f"building wsload: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"building wsload failed (needs libuv1-dev and libssl-dev):\n{r.stderr}")
    return WSLOAD_BUILD


@dataclass
class WsServer:
    name: str
    build: Callable[[str, Path, int], list[str]]  # (python, wsload, port) -> argv
    describe: str
    python: bool = True  # a Python server (probed, versioned)


def cmd_cppuvicorn(python: str, wsload: Path, port: int) -> list[str]:
    return [python, "-m", "cppuvicorn", APP, "--host", HOST, "--port", str(port),
            "--no-access-log", "--log-level", "warning"]


def cmd_uvicorn(python: str, wsload: Path, port: int) -> list[str]:
    return [python, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port),
            "--http", "httptools", "--loop", "uvloop", "--ws", "websockets-sansio",
            "--no-access-log", "--log-level", "warning"]


def cmd_granian(python: str, wsload: Path, port: int) -> list[str]:
    # The same single-worker settings as run.py's HTTP runs; Granian serves ASGI WebSockets
    # natively (no Python WebSocket library).
    return [python, "-m", "granian", *base.GRANIAN_ARGS, "--host", HOST, "--port", str(port),
            APP]


def cmd_native(python: str, wsload: Path, port: int) -> list[str]:
    return [str(wsload), "--host", HOST, "--serve", str(port)]


SERVERS: dict[str, WsServer] = {
    s.name: s
    for s in [
        WsServer("cppuvicorn", cmd_cppuvicorn,
                 "python -m cppuvicorn ws_echo:app --host 127.0.0.1 --port P --no-access-log "
                 "--log-level warning"),
        WsServer("uvicorn", cmd_uvicorn,
                 "python -m uvicorn ws_echo:app --host 127.0.0.1 --port P --http httptools "
                 "--loop uvloop --ws websockets-sansio --no-access-log --log-level warning"),
        WsServer("granian", cmd_granian,
                 "python -m granian " + " ".join(base.GRANIAN_ARGS) +
                 " --host 127.0.0.1 --port P ws_echo:app"),
        WsServer("native", cmd_native,
                 "wsload --serve P  # C++/libuv echo: handshake, unmask, echo; no Python",
                 python=False),
    ]
}


def probe(python: str, name: str) -> tuple[bool, str]:
    """(available, version or reason) for a Python server."""
    mod = name
    r = subprocess.run(
        [python, "-c",
         f"import {mod}, importlib.metadata as m, importlib.util as u\n"
         f"if u.find_spec('{mod}._core'): import {mod}._core\n"
         f"try: print(m.version({mod!r}))\n"
         f"except Exception: print(getattr({mod}, '__version__', '?'))"],
        capture_output=True, text=True, cwd=base.APPS_DIR, env=base.server_env(), timeout=60)
    if r.returncode != 0:
        return False, (r.stderr.strip().splitlines() or ["?"])[-1]
    return True, r.stdout.strip()


def versions(python: str) -> dict:
    import json
    r = subprocess.run(
        [python, "-c",
         "import sys, json, importlib.metadata as m\n"
         "out = {'Python': sys.version.split()[0] + ' (' + sys.executable + ')'}\n"
         "for p in ['cppuvicorn', 'uvicorn', 'uvloop', 'httptools', 'websockets', 'granian']:\n"
         "    try: out[p] = m.version(p)\n"
         "    except Exception: out[p] = 'not installed'\n"
         "print(json.dumps(out))"],
        capture_output=True, text=True, timeout=60, cwd=base.APPS_DIR, env=base.server_env())
    try:
        v = json.loads(r.stdout)
    except ValueError:
        v = {"Python": "?"}
    try:
        v["libuv (wsload)"] = subprocess.run(["pkg-config", "--modversion", "libuv"],
                                             capture_output=True, text=True,
                                             timeout=10).stdout.strip() or "?"
    except OSError:
        v["libuv (wsload)"] = "?"
    return v


def check_echo(port: int) -> None:
    """Handshake, then binary and text messages of several sizes come back identical and in
    order (websockets' sync client, compression off like wsload)."""
    from websockets.sync.client import connect
    payloads: list[bytes | str] = [b"x" * 64, os.urandom(16384), os.urandom(100_000), "héllo ✓",
                                   b""]
    try:
        with connect(f"ws://{HOST}:{port}/", compression=None, open_timeout=10,
                     close_timeout=5) as ws:
            for p in payloads:
                ws.send(p)
            for p in payloads:
                got = ws.recv(timeout=10)
                if got != p:
                    raise base.CheckError(f"echo of a {type(p).__name__} of {len(p)} differs: "
                                          f"got {type(got).__name__} of {len(got)}")
    except base.CheckError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        raise base.CheckError(f"{type(e).__name__}: {e}")


def proc_tree_rss_kib(root: int) -> dict[int, int]:
    """pid -> VmRSS (KiB) for `root` and its descendants."""
    out = {}
    for pid in base.tree_pids(base.read_all_procs(), root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1])
                        break
        except OSError:
            pass
    return out
