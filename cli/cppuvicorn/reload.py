"""``--reload``: restart the server process when watched files change, as Uvicorn's reloaders do.

This process (the reloader) binds the socket once, never imports the application, and runs one
server process at a time: ``python -m cppuvicorn._worker`` with this ``Config`` (pickled, like
``--workers`` hands it over) and the listening socket inherited under its own fd number. Between
two server processes the socket stays open here, so connections wait in its backlog.

Changes are seen with watchfiles when it is importable ("WatchFiles": ``--reload-include`` /
``--reload-exclude`` apply), else by polling the mtime of ``*.py`` files every ``--reload-delay``
seconds ("StatReload"). Like Uvicorn, a server process that exits (e.g. 3: the app failed to
import) is not restarted until the next change, and SIGINT / SIGTERM stop it and exit 0.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from cppuvicorn.config import Config
from cppuvicorn.logging import ansi_style
from cppuvicorn.supervisor import CONFIG_ENV

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

logger = logging.getLogger("uvicorn.error")


class BaseReload:
    reloader_name = ""

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.should_exit = threading.Event()
        self.pid = os.getpid()
        self.process: subprocess.Popen[bytes] | None = None
        # What the server process receives, as under --workers: the config and our sys.path
        # (--app-dir; multiprocessing's spawn gives Uvicorn's children their parent's sys.path).
        # A restart must be quick: no --timeout-drain in the server process.
        config.timeout_drain = None
        self._payload = base64.b64encode(pickle.dumps((config, sys.path))).decode("ascii")

    def signal_handler(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit.set()

    def run(self) -> None:
        self.startup()
        while not self.should_exit.is_set():
            changes = self.should_restart()
            if changes and not self.should_exit.is_set():
                logger.warning(
                    "%s detected changes in %s. Reloading...",
                    self.reloader_name,
                    ", ".join(map(_display_path, changes)),
                )
                self.restart()
        self.shutdown()

    def pause(self) -> bool:
        """Wait ``--reload-delay`` seconds; True if we are to stop."""
        return self.should_exit.wait(self.config.reload_delay)

    def startup(self) -> None:
        color = "Started reloader process [{}] using {}".format(
            ansi_style(str(self.pid), fg="cyan", bold=True), ansi_style(self.reloader_name, fg="cyan", bold=True)
        )
        logger.info(
            "Started reloader process [%d] using %s", self.pid, self.reloader_name, extra={"color_message": color}
        )
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self.signal_handler)
        self.start_process()

    def start_process(self) -> None:
        fd = self.sock.fileno()
        env = dict(os.environ)
        env[CONFIG_ENV] = self._payload
        env["CPPUVICORN_LISTEN_FD"] = str(fd)
        env.pop("CPPUVICORN_HEARTBEAT_FD", None)  # no heartbeat: nothing here watches the loop
        sys.stdout.flush()
        sys.stderr.flush()
        self.process = subprocess.Popen([sys.executable, "-m", "cppuvicorn._worker"], env=env, pass_fds=(fd,))

    def stop_process(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: a graceful shutdown; a no-op if it already exited
            self.process.wait()

    def restart(self) -> None:
        self.stop_process()
        self.start_process()

    def shutdown(self) -> None:
        self.stop_process()
        self.sock.close()
        color = "Stopping reloader process [{}]".format(ansi_style(str(self.pid), fg="cyan", bold=True))
        logger.info("Stopping reloader process [%d]", self.pid, extra={"color_message": color})

    def should_restart(self) -> list[Path] | None:
        raise NotImplementedError


class StatReload(BaseReload):
    reloader_name = "StatReload"

    def __init__(self, config: Config, sock: socket.socket) -> None:
        super().__init__(config, sock)
        self.mtimes: dict[Path, float] = {}
        if config.reload_excludes or config.reload_includes:
            logger.warning("--reload-include and --reload-exclude have no effect unless watchfiles is installed.")

    def should_restart(self) -> list[Path] | None:
        if self.pause():
            return None
        for file in self.iter_py_files():
            try:
                mtime = file.stat().st_mtime
            except OSError:
                continue
            old_time = self.mtimes.get(file)
            if old_time is None:
                self.mtimes[file] = mtime
            elif mtime > old_time:
                return [file]
        return None

    def restart(self) -> None:
        self.mtimes = {}
        super().restart()

    def iter_py_files(self) -> Iterator[Path]:
        for reload_dir in self.config.reload_dirs:
            for path in list(reload_dir.rglob("*.py")):
                yield path.resolve()


class FileFilter:
    """Uvicorn's watchfiles filter: ``*.py`` plus ``--reload-include`` patterns, minus dotfiles,
    compiled Python files, editor swap files and ``--reload-exclude`` patterns or directories."""

    def __init__(self, config: Config) -> None:
        self.includes = list({*(p for p in ["*.py"] if p not in config.reload_excludes), *config.reload_includes})
        excludes = [p for p in [".*", ".py[cod]", ".sw.*", "~*"] if p not in config.reload_includes]
        self.exclude_dirs: list[Path] = []
        for pattern in config.reload_excludes:
            try:
                is_dir = Path(pattern).is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                self.exclude_dirs.append(Path(pattern))
            else:
                excludes.append(pattern)
        self.excludes = list(set(excludes))

    def __call__(self, path: Path) -> bool:
        for include_pattern in self.includes:
            if path.match(include_pattern):
                if str(path).endswith(include_pattern):
                    return True
                if any(exclude_dir in path.parents for exclude_dir in self.exclude_dirs):
                    return False
                return not any(path.match(exclude_pattern) for exclude_pattern in self.excludes)
        return False


class WatchFilesReload(BaseReload):
    reloader_name = "WatchFiles"

    def __init__(self, config: Config, sock: socket.socket) -> None:
        from watchfiles import watch

        super().__init__(config, sock)
        self.watch_filter = FileFilter(config)
        self.watcher = watch(
            *config.reload_dirs,
            watch_filter=None,
            stop_event=self.should_exit,
            yield_on_timeout=True,  # come back regularly even without changes
            ignore_permission_denied=True,
        )

    def should_restart(self) -> list[Path] | None:
        if self.pause():
            return None
        changes = next(self.watcher, None)  # None: the watcher stopped (should_exit is set)
        if not changes:
            return None
        return [path for path in {Path(change[1]) for change in changes} if self.watch_filter(path)]


def run_reloader(config: Config) -> None:
    """Bind the socket, then serve through restarted server processes until SIGINT / SIGTERM."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        reloader_class: type[BaseReload] = StatReload
    else:
        reloader_class = WatchFilesReload
    sock = config.bind_socket()
    reloader_class(config, sock).run()


def _display_path(path: Path) -> str:
    try:
        return f"'{path.relative_to(Path.cwd())}'"
    except ValueError:
        return f"'{path}'"
