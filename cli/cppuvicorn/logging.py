"""Log formatters and the default logging configuration.

The logger names are Uvicorn's (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``,
``uvicorn.asgi``) so that existing logging configurations keep working unchanged.
"""

from __future__ import annotations

import http
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from copy import copy
from typing import Any, Literal
from urllib.parse import quote

TRACE_LOG_LEVEL = 5

_ANSI_COLORS = {
    "black": 30,
    "red": 31,
    "green": 32,
    "yellow": 33,
    "blue": 34,
    "magenta": 35,
    "cyan": 36,
    "white": 37,
    "bright_black": 90,
    "bright_red": 91,
    "bright_green": 92,
    "bright_yellow": 93,
    "bright_blue": 94,
    "bright_magenta": 95,
    "bright_cyan": 96,
    "bright_white": 97,
}


def ansi_style(text: str, fg: str | None = None, bold: bool = False) -> str:
    """Wrap ``text`` in ANSI escape codes for a foreground colour and/or bold."""
    prefix = f"\033[{_ANSI_COLORS[fg]}m" if fg is not None else ""
    if bold:
        prefix += "\033[1m"
    return f"{prefix}{text}\033[0m"


class ColourizedFormatter(logging.Formatter):
    """Adds ``%(levelprefix)s`` ("INFO:     ") and optional colours.

    When colours are on, a record's ``extra={"color_message": ...}`` replaces its message.
    """

    level_name_colors: dict[int, str] = {
        TRACE_LOG_LEVEL: "blue",
        logging.DEBUG: "cyan",
        logging.INFO: "green",
        logging.WARNING: "yellow",
        logging.ERROR: "red",
        logging.CRITICAL: "bright_red",
    }

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        use_colors: bool | None = None,
    ) -> None:
        self.use_colors = use_colors if use_colors in (True, False) else sys.stdout.isatty()
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)

    def color_level_name(self, level_name: str, level_no: int) -> str:
        fg = self.level_name_colors.get(level_no)
        return ansi_style(level_name, fg=fg) if fg else str(level_name)

    def should_use_colors(self) -> bool:
        return True

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = copy(record)
        levelname = record.levelname
        separator = " " * (8 - len(levelname))
        if self.use_colors:
            levelname = self.color_level_name(levelname, record.levelno)
            if "color_message" in record.__dict__:
                record.msg = record.__dict__["color_message"]
                record.__dict__["message"] = record.getMessage()
        record.__dict__["levelprefix"] = levelname + ":" + separator
        return super().formatMessage(record)


class DefaultFormatter(ColourizedFormatter):
    def should_use_colors(self) -> bool:
        return sys.stderr.isatty()


class AccessFormatter(ColourizedFormatter):
    """Formats access records whose args are
    ``(client_addr, method, full_path, http_version, status_code)``."""

    status_code_colours: dict[int, str] = {
        1: "bright_white",
        2: "green",
        3: "yellow",
        4: "red",
        5: "bright_red",
    }

    def get_status_code(self, status_code: int) -> str:
        try:
            phrase = http.HTTPStatus(status_code).phrase
        except ValueError:
            phrase = ""
        status_and_phrase = f"{status_code} {phrase}"
        fg = self.status_code_colours.get(status_code // 100)
        if self.use_colors and fg:
            return ansi_style(status_and_phrase, fg=fg)
        return status_and_phrase

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = copy(record)
        if isinstance(record.args, AccessAtoms):  # --access-log-format
            atoms = record.args
            client_addr, request_line, status_code = atoms["client_addr"], atoms["r"], atoms.status
            if self.use_colors:
                request_line = ansi_style(request_line, bold=True)
            record.__dict__.update(
                client_addr=client_addr, request_line=request_line, status_code=self.get_status_code(status_code)
            )
            return super().formatMessage(record)
        client_addr, method, full_path, http_version, status_code = record.args  # type: ignore[misc]
        request_line = f"{method} {full_path} HTTP/{http_version}"
        if self.use_colors:
            request_line = ansi_style(request_line, bold=True)
        record.__dict__.update(
            client_addr=client_addr,
            request_line=request_line,
            status_code=self.get_status_code(int(status_code)),  # type: ignore[arg-type]
        )
        return super().formatMessage(record)


def _header(headers: Any, name: bytes) -> str:
    for key, value in headers or ():
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return "-"


class AccessAtoms(Mapping[str, Any]):
    """The values an ``--access-log-format`` string can name, for one finished response.

    Gunicorn's atoms, so its ``access_log_format`` strings carry over unchanged: ``h`` remote
    address, ``l`` ``-``, ``u`` user (``-``), ``t`` time of the request, ``r`` request line,
    ``m`` method, ``U`` path, ``q`` query string, ``H`` protocol, ``s`` status, ``B`` body bytes,
    ``b`` body bytes or ``-``, ``f`` referer, ``a`` user agent, ``T`` seconds, ``M`` milliseconds,
    ``D`` microseconds, ``L`` decimal seconds, ``p`` process id, ``{name}i`` a request header,
    ``{name}o`` a response header, ``{name}e`` an environment variable; plus Uvicorn's names
    ``client_addr``, ``request_line`` and ``status_code``. Each is computed only when the format
    asks for it; an unknown name is ``-``, as in Gunicorn.
    """

    KEYS = (
        "h l u t r m U q H s B b f a T M D L p client_addr request_line status_code"
    ).split()

    __slots__ = ("scope", "status", "response_headers", "body_bytes", "duration_ns")

    def __init__(
        self, scope: dict[str, Any], status: int, response_headers: Any, body_bytes: int, duration_ns: int
    ) -> None:
        self.scope = scope
        self.status = status
        self.response_headers = response_headers
        self.body_bytes = body_bytes
        self.duration_ns = duration_ns

    def __len__(self) -> int:
        return len(self.KEYS)

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def _path(self) -> str:
        path = quote(self.scope.get("root_path", "") + self.scope.get("path", ""))
        query = self.scope.get("query_string", b"")
        return f"{path}?{query.decode('ascii', 'replace')}" if query else path

    def __getitem__(self, key: str) -> Any:  # noqa: C901 - one branch per atom
        scope = self.scope
        if key == "h":
            client = scope.get("client")
            return client[0] if client else "-"
        if key == "client_addr":
            client = scope.get("client")
            return f"{client[0]}:{client[1]}" if client else ""
        if key in ("r", "request_line"):
            return f"{scope.get('method', '-')} {self._path()} HTTP/{scope.get('http_version', '1.1')}"
        if key == "m":
            return scope.get("method", "-")
        if key == "U":
            return quote(scope.get("root_path", "") + scope.get("path", ""))
        if key == "q":
            return scope.get("query_string", b"").decode("ascii", "replace")
        if key == "H":
            return f"HTTP/{scope.get('http_version', '1.1')}"
        if key in ("s", "status_code"):
            return self.status
        if key == "B":
            return self.body_bytes
        if key == "b":
            return str(self.body_bytes) if self.body_bytes else "-"
        if key == "T":
            return self.duration_ns // 1_000_000_000
        if key == "M":
            return self.duration_ns // 1_000_000
        if key == "D":
            return self.duration_ns // 1_000
        if key == "L":
            return f"{self.duration_ns / 1e9:.6f}"
        if key == "t":
            return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(time.time() - self.duration_ns / 1e9))
        if key == "f":
            return _header(scope.get("headers"), b"referer")
        if key == "a":
            return _header(scope.get("headers"), b"user-agent")
        if key == "p":
            return f"<{os.getpid()}>"
        if key in ("l", "u"):
            return "-"
        if len(key) > 3 and key[0] == "{" and key[-2] == "}":
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                return _header(scope.get("headers"), name.lower().encode("latin-1"))
            if kind == "o":
                return _header(self.response_headers, name.lower().encode("latin-1"))
            if kind == "e":
                return os.environ.get(name, "-")
        return "-"


def access_log_format_error(fmt: str) -> str | None:
    """Why ``fmt`` cannot be used as an access-log format, or None when it can."""
    try:
        fmt % AccessAtoms({"type": "http", "headers": []}, 200, [], 0, 0)
    except (ValueError, TypeError, KeyError) as exc:
        return str(exc)
    return None


def timed_access_logger(logger: logging.Logger, fmt: str) -> Any:
    """The bridge's access-log callable for ``--access-log-format``: called once per finished
    response with ``(scope, status, response_headers, body_bytes, duration_ns)``."""
    info = logger.info

    def log(scope: dict[str, Any], status: int, headers: Any, body_bytes: int, duration_ns: int) -> None:
        info(fmt, AccessAtoms(scope, status, headers, body_bytes, duration_ns))

    return log


LOGGING_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {
            "()": "cppuvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        },
        "access": {
            "()": "cppuvicorn.logging.AccessFormatter",
            "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
        },
    },
    "handlers": {
        "default": {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "formatter": "access",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}
