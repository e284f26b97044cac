// SPDX-License-Identifier: BSD-3-Clause
// The supervisor's option parser: what the Python side passes parses, and numbers that are not
// whole, in range and finite are refused instead of being cut short or wrapped.
#include "cli/src/supervisor.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using cppuvicorn::cli::parse_supervisor_args;
using cppuvicorn::cli::SupervisorOptions;

namespace {

std::string parse(std::vector<std::string> args, SupervisorOptions& o) {
    args.insert(args.end(), {"--", "python", "-m", "cppuvicorn._worker"});
    return parse_supervisor_args(args, o);
}

}  // namespace

TEST_CASE("Supervisor args: the argv cppuvicorn builds", "[supervisor]") {
    SupervisorOptions o;
    REQUIRE(parse({"--workers",
                   "4",
                   "--backlog",
                   "2048",
                   "--healthcheck-timeout",
                   "5.0",
                   "--graceful-timeout",
                   "-1",
                   "--drain",
                   "0.5",
                   "--scheme",
                   "https",
                   "--host",
                   "0.0.0.0",
                   "--port",
                   "8443",
                   "--metrics-port",
                   "9100",
                   "--log-info",
                   "0"},
                  o) == "");
    CHECK(o.workers == 4);
    CHECK(o.port == 8443);
    CHECK(o.healthcheck_timeout == 5.0);
    CHECK(o.graceful_timeout == -1.0);
    CHECK(o.drain == 0.5);
    CHECK(o.scheme == "https");
    CHECK(o.metrics_port == 9100);
    CHECK_FALSE(o.log_info);
    CHECK(o.worker_argv == std::vector<std::string>{"python", "-m", "cppuvicorn._worker"});
}

TEST_CASE("Supervisor args: bad values are refused with the option named", "[supervisor]") {
    auto [option, value] = GENERATE(table<std::string, std::string>({
        {"--workers", "2x"},
        {"--workers", "0"},
        {"--workers", " 2"},
        {"--workers", "99999999999"},
        {"--port", "65536"},
        {"--port", "-5"},
        {"--port", ""},
        {"--backlog", "0"},
        {"--fd", "-2"},
        {"--healthcheck-timeout", "nan"},
        {"--healthcheck-timeout", "inf"},
        {"--healthcheck-timeout", "-1"},
        {"--graceful-timeout", "-1.5"},
        {"--drain", "1e999"},
        {"--drain", "1e300"},
        {"--drain", "0.5s"},
        {"--metrics-port", "-2"},
    }));
    SupervisorOptions o;
    CHECK(parse({option, value}, o) == "invalid value for " + option + ": " + value);
}

TEST_CASE("Supervisor args: structure errors", "[supervisor]") {
    SupervisorOptions o;
    CHECK(parse({"--scheme", "ftp"}, o) == "--scheme must be http or https");
    CHECK(parse({"--log-info", "yes"}, o) == "--log-info must be 0 or 1");
    CHECK(parse({"--bogus", "1"}, o) == "unknown option --bogus");
    CHECK(parse_supervisor_args({"--workers"}, o) == "missing value for --workers");
    CHECK(parse_supervisor_args({"--workers", "2"}, o) == "no worker command after --");
    CHECK(parse_supervisor_args({"--workers", "2", "--"}, o) == "no worker command after --");
}
