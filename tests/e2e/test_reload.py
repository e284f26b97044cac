"""``--reload``: the reloader restarts the server process when a watched file changes.

Each test writes its app into a fresh directory, serves it with ``--reload --reload-dir DIR``
(cwd DIR, so changed files are logged as ``'app.py'``) and rewrites files there. Both reloaders
are run: WatchFiles (watchfiles is installed in the venv) and StatReload, chosen by putting a
``watchfiles`` module that raises ImportError first on PYTHONPATH (Uvicorn and cppuvicorn both
fall back to StatReload when ``import watchfiles`` fails). Uvicorn runs the same tests.
"""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(30)

APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": {body!r}}})
"""
STARTED_RE = re.compile(r"^INFO:     Started server process \[(\d+)\]$")
RELOADERS = {"watchfiles": "WatchFiles", "stat": "StatReload"}


def write_app(path, body: bytes, padding: str = "") -> None:
    # The padding changes the file size too, so a stale .pyc (same mtime second) is never used.
    path.write_text(APP.format(body=body) + padding)


def start(servers, tmp_path, reloader: str, *args: str, signal_after=None):
    env = {}
    if reloader == "stat":
        shadow = tmp_path / "shadow"
        shadow.mkdir()
        (shadow / "watchfiles.py").write_text('raise ImportError("hidden by test_reload")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    app_dir = tmp_path / "src"
    srv = servers.spawn("app:app", "--reload", "--reload-dir", str(app_dir), "--app-dir", str(app_dir), *args,
                        env=env, cwd=app_dir)
    srv.wait_for_line(rf"^INFO:     Started reloader process \[{srv.pid}\] using {RELOADERS[reloader]}$",
                      stream="stderr")
    return srv


def get(srv) -> str:
    return httpx.get(srv.url, timeout=3).text


def wait_for_body(srv, body: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = get(srv)
        except httpx.HTTPError as exc:
            last = repr(exc)
        if last == body:
            return
        time.sleep(0.1)
    pytest.fail(f"{srv.kind}: body never became {body!r} (last: {last!r}).\n{srv.log_text()}", pytrace=False)


def server_pids(srv, after: int = 0) -> list[int]:
    return [int(m.group(1)) for line in srv.log_lines(stream="stderr", after=after)
            if (m := STARTED_RE.match(line))]


def assert_stops_cleanly(srv, sig: int, pids: list[int]) -> None:
    mark = srv.mark()
    assert srv.stop(sig) == 0
    assert f"INFO:     Stopping reloader process [{srv.pid}]" in srv.log_lines(stream="stderr", after=mark)
    # Nothing left: not the server processes, nor anything else in the reloader's session.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(srv.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"processes left in the reloader's process group after exit.\n{srv.log_text()}")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.mark.parametrize("reloader", ["watchfiles", "stat"])
def test_reload_on_change(servers, tmp_path, src, reloader):
    write_app(src / "app.py", b"v1")
    srv = start(servers, tmp_path, reloader)
    log = srv.log_lines(stream="stderr")
    assert log[0] == f"INFO:     Will watch for changes in these directories: {[str(src.resolve())]}", log
    assert re.match(r"^INFO:     (Uvicorn|cppuvicorn) running on http://127\.0\.0\.1:\d+ \(Press CTRL\+C to quit\)$",
                    log[1]), log
    assert log[2] == f"INFO:     Started reloader process [{srv.pid}] using {RELOADERS[reloader]}", log
    wait_for_body(srv, "v1")
    first = server_pids(srv)
    assert len(first) == 1 and first[0] != srv.pid

    time.sleep(0.6)  # let the reloader take its first look at the files (after --reload-delay)
    mark = srv.mark()
    write_app(src / "app.py", b"v2", padding="# v2\n")
    srv.wait_for_line(rf"^WARNING:  {RELOADERS[reloader]} detected changes in 'app\.py'\. Reloading\.\.\.$",
                      stream="stderr", after=mark, timeout=10)
    wait_for_body(srv, "v2")
    srv.wait_for_line(rf"^INFO:     Finished server process \[{first[0]}\]$", stream="stderr", after=mark)
    second = server_pids(srv, after=mark)
    assert len(second) == 1 and second[0] not in (first[0], srv.pid)

    assert_stops_cleanly(srv, signal.SIGTERM, first + second)


def test_waits_for_a_fix_when_the_app_fails_to_load(servers, tmp_path, src):
    """The server process exits 3 (no ``app`` attribute); the reloader stays and retries on change."""
    (src / "app.py").write_text("x = 1\n")
    srv = start(servers, tmp_path, "watchfiles")
    srv.wait_for_line(r'^ERROR:    Error loading ASGI app\. Attribute "app" not found in module "app"\.$',
                      stream="stderr")
    time.sleep(0.6)
    assert srv.alive(), srv.log_text()
    mark = srv.mark()
    write_app(src / "app.py", b"fixed")
    srv.wait_for_line(r"^WARNING:  WatchFiles detected changes in 'app\.py'\. Reloading\.\.\.$",
                      stream="stderr", after=mark, timeout=10)
    wait_for_body(srv, "fixed")
    assert_stops_cleanly(srv, signal.SIGINT, server_pids(srv))


def test_include_and_exclude_patterns(servers, tmp_path, src):
    """WatchFiles honours --reload-include / --reload-exclude (Uvicorn's FileFilter)."""
    write_app(src / "app.py", b"v1")
    srv = start(servers, tmp_path, "watchfiles", "--reload-include", "*.txt", "--reload-exclude", "skip_*.py")
    wait_for_body(srv, "v1")
    time.sleep(0.6)
    mark = srv.mark()
    (src / "skip_me.py").write_text("x = 1\n")  # excluded
    (src / "notes.md").write_text("not included\n")
    time.sleep(1.5)
    assert not any("detected changes" in line for line in srv.log_lines(after=mark)), srv.log_text(mark)
    (src / "notes.txt").write_text("included\n")
    srv.wait_for_line(r"^WARNING:  WatchFiles detected changes in 'notes\.txt'\. Reloading\.\.\.$",
                      stream="stderr", after=mark, timeout=10)
    srv.wait_for_line(STARTED_RE, stream="stderr", after=mark)
    wait_for_body(srv, "v1")
    assert_stops_cleanly(srv, signal.SIGTERM, server_pids(srv))


def test_stat_reload_warns_about_patterns(servers, tmp_path, src):
    write_app(src / "app.py", b"v1")
    srv = start(servers, tmp_path, "stat", "--reload-include", "*.txt")
    assert ("WARNING:  --reload-include and --reload-exclude have no effect unless watchfiles is installed."
            in srv.log_lines(stream="stderr"))
    wait_for_body(srv, "v1")
    assert_stops_cleanly(srv, signal.SIGTERM, server_pids(srv))
