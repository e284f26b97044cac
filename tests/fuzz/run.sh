#!/usr/bin/env bash
# Builds the libFuzzer targets (the `fuzz` preset: clang, ASan + UBSan), replays every committed
# corpus file, then fuzzes each target for a bounded time. CI runs it with the default budget;
# a long run is the same script with a bigger one.
#
#   tests/fuzz/run.sh                       # FUZZ_SECONDS=20 per target (CI)
#   FUZZ_SECONDS=600 tests/fuzz/run.sh      # longer; FUZZ_RUNS=10000000 bounds by executions
#   tests/fuzz/run.sh fuzz_http_parser      # only the named targets
#
# New inputs go to a scratch corpus under build/fuzz/work (never into the committed corpus);
# a crash or an invariant violation leaves its reproducer in build/fuzz/artifacts and fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
RUNS=${FUZZ_RUNS:--1}

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
ctest --preset fuzz

cd build/fuzz
mkdir -p work artifacts
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for t in tests/fuzz/fuzz_*; do [ -x "$t" ] && targets+=("$(basename "$t")"); done
fi
for t in "${targets[@]}"; do
    args=(-max_len=4096 -artifact_prefix=artifacts/"$t"- -print_final_stats=1)
    case "$t" in
        fuzz_http_*|fuzz_response_head) args+=(-dict="$ROOT/tests/fuzz/http.dict") ;;
        fuzz_proxy_headers) args+=(-dict="$ROOT/tests/fuzz/proxy.dict") ;;
        fuzz_supervisor_args) args+=(-dict="$ROOT/tests/fuzz/supervisor.dict") ;;
    esac
    if [ "$RUNS" != -1 ]; then args+=(-runs="$RUNS"); else args+=(-max_total_time="$SECONDS_PER_TARGET"); fi
    mkdir -p "work/$t"
    echo "== $t (${RUNS/#-1/${SECONDS_PER_TARGET}s})" >&2
    # The committed corpus is read (second directory); libFuzzer writes only into the first.
    "./tests/fuzz/$t" "work/$t" "$ROOT/tests/fuzz/corpus/$t" "${args[@]}" 2>"work/$t.log" || {
        tail -n 60 "work/$t.log" >&2
        echo "fuzz: $t failed; reproducer in build/fuzz/artifacts/" >&2
        exit 1
    }
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "work/$t.log" >&2 || true
done
echo "fuzz: every target clean" >&2
