// SPDX-License-Identifier: BSD-3-Clause
// Supervisor: the parent process of `--workers N`. It binds the listening socket once, starts
// N worker processes that inherit it, watches their event-loop heartbeats, replaces workers
// that die or whose loop is blocked, drains them on SIGINT/SIGTERM, restarts them one at a
// time on SIGHUP and resizes the pool on SIGTTIN/SIGTTOU. It never imports the application
// (it is plain C++ on libuv). No Python here.
#pragma once

#include <string>
#include <vector>

namespace cppuvicorn::cli {

struct SupervisorOptions {
    int workers = 2;
    std::string host = "127.0.0.1";
    int port = 8000;
    std::string uds;  // bind a UNIX socket instead of host:port
    int fd = -1;      // use this already-open listening socket instead
    int backlog = 2048;
    double healthcheck_timeout = 5.0;  // seconds without a heartbeat → blocked loop
    double graceful_timeout = -1.0;    // seconds after SIGTERM before SIGKILL (<0: wait)
    double drain = 0.0;                // seconds to keep serving after SIGTERM
    std::string scheme = "http";
    bool log_info = true;   // --log-level info or lower
    int metrics_port = -1;  // serve Prometheus metrics here (<0: off)
    std::string metrics_host = "127.0.0.1";
    std::vector<std::string> worker_argv;  // the command that starts one worker
};

inline constexpr long kMaxWorkers = 4096;

// Parses `--workers N --host H … -- worker argv…`. Returns an error message, or "" on success;
// on success every number is whole, in range and finite (ports 0–65535, 1 ≤ workers ≤
// kMaxWorkers, backlog ≥ 1, timeouts ≥ 0 and ≤ a million years except --graceful-timeout ≥ -1 and
// --metrics-port ≥ -1, where -1 means off), --scheme is http or https and a worker command follows
// `--`.
std::string parse_supervisor_args(const std::vector<std::string>& args, SupervisorOptions& out);

// Runs until every worker has stopped; returns the process exit code (0, or 3 when a worker
// failed to start).
int run_supervisor(const SupervisorOptions& options);

}  // namespace cppuvicorn::cli
