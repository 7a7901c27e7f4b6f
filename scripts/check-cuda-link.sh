#!/usr/bin/env bash
# Fails when a built example does not list libtorch_cuda.so among its NEEDED
# entries although the libtorch in use has it (rustc's --as-needed would
# otherwise drop it and CUDA would never be found; see build/link_libtorch.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
if [ ! -f "$DAMRO_LIBTORCH_LIB/libtorch_cuda.so" ]; then
    echo "check-cuda-link: $DAMRO_LIBTORCH_LIB has no libtorch_cuda.so (CPU-only libtorch): nothing to check"
    exit 0
fi
target="${CARGO_TARGET_DIR:-target}"
examples=$(find "$target/debug/examples" -maxdepth 1 -type f -executable ! -name '*-*' 2>/dev/null || true)
if [ -z "$examples" ]; then
    echo "check-cuda-link: no built example under $target/debug/examples" >&2
    exit 1
fi
status=0
for bin in $examples; do
    if readelf -d "$bin" | grep -q 'NEEDED.*\[libtorch_cuda.so\]'; then
        echo "check-cuda-link: ok $bin"
    else
        echo "check-cuda-link: $bin does not list libtorch_cuda.so in NEEDED" >&2
        status=1
    fi
done
exit $status
