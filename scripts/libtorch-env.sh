#!/usr/bin/env bash
# Provision libtorch for tch and export what the build and the binaries need.
#
# Source it (`. scripts/libtorch-env.sh`) or run it with a command
# (`scripts/libtorch-env.sh cargo test`).
#
# - If LIBTORCH is already set, that libtorch is used as it is.
# - Otherwise torch==$DAMRO_TORCH_VERSION (the version tch 0.26 binds) is
#   installed from the Python registry into a virtual environment in a cache
#   outside the checkout, keyed by version, and reused by every later clone on
#   the same machine:
#     ${DAMRO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/damro-rs}/torch-<version>
#   The wheel is the CUDA build on purpose: it also runs on CPU-only machines.
#
# Exports: LIBTORCH_USE_PYTORCH=1 and PATH (so torch-sys finds that Python),
# DAMRO_LIBTORCH_LIB (torch's lib/ directory) and LD_LIBRARY_PATH.

_damro_libtorch_main() {
    local version="${DAMRO_TORCH_VERSION:-2.13.0}"
    if [ -n "${LIBTORCH:-}" ]; then
        if [ ! -d "$LIBTORCH/lib" ]; then
            echo "libtorch-env: LIBTORCH=$LIBTORCH has no lib/ directory" >&2
            return 1
        fi
        export DAMRO_LIBTORCH_LIB="$LIBTORCH/lib"
    else
        local cache="${DAMRO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/damro-rs}"
        local dir="$cache/torch-$version"
        local py="${PYTHON:-python3}"
        mkdir -p "$cache" || return 1
        (
            # One installer at a time per cache; a half-done install (no
            # marker) is removed and redone.
            flock 9
            if [ ! -f "$dir/.complete" ]; then
                echo "libtorch-env: installing torch==$version into $dir" >&2
                rm -rf "$dir"
                "$py" -m venv "$dir/venv" &&
                    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
                        "torch==$version" &&
                    touch "$dir/.complete"
            fi
        ) 9>"$cache/.torch-$version.lock" || {
            echo "libtorch-env: installing torch==$version failed" >&2
            return 1
        }
        export PATH="$dir/venv/bin:$PATH"
        export LIBTORCH_USE_PYTORCH=1
        local torch_dir
        torch_dir="$("$dir/venv/bin/python" -W ignore -c 'import os, torch; print(os.path.dirname(torch.__file__))')" || return 1
        export DAMRO_LIBTORCH_LIB="$torch_dir/lib"
    fi
    export LD_LIBRARY_PATH="$DAMRO_LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _damro_libtorch_main
    if [ "$#" -gt 0 ]; then
        exec "$@"
    fi
    echo "LIBTORCH lib: $DAMRO_LIBTORCH_LIB"
else
    _damro_libtorch_main
fi
