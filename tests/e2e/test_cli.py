"""Command line, logging and server options, differential against uvicorn."""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import APPS_DIR, RAW_APP, REPO_DIR, base_env
from rawhttp import Conn, build_request, request
from support import log_messages, norm_log_line, norm_scope

BANNER = {"uvicorn": "Uvicorn", "cppuvicorn": "cppuvicorn"}

# Every option of uvicorn 0.51-0.54 (/work/shared/UVICORN.md section 1), plus --http2 (0.53).
UVICORN_OPTIONS = """
--host --port --uds --fd --reload --reload-dir --reload-include --reload-exclude --reload-delay --workers
--loop --http --ws --ws-max-size --ws-max-queue --ws-ping-interval --ws-ping-timeout --ws-per-message-deflate
--lifespan --interface --env-file --log-config --log-level --access-log --no-access-log --use-colors
--no-use-colors --proxy-headers --no-proxy-headers --server-header --no-server-header --date-header
--no-date-header --forwarded-allow-ips --root-path --limit-concurrency --backlog --limit-max-requests
--limit-max-requests-jitter --timeout-keep-alive --timeout-graceful-shutdown --timeout-worker-healthcheck
--ssl-keyfile --ssl-certfile --ssl-keyfile-password --ssl-version --ssl-cert-reqs --ssl-ca-certs --ssl-ciphers
--header --version --app-dir --h11-max-incomplete-event-size --reset-contextvars --factory --help
""".split()


def run_cli(kind: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", kind, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_DIR, env=base_env(), stdin=subprocess.DEVNULL)


def options_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", help_text))


# ----------------------------------------------------------------------------- --version, --help


def test_version(servers):
    def run(s):
        out = run_cli(s.kind, "--version")
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip()
        m = re.fullmatch(rf"Running {s.kind} (\S+) with (\S+) (\S+) on (\S+)", line)
        assert m, line
        assert m.group(2, 3, 4) == (platform.python_implementation(), platform.python_version(), platform.system())
        return line.replace(s.kind, "<kind>").replace(m.group(1), "<version>")

    servers.compare(run)


def test_help_lists_every_uvicorn_option(servers):
    oracle = options_in(run_cli("uvicorn", "--help").stdout)
    assert set(UVICORN_OPTIONS) <= oracle, set(UVICORN_OPTIONS) - oracle  # the parser itself works
    out = run_cli(servers.kind, "--help")
    assert out.returncode == 0, out.stderr
    missing = sorted(oracle - options_in(out.stdout))
    assert not missing, f"{servers.kind} --help lacks uvicorn options: {missing}"


def test_negative_max_requests_jitter_is_a_usage_error(servers):
    def run(s):
        out = run_cli(s.kind, RAW_APP, "--limit-max-requests-jitter", "-1")
        return out.returncode, out.stderr.splitlines()[-1]

    code, line = servers.compare(run)
    assert code == 2 and line == "Error: Invalid value for '--limit-max-requests-jitter': -1 is not in the range x>=0."


# ----------------------------------------------------------------------------- binding


def test_port_zero_logs_the_real_port(servers):
    def run(s):
        srv = s.get()
        assert srv.port and srv.port > 0
        line = srv.wait_for_line(r"running on", stream="stderr").string
        assert line == f"INFO:     {BANNER[s.kind]} running on http://127.0.0.1:{srv.port} (Press CTRL+C to quit)"
        assert request(srv, "GET", "/hello").status == 200
        return norm_log_line(line)

    servers.compare(run)


def test_ipv6_host(servers):
    def run(s):
        srv = s.spawn(RAW_APP, "--host", "::1")
        assert srv.host == "::1"
        line = srv.wait_for_line(r"running on", stream="stderr").string
        assert line == f"INFO:     {BANNER[s.kind]} running on http://[::1]:{srv.port} (Press CTRL+C to quit)"
        r = request(srv, "GET", "/scope")
        scope = r.json()
        assert scope["server"] == ["::1", srv.port] and scope["client"][0] == "::1"
        return norm_scope(scope)

    servers.compare(run)


def test_uds(servers):
    def run(s):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "server.sock")
            srv = s.spawn(RAW_APP, "--uds", path)
            assert srv.uds == path
            line = srv.wait_for_line(r"running on", stream="stderr").string
            assert line == f"INFO:     {BANNER[s.kind]} running on unix socket {path} (Press CTRL+C to quit)"
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
            scope = request(srv, "GET", "/scope").json()
            assert scope["client"] is None and scope["server"] == [path, None]
            code = srv.stop(signal.SIGINT)
            assert code == 0
            assert not os.path.exists(path), "socket file left behind after SIGINT"
            return norm_scope(scope, uds=path), code

    servers.compare(run)


def test_fd_unix_socket(servers):
    def run(s):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fd.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
                srv = s.spawn(RAW_APP, "--fd", str(listener.fileno()), pass_fds=[listener.fileno()])
                line = srv.wait_for_line(r"running on", stream="stderr").string
                assert line == f"INFO:     {BANNER[s.kind]} running on socket {path} (Press CTRL+C to quit)"

                class Target:
                    uds = path

                scope = request(Target, "GET", "/scope").json()
                assert scope["server"] == [path, None] and scope["client"] is None
                srv.stop()
                return norm_scope(scope, uds=path)
            finally:
                listener.close()

    servers.compare(run)


def test_fd_tcp_socket(servers):
    def run(s):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            srv = s.spawn(RAW_APP, "--fd", str(listener.fileno()), pass_fds=[listener.fileno()])
            line = srv.wait_for_line(r"running on", stream="stderr").string
            # uvicorn prints the Python sockname tuple here.
            assert line == f"INFO:     {BANNER[s.kind]} running on socket ('127.0.0.1', {port}) (Press CTRL+C to quit)"
            srv.host, srv.port = "127.0.0.1", port
            scope = request(srv, "GET", "/scope").json()
            assert scope["server"] == ["127.0.0.1", port]
            srv.stop()
            return norm_log_line(line).replace(str(port), "PORT"), norm_scope(scope)
        finally:
            listener.close()

    servers.compare(run)


# ----------------------------------------------------------------------------- default headers


def test_header_option(servers):
    def run(s):
        srv = s.get(RAW_APP, "--header", "X-One:1", "--header", "x-two: two words")
        r = request(srv, "GET", "/hello")
        assert r.compare_headers()[:2] == [(b"x-one", b"1"), (b"x-two", b" two words")]
        # Exact bytes: the value keeps its leading space, so there are two after the colon.
        assert b"\r\nx-one: 1\r\nx-two:  two words\r\n" in r.raw_head
        assert [k for k, _ in r.headers[:4]] == [b"date", b"server", b"x-one", b"x-two"]
        return r.norm()

    servers.compare(run)


def test_header_option_replaces_server_header(servers):
    def run(s):
        r = request(s.get(RAW_APP, "--header", "server:custom"), "GET", "/hello")
        assert r.header_list("server") == [b"custom"]
        return r.norm(), [k for k, _ in r.headers]

    servers.compare(run)


def test_no_server_header(servers):
    def run(s):
        r = request(s.get(RAW_APP, "--no-server-header"), "GET", "/hello")
        assert r.header("server") is None and r.headers[0][0] == b"date"
        return r.norm(), [k for k, _ in r.headers]

    servers.compare(run)


def test_no_date_header(servers):
    def run(s):
        r = request(s.get(RAW_APP, "--no-date-header"), "GET", "/hello")
        assert r.header("date") is None and r.headers[0] == (b"server", s.kind.encode())
        return r.norm(), [k for k, _ in r.headers]

    servers.compare(run)


# ----------------------------------------------------------------------------- access log


def test_access_log_format(servers):
    def run(s):
        srv = s.get()
        lines = []
        for target, version in [("/scope/a%20b?x=1&y=%20", "1.1"), ("/nope", "1.1"), ("/status/599", "1.1"),
                                ("/hello", "1.0"), ("/status/418", "1.1")]:
            mark = srv.mark()
            with Conn(srv) as c:
                c.send(build_request("GET", target, version=version))
                c.read_response()
                port = c.local_port
            m = srv.wait_for_line(rf"127\.0\.0\.1:{port} - ", after=mark, stream="stdout")
            lines.append(m.string)
            assert m.string.startswith(f"INFO:     127.0.0.1:{port} - \"GET ")
        assert lines[0].endswith('"GET /scope/a%20b?x=1&y=%20 HTTP/1.1" 200 OK')
        assert lines[1].endswith('"GET /nope HTTP/1.1" 404 Not Found')
        assert lines[2].endswith('"GET /status/599 HTTP/1.1" 599 ')
        assert lines[3].endswith('"GET /hello HTTP/1.0" 200 OK')
        assert lines[4].endswith('"GET /status/418 HTTP/1.1" 418 I\'m a Teapot')
        # Access lines go to stdout only.
        assert not any(" - \"GET " in line for line in srv.log_lines(stream="stderr"))
        return [norm_log_line(line) for line in lines]

    servers.compare(run)


def test_no_access_log(servers):
    def run(s):
        srv = s.get(RAW_APP, "--no-access-log")
        mark = srv.mark()
        assert request(srv, "GET", "/hello?nolog=1").status == 200
        assert request(srv, "GET", "/raise-before").status == 500
        # The error log still works: use it as the barrier, then no access line may exist.
        srv.wait_for_line(r"^RuntimeError: boom before start$", after=mark)
        time.sleep(0.1)
        assert not any(" - \"GET " in line for line in srv.log_lines(after=mark)), srv.log_text(mark)
        return True

    servers.compare(run)


# ----------------------------------------------------------------------------- timeouts and limits


def test_timeout_keep_alive_closes_idle_connection(servers):
    def run(s):
        srv = s.get(RAW_APP, "--timeout-keep-alive", "1")
        with Conn(srv) as c:
            assert c.request("GET", "/hello").status == 200
            time.sleep(0.6)
            # Activity re-arms the timer.
            assert c.request("GET", "/hello").status == 200
            start = time.monotonic()
            assert c.is_closed(3.0)
            elapsed = time.monotonic() - start
        assert 0.7 <= elapsed <= 2.0, elapsed
        return True

    servers.compare(run)


def test_limit_concurrency_503(servers):
    def run(s):
        srv = s.get(RAW_APP, "--limit-concurrency", "2")
        mark = srv.mark()
        busy = Conn(srv)
        try:
            busy.send(build_request("GET", "/sleep?t=0.5", headers=[("Connection", "close")]))
            srv.wait_for_line(r"^APP: sleep start", after=mark)
            with Conn(srv) as c:
                c.send(build_request("GET", "/hello"))
                r = c.read_response()
                assert r.status_line == b"HTTP/1.1 503 Service Unavailable"
                assert r.compare_headers() == [(b"content-type", b"text/plain; charset=utf-8"),
                                               (b"content-length", b"19"), (b"connection", b"close")]
                assert r.body == b"Service Unavailable"
                assert c.is_closed(2)
            srv.wait_for_line(r"^WARNING:  Exceeded concurrency limit\.$", after=mark, stream="stderr")
            srv.wait_for_line(r'"GET /hello HTTP/1\.1" 503 Service Unavailable$', after=mark, stream="stdout")
            assert busy.read_response().status == 200
            assert busy.is_closed(2)
        finally:
            busy.close()
        time.sleep(0.1)
        # With the busy connection gone, a lone request is admitted again.
        assert request(srv, "GET", "/hello", headers=[("Connection", "close")]).status == 200
        return r.norm()

    servers.compare(run)


# ----------------------------------------------------------------------------- app loading


def test_factory_flag(servers):
    def run(s):
        srv = s.spawn("raw_app:create_app", "--factory")
        r = request(srv, "GET", "/factory")
        assert r.body == b"made by factory"
        assert not any("factory detected" in line for line in srv.log_lines())
        return r.norm()

    servers.compare(run)


def test_factory_detected_without_flag_warns(servers):
    def run(s):
        srv = s.spawn("raw_app:create_app")
        assert request(srv, "GET", "/factory").body == b"made by factory"
        srv.wait_for_line(r"^WARNING:  ASGI app factory detected\. Using it, but please consider setting the "
                          r"--factory flag explicitly\.$", stream="stderr")
        srv.stop()
        return log_messages(srv.log_lines(stream="stderr"))

    servers.compare(run)


def test_app_dir_and_import_errors(servers, tmp_path):
    def run(s):
        # From an unrelated cwd, --app-dir makes the app importable...
        srv = s.spawn(RAW_APP, "--app-dir", str(APPS_DIR), cwd=tmp_path)
        assert request(srv, "GET", "/hello").status == 200
        srv.stop()
        # ...and without it the import fails with exit code 3.
        results = []
        for app in ("raw_app:app", "raw_app:missing_attribute"):
            args = ["--app-dir", str(tmp_path)]
            bad = s.spawn(app, *args, cwd=tmp_path, wait_ready=False)
            assert not bad.ready_or_exit()
            assert bad.returncode == 3
            results.append(log_messages(bad.log_lines(stream="stderr")))
        assert results[0] == ['ERROR:    Error loading ASGI app. Could not import module "raw_app".']
        assert results[1] == ['ERROR:    Error loading ASGI app. Could not import module "raw_app".']
        missing = s.spawn("raw_app:missing_attribute", wait_ready=False)
        assert not missing.ready_or_exit() and missing.returncode == 3
        results.append(log_messages(missing.log_lines(stream="stderr")))
        assert results[2] == ['ERROR:    Error loading ASGI app. Attribute "missing_attribute" not found in module '
                              '"raw_app".']
        return results

    servers.compare(run)


# ----------------------------------------------------------------------------- entry points


def test_console_script(servers):
    def run(s):
        script = Path(sys.executable).parent / s.kind
        assert script.exists(), f"{script} is not installed"
        from conftest import server_command

        cmd = [str(script)] + server_command(s.kind, RAW_APP)[3:]
        srv = s.spawn(RAW_APP, command=cmd)
        r = request(srv, "GET", "/hello")
        assert r.status == 200
        return r.norm()

    servers.compare(run)


@pytest.mark.parametrize("form", ["import-string", "app-object"])
def test_run_function(servers, form):
    def run(s):
        if form == "import-string":
            call = f"{s.kind}.run('raw_app:app', port=0, app_dir={str(APPS_DIR)!r})"
        else:
            call = (f"sys.path.insert(0, {str(APPS_DIR)!r}); import raw_app; "
                    f"{s.kind}.run(raw_app.app, port=0, lifespan='on')")
        code = f"import sys, {s.kind}; {call}"
        srv = s.spawn(None, command=[sys.executable, "-c", code])
        r = request(srv, "GET", "/hello")
        assert r.body == b"Hello, world!"
        exit_code = srv.stop(signal.SIGINT)
        assert exit_code == 0
        log = log_messages(srv.log_lines(stream="stderr"))
        assert log[-1] == "INFO:     Finished server process [PID]"
        return r.norm(), exit_code, log

    servers.compare(run)


# ----------------------------------------------------------------------------- cppuvicorn only


@pytest.mark.cppuvicorn_only
def test_cppuvicorn_identifies_itself(cppuvicorn):
    """The one place cppuvicorn must not look like uvicorn: its name and version."""
    r = request(cppuvicorn, "GET", "/hello")
    assert r.header_list("server") == [b"cppuvicorn"]
    assert cppuvicorn.wait_for_line(r"^INFO:     cppuvicorn running on http://127\.0\.0\.1:\d+ ", stream="stderr")
    version = subprocess.run([sys.executable, "-c", "import cppuvicorn; print(cppuvicorn.__version__)"],
                             capture_output=True, text=True, cwd=REPO_DIR, env=base_env(), timeout=30)
    assert version.returncode == 0, version.stderr
    out = run_cli("cppuvicorn", "--version").stdout.strip()
    assert out.startswith(f"Running cppuvicorn {version.stdout.strip()} with ")
