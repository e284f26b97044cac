// SPDX-License-Identifier: BSD-3-Clause
// cppuvicorn-supervisor: started by `cppuvicorn --workers N` (which execs it before any app
// import). Usage: cppuvicorn-supervisor --workers N --host H --port P … -- WORKER ARGV…
#include "cli/src/supervisor.hpp"

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    cppuvicorn::cli::SupervisorOptions options;
    std::string error = cppuvicorn::cli::parse_supervisor_args(args, options);
    if (!error.empty()) {
        std::fprintf(stderr, "cppuvicorn-supervisor: %s\n", error.c_str());
        return 2;
    }
    return cppuvicorn::cli::run_supervisor(options);
}
