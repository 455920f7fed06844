#!/bin/bash
# A cache of the kernels compiled ahead of time (a minute natively, minutes under
# emulation), shared by the builds that compile them: build-deb.sh, install.sh, `make deb`.
# The file name of a compiled kernel module names the digest of the kernels' source; what
# else goes into it (the pinned numba, llvmlite and numpy, the kernel package's code, the
# interpreter, the compiler) keys the folder; no other pin, so a new dependency costs nothing.
#
# usage: packaging/kernel-cache.sh dir NAME PYTHON   the folder for NAME (e.g. native-amd64),
#                                                    made; older ones of NAME removed
#        packaging/kernel-cache.sh restore DIR KERNELS  cached modules into the kernels folder
#        packaging/kernel-cache.sh save DIR KERNELS     the kernels folder's modules into DIR
set -euo pipefail

project=$(dirname "$(cd "$(dirname "$0")" && pwd)")
root=${KERNEL_CACHE_ROOT:-$HOME/.cache/edge-agent}

case "${1:-}" in
    dir)
        [ $# -eq 3 ] || { echo "kernel-cache.sh: dir NAME PYTHON" >&2; exit 2; }
        key=$( { grep -E '^(numba|llvmlite|numpy)==' "$project/constraints.txt"
                 cat "$project"/agent/detect/kernels/*.py; "$3" -VV; gcc --version; } \
               | sha256sum | cut -c1-16)
        cache="$root/kernels-$2-$key"
        mkdir -p "$cache"
        find "$root" -maxdepth 1 -name "kernels-$2-*" ! -path "$cache" -exec rm -rf {} +
        echo "$cache"
        ;;
    restore)
        [ $# -eq 3 ] || { echo "kernel-cache.sh: restore DIR KERNELS" >&2; exit 2; }
        mkdir -p "$2"
        find "$2" -maxdepth 1 -name '_aot_*.so' -exec cp {} "$3/" \;
        ;;
    save)
        [ $# -eq 3 ] || { echo "kernel-cache.sh: save DIR KERNELS" >&2; exit 2; }
        find "$2" -maxdepth 1 -name '_aot_*.so' -delete
        cp "$3"/_aot_*.so "$2/"
        ;;
    *)
        sed -n '2,12p' "$0" >&2
        exit 2
        ;;
esac
