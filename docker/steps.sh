#!/bin/sh
# The build and run steps of docker/Dockerfile, kept in one place: the Dockerfile COPYs this
# script and every RUN line calls it, and tests/e2e/test_docker_build.py runs the same steps on
# the host (no Docker engine there), so a broken step or a wrong package name fails CI.
#
#   steps.sh build-deps          the compiler and -dev packages the wheel is built with
#   steps.sh wheels SRC DIR      cppuvicorn's wheel and its dependencies' wheels, into DIR
#   steps.sh runtime-deps        only the shared libraries the wheel links against
#   steps.sh install DIR         install cppuvicorn from DIR (no index), then check-libs
#   steps.sh check-libs          every library the native parts load is present and comes
#                                from RUNTIME_PACKAGES or the base image, and each of
#                                RUNTIME_PACKAGES is needed
#   steps.sh example-deps        what the example app image adds (FastAPI)
#
# `python` is the interpreter being built for: the image's, or a venv's first on PATH.
set -eu

BUILD_PACKAGES="g++ pkg-config libuv1-dev node-llhttp libfmt-dev libssl-dev zlib1g-dev"
RUNTIME_PACKAGES="libuv1 libfmt9 libssl3 zlib1g"
# In every Debian image already (the C and C++ runtimes); anything else must be listed above.
BASE_PACKAGES="libc6 libgcc-s1 libstdc++6"
EXAMPLE_REQUIREMENTS="fastapi>=0.110"

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Installs the packages that are missing; when all are there (the host) apt is not touched.
apt_install() {
    missing=""
    for p in "$@"; do
        installed "$p" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "steps: installing$missing" >&2
    apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
}

check_libs() {
    pkgdir=$(python -c 'import os, cppuvicorn; print(os.path.dirname(cppuvicorn.__file__))')
    prefix=$(python -c 'import sys; print(sys.base_prefix)')
    status=0
    used=" "
    for binary in "$pkgdir"/_core*.so "$pkgdir"/cppuvicorn-supervisor; do
        [ -e "$binary" ] || { echo "steps: $binary is missing from the installed package" >&2; status=1; continue; }
        if ldd "$binary" | grep -q "not found"; then
            echo "steps: $binary has unresolved libraries:" >&2
            ldd "$binary" | grep "not found" >&2
            status=1
            continue
        fi
        for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do
            real=$(readlink -f "$lib")
            case "$real" in "$prefix"/*) continue ;; esac  # the interpreter's own libraries
            owner=""
            for candidate in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
                owner=$(dpkg-query -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$owner" ] && break
            done
            used="$used$owner "
            case " $RUNTIME_PACKAGES $BASE_PACKAGES " in
                *" $owner "*) ;;
                *)
                    echo "steps: $(basename "$binary") loads $lib from package '${owner:-unknown}'," \
                        "which is not in RUNTIME_PACKAGES ($RUNTIME_PACKAGES)" >&2
                    status=1
                    ;;
            esac
        done
    done
    for p in $RUNTIME_PACKAGES; do  # and nothing more than they need
        case "$used" in
            *" $p "*) ;;
            *) echo "steps: RUNTIME_PACKAGES lists $p, which no native part loads" >&2; status=1 ;;
        esac
    done
    return $status
}

step=${1:-}
case "$step" in
    build-deps)
        apt_install $BUILD_PACKAGES
        ;;
    wheels)
        [ $# -eq 3 ] || { echo "usage: $0 wheels SRC WHEEL_DIR" >&2; exit 2; }
        python -m pip wheel --no-cache-dir --wheel-dir "$3" "$2"
        ;;
    runtime-deps)
        apt_install $RUNTIME_PACKAGES
        ;;
    install)
        [ $# -eq 2 ] || { echo "usage: $0 install WHEEL_DIR" >&2; exit 2; }
        python -m pip install --no-cache-dir --no-index --find-links "$2" cppuvicorn
        check_libs
        ;;
    check-libs)
        check_libs
        ;;
    example-deps)
        python -m pip install --no-cache-dir "$EXAMPLE_REQUIREMENTS"
        ;;
    *)
        echo "usage: $0 build-deps | wheels SRC DIR | runtime-deps | install DIR | check-libs | example-deps" >&2
        exit 2
        ;;
esac
