"""--access-log-format (cppuvicorn's; Uvicorn has none): Gunicorn's atoms, logged when the
response ends with its size and duration. Also the default line's path, compared with Uvicorn."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import RAW_APP, REPO_DIR, base_env
from rawhttp import Conn, build_request, request
from support import norm_log_line

FULL = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(m)s %(U)s [%(q)s] %(H)s %(s)s %(B)s %(b)s '
        '"%(f)s" "%(a)s" T=%(T)s M=%(M)s D=%(D)s L=%(L)s %(p)s {%({x-trace}i)s} {%({content-type}o)s} '
        '%(client_addr)s|%(request_line)s|%(status_code)s|%(nope)s')


def _line(srv, mark: int, pattern: str) -> str:
    return srv.wait_for_line(pattern, after=mark, stream="stdout").string


def test_every_atom(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(RAW_APP, "--access-log-format", FULL)
    mark = srv.mark()
    with Conn(srv) as c:
        c.send(build_request("GET", "/sleep?t=0.2", headers=[("x-trace", "abc"), ("referer", "http://r/"),
                                                              ("user-agent", "ua/1")]))
        r = c.read_response()
        port = c.local_port
    assert r.status == 200 and r.body == b"slept 0.2"
    line = _line(srv, mark, r"GET /sleep")
    m = re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /sleep\?t=0\.2 HTTP/1\.1" GET /sleep '
        r'\[t=0\.2\] HTTP/1\.1 200 9 9 "http://r/" "ua/1" T=0 M=(\d+) D=(\d+) L=(\d+\.\d{6}) <(\d+)> \{abc\} '
        rf'\{{text/plain\}} 127\.0\.0\.1:{port}\|GET /sleep\?t=0\.2 HTTP/1\.1\|200\|-', line)
    assert m, line
    ms, us, secs, pid = int(m.group(1)), int(m.group(2)), float(m.group(3)), int(m.group(4))
    # The duration covers the app's 0.2 s sleep (asyncio may wake a few ms early); the units agree.
    assert 190 <= ms < 5000 and us // 1000 == ms and abs(secs - us / 1e6) < 1e-5
    assert pid == srv.pid
    # The default prefix is gone: the format is the whole line, as Gunicorn's.
    assert not line.startswith("INFO")


def test_bytes_count_streamed_and_empty_bodies(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(RAW_APP, "--access-log-format", '"%(r)s" %(s)s B=%(B)s b=%(b)s')
    for target, method, expect in [
        ("/stream?n=7", "GET", 'GET /stream?n=7 HTTP/1.1" 200 B=7168 b=7168'),
        ("/big?size=300000&chunked=1", "GET", 'GET /big?size=300000&chunked=1 HTTP/1.1" 200 B=300000 b=300000'),
        ("/status/204", "GET", 'GET /status/204 HTTP/1.1" 204 B=0 b=-'),
        ("/nope", "POST", 'POST /nope HTTP/1.1" 404 B='),
    ]:
        mark = srv.mark()
        r = request(srv, method, target)
        assert r.status in (200, 204, 404)
        line = _line(srv, mark, re.escape(f"{method} {target.split('?')[0]}"))
        assert expect in line, line
        if method == "POST":  # whatever the app sent, B and the response body agree
            assert line.endswith(f"B={len(r.body)} b={len(r.body)}"), line


def test_incomplete_response_and_app_error_are_logged(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(RAW_APP, "--access-log-format", '"%(r)s" %(s)s %(B)s')
    mark = srv.mark()
    # The app raises after sending 7 bytes: one line, with what was sent.
    with Conn(srv) as c:
        c.send(build_request("GET", "/raise-after"))
        c.read_until_close()
    assert _line(srv, mark, r"/raise-after").endswith('"GET /raise-after HTTP/1.1" 200 7')
    # An exception before the response: the server's 500 is the logged status.
    mark = srv.mark()
    assert request(srv, "GET", "/raise-before").status == 500
    assert _line(srv, mark, r"/raise-before").endswith('"GET /raise-before HTTP/1.1" 500 21')
    # The server still serves.
    assert request(srv, "GET", "/hello").status == 200


def test_limit_concurrency_rejection_is_logged(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(RAW_APP, "--limit-concurrency", "2", "--access-log-format", "%(s)s %(B)s %(U)s")
    with Conn(srv) as busy:  # with the second connection, the limit of 2 is reached
        mark = srv.mark()
        busy.send(build_request("GET", "/sleep?t=1"))
        srv.wait_for_line(r"sleep start", after=mark)
        assert request(srv, "GET", "/over").status == 503
        assert _line(srv, mark, r"/over$") == "503 19 /over"
        assert busy.read_response().status == 200


def test_env_vars_and_cppuvicorn_prefix_wins(cppuvicorn_servers):
    env = base_env({"UVICORN_ACCESS_LOG_FORMAT": "uv %(s)s", "CPPUVICORN_ACCESS_LOG_FORMAT": "cpp %(s)s %(U)s"})
    srv = cppuvicorn_servers.spawn(RAW_APP, env=env)
    mark = srv.mark()
    assert request(srv, "GET", "/hello").status == 200
    assert _line(srv, mark, r"/hello$") == "cpp 200 /hello"


def test_bad_format_is_a_usage_error(cppuvicorn_servers):
    out = subprocess.run([sys.executable, "-m", "cppuvicorn", RAW_APP, "--access-log-format", "%(h)s %(r"],
                         capture_output=True, text=True, timeout=30, cwd=REPO_DIR, env=base_env(),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "Invalid value for '--access-log-format'" in out.stderr and "not a usable format" in out.stderr


def test_no_access_log_wins_over_a_format(cppuvicorn_servers):
    srv = cppuvicorn_servers.spawn(RAW_APP, "--no-access-log", "--access-log-format", "X %(s)s")
    mark = srv.mark()
    assert request(srv, "GET", "/raise-before").status == 500
    srv.wait_for_line(r"^RuntimeError: boom before start$", after=mark)
    assert not any(line.startswith("X ") for line in srv.log_lines(after=mark))


def test_log_config_formatter_sees_uvicorn_fields(cppuvicorn_servers, tmp_path):
    """A --log-config written for Uvicorn's access formatter keeps working with a format: its
    client_addr / request_line / status_code fields are filled, %(message)s is the format."""
    cfg = tmp_path / "log.json"
    cfg.write_text("""{
      "version": 1, "disable_existing_loggers": false,
      "formatters": {"access": {"()": "cppuvicorn.logging.AccessFormatter", "use_colors": false,
                     "fmt": "ACC %(client_addr)s|%(request_line)s|%(status_code)s|%(message)s"},
                     "default": {"format": "%(levelname)s:     %(message)s"}},
      "handlers": {"access": {"class": "logging.StreamHandler", "formatter": "access",
                   "stream": "ext://sys.stdout"},
                   "default": {"class": "logging.StreamHandler", "formatter": "default",
                   "stream": "ext://sys.stderr"}},
      "loggers": {"uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": false},
                  "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": false}}
    }""")
    srv = cppuvicorn_servers.spawn(RAW_APP, "--log-config", str(cfg), "--access-log-format", "%(B)s bytes")
    mark = srv.mark()
    with Conn(srv) as c:
        r = c.request("GET", "/status/418")
        port = c.local_port
    line = _line(srv, mark, r"^ACC ")
    assert line == f"ACC 127.0.0.1:{port}|GET /status/418 HTTP/1.1|418 I'm a Teapot|{len(r.body)} bytes", line


@pytest.mark.parametrize("target", ["/scope/a@b;c=d:e,f", "/scope/x%2Fy%41~'!*()", "/scope/%E2%82%AC?q=%22&r=1"])
def test_default_line_path_matches_uvicorn(servers, target):
    """The default access line names the path as the newest Uvicorn does (raw, not re-quoted)."""
    def run(s):
        srv = s.get()
        mark = srv.mark()
        with Conn(srv) as c:
            c.send(build_request("GET", target))
            c.read_response()
        return norm_log_line(srv.wait_for_line(r' - "GET /scope', after=mark, stream="stdout").string)

    servers.compare(run)
