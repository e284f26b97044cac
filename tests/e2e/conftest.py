"""End-to-end test harness: cppuvicorn against uvicorn (the oracle), as real subprocesses.

Fixtures
--------
``kind``       "cppuvicorn" | "uvicorn" (parametrised). cppuvicorn params fail, not skip, when the
               module cannot be imported; ``E2E_ONLY_UVICORN=1`` deselects them instead.
``servers``    a :class:`Servers` bound to ``kind``: ``.get(app, *args)`` returns a shared server
               (started once per session per configuration), ``.spawn(app, *args)`` a fresh one
               stopped at teardown, and ``.compare(fn)`` runs ``fn`` against this kind and, when
               the kind is cppuvicorn, against uvicorn too, asserting both results are equal.
``server``     ``servers.get()``: the shared raw-app server of ``kind``.
``cppuvicorn`` the shared raw-app cppuvicorn server, for cppuvicorn-only checks
               (``cppuvicorn_servers`` gives the :class:`Servers` for other configurations).

Every server is started as ``python -m <kind> APP --port 0 --app-dir tests/e2e/apps ...``; uvicorn
also gets ``--http httptools --loop uvloop``. Readiness is the "running on" log line.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
APPS_DIR = E2E_DIR / "apps"
REPO_DIR = E2E_DIR.parent.parent
KINDS = ["cppuvicorn", "uvicorn"]
ONLY_UVICORN = os.environ.get("E2E_ONLY_UVICORN", "") not in ("", "0")
START_TIMEOUT = float(os.environ.get("E2E_START_TIMEOUT", "15"))
STOP_TIMEOUT = 10.0
RAW_APP = "raw_app:app"

READY_RE = re.compile(
    r"running on (?:(?P<scheme>https?)://(?P<host>\[[^\]]*\]|[^\s:]+):(?P<port>\d+)"
    r"|unix socket (?P<uds>\S+)|socket (?P<sock>.+?)) \(Press CTRL\+C to quit\)"
)


# ----------------------------------------------------------------------------- server process


def server_command(kind: str, app: str | None, args=()) -> list[str]:
    args = list(args)
    cmd = [sys.executable, "-m", kind]
    if app is not None:
        cmd.append(app)
    if kind == "uvicorn":
        cmd += ["--http", "httptools", "--loop", "uvloop"]
    if not any(a in args for a in ("--port", "--uds", "--fd")):
        cmd += ["--port", "0"]
    if "--app-dir" not in args:
        cmd += ["--app-dir", str(APPS_DIR)]
    return cmd + args


def base_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # Same set/dict iteration order in every server process (e.g. Starlette's "allow" header).
    env["PYTHONHASHSEED"] = "0"
    env.pop("WEB_CONCURRENCY", None)
    for key in list(env):
        if key.startswith("UVICORN_") or key.startswith("CPPUVICORN_"):
            del env[key]
    env.update(extra or {})
    return env


class ServerProcess:
    """A server subprocess whose stdout and stderr are collected line by line in threads."""

    def __init__(self, kind: str, app: str | None = RAW_APP, args=(), env: dict | None = None,
                 cwd: Path | str = REPO_DIR, pass_fds=(), command: list[str] | None = None):
        self.kind = kind
        self.app = app
        self.args = list(args)
        self.command = command or server_command(kind, app, args)
        self.env = base_env(env)
        self.cwd = str(cwd)
        self.pass_fds = tuple(pass_fds)
        self.proc: subprocess.Popen | None = None
        self.lines: list[tuple[str, str]] = []  # (stream, line) in arrival order per stream
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.scheme = self.host = self.uds = self.sockname = None
        self.port: int | None = None
        self.returncode: int | None = None

    # ---- lifecycle
    def start(self, wait_ready: bool = True, timeout: float = START_TIMEOUT) -> "ServerProcess":
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=self.cwd, env=self.env, pass_fds=self.pass_fds, start_new_session=True,
        )
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            t = threading.Thread(target=self._reader, args=(name, stream), daemon=True)
            t.start()
            self._threads.append(t)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _reader(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.lines.append((name, line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def ready_or_exit(self, timeout: float = START_TIMEOUT) -> bool:
        """True once the "running on" line is logged; False if the process exits first.
        Fails the test if neither happens within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.wait_for_line(READY_RE, timeout=0.1, stream="stderr", fail=False)
            if m is not None:
                self._parse_ready(m)
                return True
            if self.proc.poll() is not None:
                # Exited: drain what is left of its output, then look once more.
                for t in self._threads:
                    t.join(timeout=2)
                m = self.wait_for_line(READY_RE, timeout=0, stream="stderr", fail=False)
                if m is not None:
                    self._parse_ready(m)
                    return True
                self.returncode = self.proc.returncode
                return False
        self.kill()
        pytest.fail(f"{self.kind} neither started nor exited within {timeout}s.\n{self.log_text()}", pytrace=False)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        m = self.wait_for_line(READY_RE, timeout=timeout, stream="stderr", fail=False)
        if m is None:
            code = self.proc.poll()
            state = f"exited with {code}" if code is not None else "still running"
            self.kill()
            pytest.fail(f"{self.kind} did not log its 'running on' line within {timeout}s ({state}).\n"
                        f"command: {' '.join(self.command)}\n{self.log_text()}", pytrace=False)
        self._parse_ready(m)

    def _parse_ready(self, m) -> None:
        if m.group("port"):
            self.scheme = m.group("scheme")
            self.host = m.group("host").strip("[]")
            self.port = int(m.group("port"))
        elif m.group("uds"):
            self.uds = m.group("uds")
        else:
            self.sockname = m.group("sock")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Wait for the process to exit; None if it is still running at the deadline."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(timeout=2)
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and return the exit code (negative: killed by that signal). Fails the test
        if the process does not exit within ``timeout``."""
        if self.proc is None:
            raise RuntimeError("not started")
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
            pytest.fail(f"{self.kind} did not exit within {timeout}s of signal {sig}.\n{self.log_text()}",
                        pytrace=False)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session, started by us
            except OSError:
                self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # The reader threads see EOF once the process is gone; never close the pipes under them.
        for t in self._threads:
            t.join(timeout=2)

    # ---- logs
    def mark(self) -> int:
        """A position in the log; pass it as ``after`` to look only at newer lines."""
        with self._cond:
            return len(self.lines)

    def log_lines(self, stream: str | None = None, after: int = 0) -> list[str]:
        with self._cond:
            return [line for s, line in self.lines[after:] if stream is None or s == stream]

    def log_text(self, after: int = 0) -> str:
        return "\n".join(f"[{s}] {line}" for s, line in self.log_lines_with_stream(after))

    def log_lines_with_stream(self, after: int = 0) -> list[tuple[str, str]]:
        with self._cond:
            return list(self.lines[after:])

    def wait_for_line(self, pattern, timeout: float = 5.0, stream: str | None = None, after: int = 0,
                      fail: bool = True):
        """The first match of ``pattern`` (regex or compiled) in a line newer than ``after``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = after
        with self._cond:
            while True:
                while index < len(self.lines):
                    s, line = self.lines[index]
                    index += 1
                    if stream is None or s == stream:
                        m = regex.search(line)
                        if m:
                            return m
                remaining = deadline - time.monotonic()
                readers_done = all(not t.is_alive() for t in self._threads)
                if remaining <= 0 or (readers_done and index >= len(self.lines)):
                    break
                self._cond.wait(min(remaining, 0.2))
        if fail:
            pytest.fail(f"{self.kind}: no log line matching {regex.pattern!r} within {timeout}s.\n"
                        f"{self.log_text(after)}", pytrace=False)
        return None

    def __repr__(self) -> str:
        return f"<ServerProcess {self.kind} {self.app} {self.args} port={self.port}>"


# ----------------------------------------------------------------------------- availability


@functools.lru_cache(maxsize=None)
def cppuvicorn_import_error() -> str | None:
    probe = subprocess.run([sys.executable, "-c", "import cppuvicorn"], capture_output=True, text=True,
                           cwd=REPO_DIR, env=base_env(), timeout=60)
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or ["(no output)"])[-1]


def require_kind(kind: str) -> None:
    if kind == "cppuvicorn":
        err = cppuvicorn_import_error()
        if err is not None:
            pytest.fail(
                f"cppuvicorn is not importable with {sys.executable}: {err}\n"
                "Build and install it into the venv (e.g. `.venv/bin/pip install -e .`), or set "
                "E2E_ONLY_UVICORN=1 to run only the uvicorn side of the suite.",
                pytrace=False,
            )


# ----------------------------------------------------------------------------- pools and fixtures


class ServerPool:
    """Session-wide cache of shared servers, keyed by (kind, app, args)."""

    def __init__(self):
        self.servers: dict[tuple, ServerProcess] = {}

    def get(self, kind: str, app: str = RAW_APP, args=()) -> ServerProcess:
        key = (kind, app, tuple(args))
        srv = self.servers.get(key)
        if srv is not None and not srv.alive():
            log = srv.log_text()
            del self.servers[key]
            pytest.fail(f"shared {kind} server {app} {list(args)} died (exit {srv.proc.returncode}):\n{log}",
                        pytrace=False)
        if srv is None:
            srv = ServerProcess(kind, app, args).start()
            self.servers[key] = srv
        return srv

    def close(self) -> None:
        for srv in self.servers.values():
            if srv.alive():
                try:
                    srv.proc.send_signal(signal.SIGTERM)
                    srv.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            srv.kill()
        self.servers.clear()


class Servers:
    """Server access for one kind; ``compare`` is the differential entry point."""

    def __init__(self, kind: str, pool: ServerPool, spawned: list):
        self.kind = kind
        self._pool = pool
        self._spawned = spawned

    @property
    def is_oracle(self) -> bool:
        return self.kind == "uvicorn"

    @functools.cached_property
    def oracle(self) -> "Servers | None":
        if self.kind == "uvicorn":
            return None
        return Servers("uvicorn", self._pool, self._spawned)

    def get(self, app: str = RAW_APP, *args: str) -> ServerProcess:
        return self._pool.get(self.kind, app, args)

    def spawn(self, app: str | None = RAW_APP, *args: str, wait_ready: bool = True, env=None, cwd=REPO_DIR,
              pass_fds=(), command=None, timeout: float = START_TIMEOUT) -> ServerProcess:
        srv = ServerProcess(self.kind, app, args, env=env, cwd=cwd, pass_fds=pass_fds, command=command)
        self._spawned.append(srv)
        return srv.start(wait_ready=wait_ready, timeout=timeout)

    def compare(self, fn, what: str = "result"):
        """Run ``fn(servers)`` for this kind; for cppuvicorn also for uvicorn, and assert equality.

        ``fn`` must return something comparable with ``==`` that leaves out what may differ
        (server/date headers, ports). Returns this kind's result."""
        mine = fn(self)
        if self.oracle is not None:
            theirs = fn(self.oracle)
            assert mine == theirs, (
                f"cppuvicorn and uvicorn differ in {what}:\n  cppuvicorn: {mine!r}\n  uvicorn:    {theirs!r}")
        return mine


@pytest.fixture(scope="session")
def pool():
    p = ServerPool()
    yield p
    p.close()


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    require_kind(request.param)
    return request.param


@pytest.fixture
def servers(kind, pool):
    spawned: list[ServerProcess] = []
    yield Servers(kind, pool, spawned)
    for srv in spawned:
        srv.kill()


@pytest.fixture
def server(servers) -> ServerProcess:
    return servers.get()


@pytest.fixture
def cppuvicorn_servers(pool):
    require_kind("cppuvicorn")
    spawned: list[ServerProcess] = []
    yield Servers("cppuvicorn", pool, spawned)
    for srv in spawned:
        srv.kill()


@pytest.fixture
def cppuvicorn(cppuvicorn_servers) -> ServerProcess:
    return cppuvicorn_servers.get()


CPPUVICORN_FIXTURES = {"cppuvicorn", "cppuvicorn_servers"}


def pytest_configure(config):
    config.addinivalue_line("markers", "cppuvicorn_only: checks a behaviour where cppuvicorn improves on uvicorn")


def pytest_collection_modifyitems(config, items):
    if not ONLY_UVICORN:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        uses_cpp = (callspec is not None and callspec.params.get("kind") == "cppuvicorn") or bool(
            CPPUVICORN_FIXTURES & set(getattr(item, "fixturenames", ()))
        ) or item.get_closest_marker("cppuvicorn_only") is not None
        (drop if uses_cpp else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    if ONLY_UVICORN:
        return "e2e: E2E_ONLY_UVICORN set: cppuvicorn tests deselected, uvicorn assertions only"
    err = cppuvicorn_import_error()
    return "e2e: cppuvicorn " + ("importable" if err is None else f"NOT importable: {err}")
