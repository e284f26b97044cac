// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: the supervisor's option parser (cli/src/supervisor.cpp), which reads the
// argv the Python side builds for `cppuvicorn-supervisor`.
//
// Input: the argument vector, arguments separated by NUL bytes (a trailing piece counts, so
// empty arguments are reachable). Invariants: parsing is deterministic; a failure has a message
// naming the problem; a success holds only values the supervisor can use (whole numbers in
// range, finite timeouts, a known scheme, a worker command); and its options, written back as
// arguments, parse to exactly the same options.
#include "cli/src/supervisor.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

using cppuvicorn::cli::kMaxWorkers;
using cppuvicorn::cli::parse_supervisor_args;
using cppuvicorn::cli::SupervisorOptions;

namespace {

void check(bool ok, const char* what) {
    if (!ok) cppuvicorn::fuzz::violated(what);
}

std::string num(double v) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest exact round trip
    check(ec == std::errc(), "to_chars");
    return {buf, end};
}

std::vector<std::string> to_args(const SupervisorOptions& o) {
    std::vector<std::string> a = {"--workers",
                                  std::to_string(o.workers),
                                  "--host",
                                  o.host,
                                  "--port",
                                  std::to_string(o.port),
                                  "--uds",
                                  o.uds,
                                  "--fd",
                                  std::to_string(o.fd),
                                  "--backlog",
                                  std::to_string(o.backlog),
                                  "--healthcheck-timeout",
                                  num(o.healthcheck_timeout),
                                  "--graceful-timeout",
                                  num(o.graceful_timeout),
                                  "--drain",
                                  num(o.drain),
                                  "--scheme",
                                  o.scheme,
                                  "--log-info",
                                  o.log_info ? "1" : "0",
                                  "--metrics-port",
                                  std::to_string(o.metrics_port),
                                  "--metrics-host",
                                  o.metrics_host,
                                  "--"};
    if (o.fd < 0) a.erase(a.begin() + 8, a.begin() + 10);  // -1 is the default, not an input
    a.insert(a.end(), o.worker_argv.begin(), o.worker_argv.end());
    return a;
}

bool same(const SupervisorOptions& a, const SupervisorOptions& b) {
    return a.workers == b.workers && a.host == b.host && a.port == b.port && a.uds == b.uds &&
           a.fd == b.fd && a.backlog == b.backlog &&
           a.healthcheck_timeout == b.healthcheck_timeout &&
           a.graceful_timeout == b.graceful_timeout && a.drain == b.drain && a.scheme == b.scheme &&
           a.log_info == b.log_info && a.metrics_port == b.metrics_port &&
           a.metrics_host == b.metrics_host && a.worker_argv == b.worker_argv;
}

bool known_error(const std::string& e) {
    for (const char* prefix :
         {"missing value for ", "invalid value for ", "unknown option ",
          "no worker command after --", "--scheme must be ", "--log-info must be "}) {
        if (e.rfind(prefix, 0) == 0) return true;
    }
    return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::vector<std::string> args;
    std::string current;
    for (std::size_t i = 0; i < size; ++i) {
        if (data[i] == 0) {
            args.push_back(std::move(current));
            current.clear();
        } else {
            current.push_back(static_cast<char>(data[i]));
        }
    }
    if (size > 0) args.push_back(std::move(current));

    SupervisorOptions a, b;
    std::string error = parse_supervisor_args(args, a);
    check(parse_supervisor_args(args, b) == error, "same input, same verdict");
    if (!error.empty()) {
        check(known_error(error), "a failure names its problem");
        return 0;
    }
    check(same(a, b), "same input, same options");
    check(a.workers >= 1 && a.workers <= kMaxWorkers, "workers in range");
    check(a.port >= 0 && a.port <= 65535, "port in range");
    check(a.metrics_port >= -1 && a.metrics_port <= 65535, "metrics port in range");
    check(a.backlog >= 1, "backlog positive");
    check(a.fd >= -1, "fd");
    check(std::isfinite(a.healthcheck_timeout) && a.healthcheck_timeout >= 0, "healthcheck");
    check(std::isfinite(a.graceful_timeout) && a.graceful_timeout >= -1, "graceful timeout");
    check(std::isfinite(a.drain) && a.drain >= 0, "drain");
    for (double t : {a.healthcheck_timeout, a.graceful_timeout, a.drain})
        check(t * 1000 < 1.8e19, "timeouts fit in 64-bit milliseconds");
    check(a.scheme == "http" || a.scheme == "https", "scheme");
    check(!a.worker_argv.empty(), "a worker command");

    SupervisorOptions c;
    check(parse_supervisor_args(to_args(a), c).empty(), "written back, the options parse");
    check(same(a, c), "written back, the options parse to the same values");
    return 0;
}
