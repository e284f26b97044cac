"""The image's HEALTHCHECK: GET http://127.0.0.1:<port><HEALTHCHECK_PATH>, healthy on any status
below 500 (a 404 still proves the server answers; a 503 from --limit-concurrency does not).

The port is the server's: CPPUVICORN_PORT, else UVICORN_PORT, else 8000. Exit 0 healthy, 1 not.
Standard library only, so it runs in the slim image without curl.
"""

from __future__ import annotations

import http.client
import os
import sys


def main() -> int:
    port = int(os.environ.get("CPPUVICORN_PORT") or os.environ.get("UVICORN_PORT") or 8000)
    path = os.environ.get("HEALTHCHECK_PATH") or "/"
    timeout = float(os.environ.get("HEALTHCHECK_TIMEOUT") or 2)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path, headers={"User-Agent": "cppuvicorn-healthcheck"})
        status = conn.getresponse().status
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        print(f"unhealthy: GET {path} on port {port}: {exc}", file=sys.stderr)
        return 1
    if status >= 500:
        print(f"unhealthy: GET {path} on port {port} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
