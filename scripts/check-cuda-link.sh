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
# Examples (as `cargo test` builds them: name-hash) and the test harnesses
# (unit and integration tests) in deps/.
bins=$(find "$target/debug/examples" "$target/debug/deps" -maxdepth 1 -type f -executable ! -name '*.*' 2>/dev/null || true)
if ! printf '%s\n' $bins | grep -q "/examples/"; then
    echo "check-cuda-link: no built example under $target/debug/examples (run the tests first)" >&2
    exit 1
fi
status=0
for bin in $bins; do
    # Only binaries linked against libtorch (all of the workspace's, but
    # e.g. damro-eval's own tests do not use it).
    readelf -d "$bin" 2>/dev/null | grep -q 'NEEDED.*\[libtorch_cpu.so\]' || continue
    # The outside package (examples/custom-lvlm) has no build script, as a
    # dependent of damro would not: its binaries load libtorch_cuda.so at run
    # time through damro::cuda, which its own test checks
    # (the_cuda_backend_is_loaded_without_link_flags).
    case "$(basename "$bin")" in
        custom_lvlm*) loaded=$((${loaded:-0} + 1)); continue ;;
    esac
    if readelf -d "$bin" | grep -q 'NEEDED.*\[libtorch_cuda.so\]'; then
        checked=$((${checked:-0} + 1))
    else
        echo "check-cuda-link: $bin does not list libtorch_cuda.so in NEEDED" >&2
        status=1
    fi
done
echo "check-cuda-link: ${checked:-0} libtorch binaries list libtorch_cuda.so; ${loaded:-0} outside-package binaries load it at run time"
if [ "${loaded:-0}" -eq 0 ]; then
    echo "check-cuda-link: the outside package's binaries (examples/custom-lvlm) were not built" >&2
    status=1
fi
if [ "${checked:-0}" -eq 0 ]; then
    echo "check-cuda-link: no libtorch binary found" >&2
    status=1
fi
exit $status
