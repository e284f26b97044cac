"""``--workers N``: hand over to the native supervisor, which never imports the application.

The supervisor (``cppuvicorn-supervisor``, C++ on libuv, built from ``cli/src``) binds the
socket once and starts N workers that inherit it as fd 3. Each worker runs
``python -m cppuvicorn._worker`` with this ``Config`` (pickled, as Uvicorn's spawned children
receive theirs), serves from the inherited socket and writes a heartbeat byte to fd 4 from its
event loop, so a loop blocked by a CPU-bound or ``time.sleep`` handler is noticed, its stack
printed (faulthandler on SIGUSR1) and the worker replaced.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import sys
from pathlib import Path

from cppuvicorn.config import Config

logger = logging.getLogger("uvicorn.error")

CONFIG_ENV = "CPPUVICORN_WORKER_CONFIG"


def supervisor_path() -> Path:
    return Path(__file__).with_name("cppuvicorn-supervisor")


def supervisor_argv(config: Config) -> list[str]:
    argv = [str(supervisor_path()), "--workers", str(config.workers), "--backlog", str(config.backlog),
            "--healthcheck-timeout", str(config.timeout_worker_healthcheck),
            "--graceful-timeout", str(-1 if config.timeout_graceful_shutdown is None
                                      else config.timeout_graceful_shutdown),
            "--drain", str(config.timeout_drain or 0),
            "--scheme", "https" if config.is_ssl else "http"]
    if config.fd is not None:
        argv += ["--fd", str(config.fd)]
    elif config.uds:
        argv += ["--uds", config.uds]
    else:
        argv += ["--host", config.host or "0.0.0.0", "--port", str(config.port)]
    if config.metrics_port is not None:
        argv += ["--metrics-port", str(config.metrics_port), "--metrics-host", config.metrics_host]
    return argv + ["--", sys.executable, "-m", "cppuvicorn._worker"]


def run_workers(config: Config) -> None:
    """Replace this process with the supervisor (exec: signals reach it directly)."""
    path = supervisor_path()
    if not path.exists():
        logger.error("The cppuvicorn supervisor binary is missing (%s): reinstall cppuvicorn.", path)
        sys.exit(1)
    argv = supervisor_argv(config)
    config.timeout_drain = None  # the supervisor drains; its workers stop when told
    # The workers get this process's sys.path too (--app-dir, as multiprocessing's spawn gives
    # Uvicorn's children their parent's sys.path).
    os.environ[CONFIG_ENV] = base64.b64encode(pickle.dumps((config, sys.path))).decode("ascii")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
