"""One worker process under the native supervisor (see ``cppuvicorn.supervisor``)."""

from __future__ import annotations

import base64
import faulthandler
import os
import pickle
import signal
import socket
import sys

from cppuvicorn.config import STARTUP_FAILURE
from cppuvicorn.server import Server
from cppuvicorn.supervisor import CONFIG_ENV


def main() -> None:
    config, sys.path[:] = pickle.loads(base64.b64decode(os.environ.pop(CONFIG_ENV)))
    # The supervisor sends SIGUSR1 when our event loop stopped answering: print every thread's
    # stack (faulthandler writes from the signal handler, even while the loop is blocked).
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    config.configure_logging()
    fd = int(os.environ["CPPUVICORN_LISTEN_FD"])
    sock = socket.socket(fileno=fd)
    server = Server(config=config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # Ctrl+C in a terminal reaches the whole process group: after its graceful shutdown the
        # worker re-raises SIGINT (as Uvicorn's Server does); a clean stop, no traceback.
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
