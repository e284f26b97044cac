#!/usr/bin/env bash
# Runs (part of) the end-to-end suite against a cppuvicorn module built with ASan + UBSan.
#
#   tests/sanitizers/e2e_asan.sh [pytest args...]   (default: tests/e2e)
#   e.g. tests/sanitizers/e2e_asan.sh tests/e2e/test_http.py tests/e2e/test_errors.py -x
#
# The module is built in build/asan-module and staged, with the package's .py files, in a temp
# directory that goes first on PYTHONPATH (the installed cppuvicorn is shadowed, not touched).
# The interpreter is not built with ASan, so libasan is LD_PRELOADed into every process (pytest
# and the servers it spawns inherit the environment). Every ASan/UBSan/LSan report is written
# to a file and any report fails the run. Leak checking is off by default (CPython does not
# promise to free everything at exit); LEAKS=1 turns it on with PYTHONMALLOC=malloc and
# tests/sanitizers/lsan.supp. Needs the .venv from scripts/bootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
BUILD=$ROOT/build/asan-module

cmake -S . -B "$BUILD" -G Ninja -DCPPUVICORN_SANITIZE="address;undefined" \
      -DCPPUVICORN_BUILD_TESTS=OFF -DCPPUVICORN_BUILD_MODULE=ON \
      -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD"

STAGE=$(mktemp -d /tmp/cppuvicorn-asan.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/cppuvicorn"
(cd cli/cppuvicorn && find . -name '*.py' -not -path '*/__pycache__/*' \
     -exec cp --parents {} "$STAGE/cppuvicorn/" \;)
cp "$BUILD"/asgi_bridge/_core*.so "$STAGE/cppuvicorn/"
cp "$BUILD"/cli/cppuvicorn-supervisor "$STAGE/cppuvicorn/"

LIBASAN=$(gcc -print-file-name=libasan.so)
if [ "${LEAKS:-0}" = 1 ]; then
    ASAN_DEFAULT="detect_leaks=1:abort_on_error=1"
    export LSAN_OPTIONS="suppressions=$ROOT/tests/sanitizers/lsan.supp:print_suppressions=0"
    export PYTHONMALLOC=malloc  # every object through malloc, so ASan sees (and LSan can match) it
else
    ASAN_DEFAULT="detect_leaks=0:abort_on_error=1"
fi
# Reports go to files: the harness does not show a server's stderr unless a test fails, and a
# leak report only comes at process exit.
REPORTS=$(mktemp -d /tmp/cppuvicorn-asan-reports.XXXXXX)
export ASAN_OPTIONS=${ASAN_OPTIONS:-$ASAN_DEFAULT}:log_path=$REPORTS/asan
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}:log_path=$REPORTS/ubsan
# Everything runs several times slower instrumented: wider I/O and start-up timeouts.
export E2E_IO_TIMEOUT=${E2E_IO_TIMEOUT:-20} E2E_START_TIMEOUT=${E2E_START_TIMEOUT:-60}
export PYTHONPATH=$STAGE${PYTHONPATH:+:$PYTHONPATH}
LD_PRELOAD=$LIBASAN "$PY" -c 'import cppuvicorn._core as c, sys; print("module:", c.__file__, file=sys.stderr)'
[ $# -gt 0 ] || set -- tests/e2e
rc=0
LD_PRELOAD=$LIBASAN "$PY" -m pytest -p no:cacheprovider "$@" || rc=$?
if compgen -G "$REPORTS/*" >/dev/null; then
    echo "e2e_asan: sanitizer reports in $REPORTS:" >&2
    for f in "$REPORTS"/*; do echo "== $f" >&2; cat "$f" >&2; done
    [ $rc -ne 0 ] || rc=1
else
    rmdir "$REPORTS"
    echo "e2e_asan: no sanitizer reports" >&2
fi
exit $rc
