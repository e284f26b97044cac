"""The ``cppuvicorn`` command line and ``run()``: the same options and environment variables as Uvicorn.

Every option can be set as ``UVICORN_<NAME>`` (as with Uvicorn) or ``CPPUVICORN_<NAME>``, which
wins when both are set. ``<NAME>`` is the parameter name, e.g. ``UVICORN_RELOAD_DIRS`` for
``--reload-dir`` and ``UVICORN_HEADERS`` for ``--header``.
"""

from __future__ import annotations

import logging
import os
import platform
import ssl
import sys
from collections.abc import Callable
from configparser import RawConfigParser
from typing import IO, Any, get_args

import click

from cppuvicorn import __version__
from cppuvicorn.config import (
    INTERFACES,
    LIFESPAN,
    LOG_LEVELS,
    NOT_IMPLEMENTED,
    SSL_PROTOCOL_VERSION,
    STARTUP_FAILURE,
    Config,
    HTTPProtocolType,
    InterfaceType,
    LifespanType,
    LoopFactoryType,
    WSProtocolType,
)
from cppuvicorn.logging import LOGGING_CONFIG
from cppuvicorn.server import Server

logger = logging.getLogger("uvicorn.error")


class _Option(click.Option):
    """An option that also reads ``CPPUVICORN_<NAME>`` before click's ``UVICORN_<NAME>`` auto envvar."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Not for --version: images commonly set CPPUVICORN_VERSION to pin the package.
        if self.envvar is None and self.expose_value and self.name:
            self.envvar = f"CPPUVICORN_{self.name.upper()}"


def option(*param_decls: str, **attrs: Any) -> Callable[[Any], Any]:
    return click.option(*param_decls, cls=_Option, **attrs)


def _metavar(choices: Any) -> str:
    return f"[{'|'.join(key for key in get_args(choices) if key != 'none')}]"


def print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(
        f"Running cppuvicorn {__version__} with {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.system()}"
    )
    ctx.exit()


def _check_access_log_format(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        from cppuvicorn.logging import access_log_format_error

        error = access_log_format_error(value)
        if error is not None:
            raise click.BadParameter(f"{value!r} is not a usable format: {error}")
    return value


def _parse_headers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, str]]:
    headers = []
    for header in values:
        name, sep, value = header.partition(":")
        if not sep:
            raise click.BadParameter(f"{header!r} is not a Name:Value pair.", ctx=ctx, param=param)
        headers.append((name, value))
    return headers


@click.command(context_settings={"auto_envvar_prefix": "UVICORN"})
@click.argument("app", envvar=["CPPUVICORN_APP", "UVICORN_APP"])
@option("--host", type=str, default="127.0.0.1", show_default=True, help="Bind socket to this host.")
@option(
    "--port",
    type=int,
    default=8000,
    show_default=True,
    help="Bind socket to this port. If 0, an available port will be picked.",
)
@option("--uds", type=str, default=None, help="Bind to a UNIX domain socket.")
@option("--fd", type=int, default=None, help="Bind to socket from this file descriptor.")
@option("--reload", is_flag=True, default=False, help="Enable auto-reload.")
@option(
    "--reload-dir",
    "reload_dirs",
    multiple=True,
    type=click.Path(exists=True),
    help="Set reload directories explicitly, instead of using the current working directory.",
)
@option(
    "--reload-include",
    "reload_includes",
    multiple=True,
    help="Set glob patterns to include while watching for files. Includes '*.py' by default; these defaults can "
    "be overridden with `--reload-exclude`. This option has no effect unless watchfiles is installed.",
)
@option(
    "--reload-exclude",
    "reload_excludes",
    multiple=True,
    help="Set glob patterns to exclude while watching for files. Includes '.*, .py[cod], .sw.*, ~*' by default; "
    "these defaults can be overridden with `--reload-include`. This option has no effect unless watchfiles is "
    "installed.",
)
@option(
    "--reload-delay",
    type=float,
    default=0.25,
    show_default=True,
    help="Delay between previous and next check if application needs to be. Defaults to 0.25s.",
)
@option(
    "--workers",
    type=int,
    default=None,
    help="Number of worker processes. Defaults to the $WEB_CONCURRENCY environment variable if available, or 1. "
    "Not valid with --reload.",
)
@option(
    "--metrics-port",
    type=int,
    default=None,
    help="cppuvicorn: serve Prometheus metrics (all workers summed) at http://METRICS_HOST:PORT/metrics "
    "from the supervisor process; with it the server runs under the supervisor even with one worker. "
    "Off by default.",
)
@option(
    "--metrics-host",
    type=str,
    default="127.0.0.1",
    show_default=True,
    help="cppuvicorn: the address the --metrics-port endpoint listens on.",
)
@option(
    "--loop",
    type=str,
    metavar=_metavar(LoopFactoryType),
    default="auto",
    show_default=True,
    help="Event loop factory implementation.",
)
@option(
    "--http",
    type=str,
    metavar=_metavar(HTTPProtocolType),
    default="auto",
    show_default=True,
    help="HTTP protocol implementation. All are served by the native core.",
)
@option(
    "--http2",
    is_flag=True,
    default=False,
    show_default=True,
    help="Enable HTTP/2 support. Not implemented yet.",
)
@option(
    "--ws",
    type=str,
    metavar=_metavar(WSProtocolType),
    default="auto",
    show_default=True,
    help="WebSocket protocol implementation. All are served by the native core.",
)
@option("--ws-max-size", type=int, default=16777216, show_default=True, help="WebSocket max size message in bytes")
@option(
    "--ws-max-queue",
    type=int,
    default=32,
    show_default=True,
    help="The maximum length of the WebSocket message queue.",
)
@option("--ws-ping-interval", type=float, default=20.0, show_default=True, help="WebSocket ping interval in seconds.")
@option("--ws-ping-timeout", type=float, default=20.0, show_default=True, help="WebSocket ping timeout in seconds.")
@option(
    "--ws-per-message-deflate",
    type=bool,
    default=True,
    show_default=True,
    help="WebSocket per-message-deflate compression",
)
@option(
    "--lifespan",
    type=click.Choice(LIFESPAN),
    default="auto",
    show_default=True,
    help="Lifespan implementation.",
)
@option(
    "--interface",
    type=click.Choice(INTERFACES),
    default="auto",
    show_default=True,
    help="Select ASGI3, ASGI2, or WSGI as the application interface.",
)
@option("--env-file", type=click.Path(exists=True), default=None, help="Environment configuration file.")
@option(
    "--log-config",
    type=click.Path(exists=True),
    default=None,
    help="Logging configuration file. Supported formats: .ini, .json, .yaml.",
)
@option(
    "--log-level",
    type=click.Choice(list(LOG_LEVELS)),
    default=None,
    help="Log level. [default: info]",
)
@option("--access-log/--no-access-log", is_flag=True, default=True, help="Enable/Disable access log.")
@option(
    "--access-log-format",
    type=str,
    default=None,
    callback=_check_access_log_format,
    help="cppuvicorn: access-log line format with Gunicorn's atoms, logged when the response ends, e.g. "
    "'%(h)s \"%(r)s\" %(s)s %(B)s %(M)sms' (h client, r request line, s status, B body bytes, M/D/L duration "
    "in ms/us/s, {name}i request header, ...). Default: Uvicorn's line, logged when the response starts.",
)
@option("--use-colors/--no-use-colors", is_flag=True, default=None, help="Enable/Disable colorized logging.")
@option(
    "--proxy-headers/--no-proxy-headers",
    is_flag=True,
    default=True,
    help="Enable/Disable X-Forwarded-Proto, X-Forwarded-For to populate url scheme and remote address info.",
)
@option(
    "--server-header/--no-server-header",
    is_flag=True,
    default=True,
    help="Enable/Disable default Server header.",
)
@option(
    "--date-header/--no-date-header",
    is_flag=True,
    default=True,
    help="Enable/Disable default Date header.",
)
@option(
    "--forwarded-allow-ips",
    type=str,
    default=None,
    help="Comma separated list of IP Addresses, IP Networks, or literals (e.g. UNIX Socket path) to trust with "
    "proxy headers. Defaults to the $FORWARDED_ALLOW_IPS environment variable if available, or '127.0.0.1,::1'. "
    "The literal '*' means trust everything.",
)
@option(
    "--root-path",
    type=str,
    default="",
    help="Set the ASGI 'root_path' for applications submounted below a given URL path.",
)
@option(
    "--limit-concurrency",
    type=int,
    default=None,
    help="Maximum number of concurrent connections or tasks to allow, before issuing HTTP 503 responses.",
)
@option("--backlog", type=int, default=2048, help="Maximum number of connections to hold in backlog")
@option(
    "--limit-request-body",
    type=click.IntRange(min=0),
    default=None,
    help="cppuvicorn: maximum size in bytes of a request body. A larger Content-Length is answered 413 before "
    "the body is read; a chunked body is cut off with 413 when it goes over. Default: no limit.",
)
@option(
    "--limit-max-requests",
    type=int,
    default=None,
    help="Maximum number of requests to service before terminating the process.",
)
@option(
    "--limit-max-requests-jitter",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Maximum jitter to add to limit_max_requests. Staggers worker restarts to avoid all workers restarting "
    "simultaneously.",
)
@option(
    "--timeout-keep-alive",
    type=int,
    default=5,
    show_default=True,
    help="Close Keep-Alive connections if no new data is received within this timeout (in seconds).",
)
@option(
    "--timeout-request-head",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="cppuvicorn: close a connection whose request line and headers are not complete within this many "
    "seconds of their first byte (a 408 is sent once a request line has started). 0 disables it.",
)
@option(
    "--timeout-body-read",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="cppuvicorn: close a connection that sends no byte of a request body for this many seconds while "
    "the server is reading it (408 if no response has started; the app receives http.disconnect). "
    "0 disables it.",
)
@option(
    "--timeout-graceful-shutdown",
    type=int,
    default=None,
    help="Maximum number of seconds to wait for graceful shutdown.",
)
@option(
    "--timeout-drain",
    type=float,
    default=None,
    help="cppuvicorn: after SIGTERM, keep serving (and accepting) for this many seconds before "
    "shutting down, so a load balancer can stop routing here first (Kubernetes endpoint removal).",
)
@option(
    "--timeout-worker-healthcheck",
    type=int,
    default=5,
    show_default=True,
    help="Maximum number of seconds to wait for a worker to respond to a healthcheck.",
)
@option("--ssl-keyfile", type=str, default=None, help="SSL key file")
@option("--ssl-certfile", type=str, default=None, help="SSL certificate file")
@option("--ssl-keyfile-password", type=str, default=None, help="SSL keyfile password")
@option(
    "--ssl-version",
    type=int,
    default=int(SSL_PROTOCOL_VERSION),
    show_default=True,
    help="SSL version to use (see stdlib ssl module's)",
)
@option(
    "--ssl-cert-reqs",
    type=int,
    default=int(ssl.CERT_NONE),
    show_default=True,
    help="Whether client certificate is required (see stdlib ssl module's)",
)
@option("--ssl-ca-certs", type=str, default=None, help="CA certificates file")
@option(
    "--ssl-ciphers",
    type=str,
    default=None,
    help="Ciphers to use (see stdlib ssl module's). Defaults to OpenSSL's safe defaults.",
)
@option(
    "--header",
    "headers",
    multiple=True,
    callback=_parse_headers,
    help="Specify custom default HTTP response headers as a Name:Value pair",
)
@option(
    "--version",
    is_flag=True,
    callback=print_version,
    expose_value=False,
    is_eager=True,
    help="Display the cppuvicorn version and exit.",
)
@option(
    "--app-dir",
    default="",
    show_default=True,
    help="Look for APP in the specified directory, by adding this to the PYTHONPATH. Defaults to the current "
    "working directory.",
)
@option(
    "--h11-max-incomplete-event-size",
    "h11_max_incomplete_event_size",
    type=int,
    default=None,
    help="Maximum size in bytes of a request's line and headers (the native core applies it to every HTTP "
    "implementation). Defaults to 65536.",
)
@option(
    "--reset-contextvars",
    is_flag=True,
    default=False,
    show_default=True,
    help="Run each ASGI request in a fresh contextvars.Context. Hides context set in the lifespan.",
)
@option(
    "--factory",
    is_flag=True,
    default=False,
    show_default=True,
    help="Treat APP as an application factory, i.e. a () -> <ASGI app> callable.",
)
def main(app: str, log_config: str | None, reload_dirs: tuple[str, ...], **options: Any) -> None:
    run(
        app,
        log_config=LOGGING_CONFIG if log_config is None else log_config,
        reload_dirs=reload_dirs or None,
        reload_includes=options.pop("reload_includes") or None,
        reload_excludes=options.pop("reload_excludes") or None,
        **options,
    )


def run(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    uds: str | None = None,
    fd: int | None = None,
    loop: LoopFactoryType | str = "auto",
    http: Any = "auto",
    http2: bool = False,
    ws: Any = "auto",
    ws_max_size: int = 16777216,
    ws_max_queue: int = 32,
    ws_ping_interval: float | None = 20.0,
    ws_ping_timeout: float | None = 20.0,
    ws_per_message_deflate: bool = True,
    lifespan: LifespanType = "auto",
    interface: InterfaceType = "auto",
    reload: bool = False,
    reload_dirs: list[str] | str | None = None,
    reload_includes: list[str] | str | None = None,
    reload_excludes: list[str] | str | None = None,
    reload_delay: float = 0.25,
    workers: int | None = None,
    env_file: str | os.PathLike[str] | None = None,
    log_config: dict[str, Any] | str | os.PathLike[str] | RawConfigParser | IO[Any] | None = LOGGING_CONFIG,
    log_level: str | int | None = None,
    access_log: bool = True,
    access_log_format: str | None = None,
    proxy_headers: bool = True,
    server_header: bool = True,
    date_header: bool = True,
    forwarded_allow_ips: list[str] | str | None = None,
    root_path: str = "",
    limit_concurrency: int | None = None,
    backlog: int = 2048,
    limit_max_requests: int | None = None,
    limit_max_requests_jitter: int = 0,
    timeout_keep_alive: int = 5,
    timeout_graceful_shutdown: int | None = None,
    timeout_drain: float | None = None,
    timeout_worker_healthcheck: int = 5,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    ssl_keyfile: str | os.PathLike[str] | None = None,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile_password: str | None = None,
    ssl_version: int = SSL_PROTOCOL_VERSION,
    ssl_cert_reqs: int = ssl.CERT_NONE,
    ssl_ca_certs: str | os.PathLike[str] | None = None,
    ssl_ciphers: str | None = None,
    ssl_context_factory: Callable[..., ssl.SSLContext] | None = None,
    headers: list[tuple[str, str]] | None = None,
    use_colors: bool | None = None,
    app_dir: str | None = None,
    factory: bool = False,
    h11_max_incomplete_event_size: int | None = None,
    reset_contextvars: bool = False,
    timeout_request_head: float = 10.0,
    timeout_body_read: float = 30.0,
    limit_request_body: int | None = None,
) -> None:
    """Serve ``app`` (an ASGI application or a "module:attr" import string) until stopped.

    Exits with code 3 if a single-process server never started, like ``uvicorn.run``.
    """
    if app_dir is not None:
        sys.path.insert(0, app_dir)

    config = Config(
        app,
        host=host,
        port=port,
        uds=uds,
        fd=fd,
        loop=loop,
        http=http,
        http2=http2,
        ws=ws,
        ws_max_size=ws_max_size,
        ws_max_queue=ws_max_queue,
        ws_ping_interval=ws_ping_interval,
        ws_ping_timeout=ws_ping_timeout,
        ws_per_message_deflate=ws_per_message_deflate,
        lifespan=lifespan,
        interface=interface,
        reload=reload,
        reload_dirs=reload_dirs,
        reload_includes=reload_includes,
        reload_excludes=reload_excludes,
        reload_delay=reload_delay,
        workers=workers,
        env_file=env_file,
        log_config=log_config,
        log_level=log_level,
        access_log=access_log,
        access_log_format=access_log_format,
        proxy_headers=proxy_headers,
        server_header=server_header,
        date_header=date_header,
        forwarded_allow_ips=forwarded_allow_ips,
        root_path=root_path,
        limit_concurrency=limit_concurrency,
        backlog=backlog,
        limit_max_requests=limit_max_requests,
        limit_max_requests_jitter=limit_max_requests_jitter,
        timeout_keep_alive=timeout_keep_alive,
        timeout_request_head=timeout_request_head,
        timeout_body_read=timeout_body_read,
        limit_request_body=limit_request_body,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        timeout_drain=timeout_drain,
        timeout_worker_healthcheck=timeout_worker_healthcheck,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        ssl_keyfile=ssl_keyfile,
        ssl_certfile=ssl_certfile,
        ssl_keyfile_password=ssl_keyfile_password,
        ssl_version=ssl_version,
        ssl_cert_reqs=ssl_cert_reqs,
        ssl_ca_certs=ssl_ca_certs,
        ssl_ciphers=ssl_ciphers,
        ssl_context_factory=ssl_context_factory,
        headers=headers,
        use_colors=use_colors,
        factory=factory,
        h11_max_incomplete_event_size=h11_max_incomplete_event_size,
        reset_contextvars=reset_contextvars,
    )
    config.reject_unsupported()

    if config.reload or config.workers > 1:
        if not isinstance(app, str):
            logger.warning("You must pass the application as an import string to enable 'reload' or 'workers'.")
            sys.exit(STARTUP_FAILURE)
    elif config.metrics_port is not None:
        # The metrics endpoint is the supervisor's: one worker runs under it too.
        if not isinstance(app, str):
            logger.warning("You must pass the application as an import string to enable 'metrics_port'.")
            sys.exit(STARTUP_FAILURE)
    else:
        config.load_app()

    use_workers = (config.workers > 1 or config.metrics_port is not None) and not config.should_reload

    server = Server(config=config)
    try:
        if config.should_reload:
            from cppuvicorn.reload import run_reloader

            run_reloader(config)
        elif use_workers:
            _run_workers(config)
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if config.uds and os.path.exists(config.uds):
            os.remove(config.uds)

    if not server.started and not use_workers and not config.should_reload:
        sys.exit(STARTUP_FAILURE)


def _run_workers(config: Config) -> None:
    try:
        from cppuvicorn.supervisor import run_workers
    except ModuleNotFoundError as exc:
        if exc.name != "cppuvicorn.supervisor":
            raise
        logger.error("Multiple workers (--workers %d) are not implemented yet in cppuvicorn.", config.workers)
        sys.exit(NOT_IMPLEMENTED)
    run_workers(config)


if __name__ == "__main__":
    main()
