#!/bin/bash
# Builds the .deb for another architecture than this machine's (arm64: a Raspberry Pi 4/5
# on Raspberry Pi OS bookworm, an arm64 Debian 12 gateway) in an emulated Debian root, as
# that machine would build it: packaging/debian-root.sh makes (once, cached) a bookworm
# root of that architecture with Python and the compilers, qemu-user-static runs its
# programs, and build-deb.sh runs inside it on a copy of this tree. pip downloads the
# target's wheels (numpy, numba, llvmlite and pydantic-core have aarch64 ones) into a cache
# kept beside the roots; numba compiles the kernels ahead of time with the root's gcc.
#
# The build takes the heavy-job lock (heavy-lock.sh: $HEAVY_LOCK, default /tmp/heavy.lock)
# unless a process it runs under holds it already. DEB_COMPRESSION and DEB_MAINTAINER are
# passed on to build-deb.sh.
#
# usage: packaging/build-deb-emulated.sh --arch ARCH [--out DIR]
set -euo pipefail
unset PYTHONPATH

here=$(cd "$(dirname "$0")" && pwd)
project=$(dirname "$here")
out="$project/dist"
arch=
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-deb-emulated.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$arch" ] || { echo "build-deb-emulated.sh: --arch is required" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "build-deb-emulated.sh: chroot needs root" >&2; exit 1; }
command -v unshare >/dev/null || { echo "build-deb-emulated.sh: unshare is missing (util-linux)" >&2; exit 1; }

# What the build needs in the root: the interpreter the package depends on (python3 is
# 3.11 in bookworm), venv for the build's pip, the headers and compilers numba.pycc uses,
# procps for the unit's /bin/kill. tests/e2e/test_arm64.py installs the package in the same root.
packages=python3,python3-venv,python3-dev,gcc,g++,libc6-dev,procps
tarball=$("$here/debian-root.sh" --name build --arch "$arch" --include "$packages")
cache=$(dirname "$tarball")
pip_cache="$cache/pip-$arch"
# The kernels compiled under emulation (8 minutes on 2 cores) are kept between builds, keyed
# by what they are made from besides their source (whose digest names the file): the pinned
# numba, llvmlite and numpy (not the other pins: a new one must not cost 8 minutes), the
# kernel package's code, and the root with its compiler.
kernel_key=$(cd "$project" && { basename "$tarball"; grep -E '^(numba|llvmlite|numpy)==' constraints.txt
    cat agent/detect/kernels/*.py; } | sha256sum | cut -c1-16)
kernel_cache="$cache/kernels-$arch-$kernel_key"
mkdir -p "$pip_cache" "$kernel_cache" "$out"
find "$cache" -maxdepth 1 -name "kernels-$arch-*" ! -path "$kernel_cache" -exec rm -rf {} +

# shellcheck source=heavy-lock.sh
. "$(dirname "$0")/heavy-lock.sh"
heavy_lock

work=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir "$root"
tar -C "$root" --numeric-owner -xzf "$tarball"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# What build-deb.sh reads, without this machine's venv, build output or caches.
mkdir -p "$root/build/src" "$root/build/out" "$root/build/kernels" "$root/root/.cache/pip"
(cd "$project" && tar --exclude=__pycache__ --exclude='_aot_*' --exclude=.venv \
    -cf - pyproject.toml README.md constraints.txt agent drivers firmware-sim config docs packaging) \
    | tar -C "$root/build/src" -xf -

echo "build-deb-emulated.sh: building for $arch in $root (under qemu-user-static)" >&2
# The root's own venv stands in for the project venv: build-deb.sh takes its pip, and the
# setuptools version that numba.pycc builds with. A private mount namespace: /proc, /dev
# and the caches are mounted for the build only and vanish with it.
script='set -e; cd /build/src; python3 -m venv .venv
        exec packaging/build-deb.sh --out /build/out --kernel-cache /build/kernels'
environment=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
             PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
             DEB_COMPRESSION="${DEB_COMPRESSION:-xz}")
[ -z "${DEB_MAINTAINER:-}" ] || environment+=(DEB_MAINTAINER="$DEB_MAINTAINER")
env -i "${environment[@]}" unshare --mount sh -c '
        set -e
        mount -t proc proc "$1/proc"
        mount --rbind /dev "$1/dev"
        mount --bind "$2" "$1/root/.cache/pip"
        mount --bind "$3" "$1/build/kernels"
        exec chroot "$1" /bin/sh -c "$4"' sh "$root" "$pip_cache" "$kernel_cache" "$script"
for deb in "$root"/build/out/*.deb; do
    cp "$deb" "$out/"
    echo "$out/$(basename "$deb")"
done
