"""Run one single-process cppuvicorn with its metrics counters on, without the supervisor.

    python benchmarks/with_metrics_region.py -- python -m cppuvicorn APP --port P ...

`--metrics-port` always brings the supervisor along (it serves the endpoint), so a benchmark
of `--metrics-port` alone measures two things at once: the counters on the request path and
the worker running under the supervisor. This launcher isolates the first: it creates the same
shared-memory region the supervisor would (core/metrics.hpp's layout), hands it to the server
through the environment variables a supervised worker reads (CPPUVICORN_METRICS_FD/_SLOT), and
runs the server as its child. When the server exits (SIGTERM/SIGINT are passed on), it prints
how many requests the slot counted, so a run where the counters were not attached is visible.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys

# core/metrics.hpp: MetricsHeader (64-byte aligned) then kMetricsMaxSlots slots of
# kMetricCount 64-bit values, each slot 64-byte aligned.
MAGIC = 0x6370707576696D31
MAX_SLOTS = 256
METRIC_COUNT = 16 + 15  # kDurationBucket0 + kDurationBucketCount
SLOT_SIZE = (METRIC_COUNT * 8 + 63) // 64 * 64
HEADER_SIZE = 64
REGION_SIZE = HEADER_SIZE + MAX_SLOTS * SLOT_SIZE
REQUESTS_STARTED = 5  # kRequestsStarted


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: with_metrics_region.py -- COMMAND...")
    fd = os.memfd_create("cppuvicorn-metrics", 0)  # inherited by the child
    os.ftruncate(fd, REGION_SIZE)
    region = mmap.mmap(fd, REGION_SIZE)
    region[:24] = struct.pack("<QQQ", MAGIC, MAX_SLOTS, SLOT_SIZE)
    env = dict(os.environ, CPPUVICORN_METRICS_FD=str(fd), CPPUVICORN_METRICS_SLOT="0")
    child = subprocess.Popen(args, env=env, pass_fds=(fd,))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    rc = child.wait()
    (started,) = struct.unpack_from("<Q", region, HEADER_SIZE + REQUESTS_STARTED * 8)
    print(f"with_metrics_region: the worker's slot counted {started} requests", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
