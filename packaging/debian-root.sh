#!/bin/bash
# A Debian root file system made by debootstrap, cached as a tarball: the booted systemd
# container of tests/e2e/test_systemd_container.py and the emulated arm64 machine that
# builds and runs the arm64 package (packaging/build-deb-arm64.sh).
#
# The tarball is named after what made it: NAME-ARCH-<digest>.tar.gz, the digest over the
# suite, the architecture, the package list and this script's own text, so that a change
# to any of them makes a new root and nothing stale is reused. It lives outside the source
# tree, in ${EDGE_AGENT_ROOTS:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent/roots}; older
# tarballs of the same NAME-ARCH are deleted when a new one is made. A root for another
# architecture is made with --foreign and its second stage run under qemu-user-static
# (binfmt_misc must know the architecture: `make qemu-user`).
#
# Making one (a minute for amd64, five under emulation) takes the machine's heavy-job
# lock (heavy-lock.sh: $HEAVY_LOCK, default /tmp/heavy.lock), unless a process it runs
# under holds it already.
#
# usage: packaging/debian-root.sh --name NAME --arch ARCH --include PKG,PKG,... [--suite S]
# Prints the tarball's path.
set -euo pipefail

suite=bookworm
name=
arch=
include=
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
while [ $# -gt 0 ]; do
    case "$1" in
        --name) name=$2; shift 2 ;;
        --arch) arch=$2; shift 2 ;;
        --include) include=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "debian-root.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$name" ] && [ -n "$arch" ] && [ -n "$include" ] \
    || { echo "debian-root.sh: --name, --arch and --include are required" >&2; exit 2; }
command -v debootstrap >/dev/null \
    || { echo "debian-root.sh: debootstrap is missing (Debian package debootstrap)" >&2; exit 1; }

cache=${EDGE_AGENT_ROOTS:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent/roots}
packages=$(printf '%s' "$include" | tr ',' '\n' | sort -u | paste -sd, -)
digest=$({ printf '%s\n' "$suite" "$arch" "$packages"; cat "$0"; } | sha256sum | cut -c1-16)
tarball="$cache/$name-$arch-$digest.tar.gz"
if [ -f "$tarball" ]; then
    echo "$tarball"
    exit 0
fi

mkdir -p "$cache"
# shellcheck source=heavy-lock.sh
. "$(dirname "$0")/heavy-lock.sh"
heavy_lock
# Another caller may have made it while this one waited for the lock.
if [ -f "$tarball" ]; then
    echo "$tarball"
    exit 0
fi

host_arch=$(dpkg --print-architecture)
foreign=()
if [ "$arch" != "$host_arch" ]; then
    foreign=(--foreign)
    binfmt=/proc/sys/fs/binfmt_misc
    qemu=$(case "$arch" in arm64) echo aarch64 ;; armhf) echo arm ;; *) echo "$arch" ;; esac)
    grep -qx enabled "$binfmt/qemu-$qemu" 2>/dev/null || {
        echo "debian-root.sh: $binfmt/qemu-$qemu is not enabled: an $arch root needs" \
             "qemu-user-static registered with binfmt_misc (make qemu-user)" >&2
        exit 1
    }
fi

work=$(mktemp -d "$cache/.build-$name-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
echo "debian-root.sh: debootstrap $suite $arch ($packages) into $root" >&2
debootstrap --variant=minbase --arch="$arch" "${foreign[@]}" --include="$packages" \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
if [ ${#foreign[@]} -gt 0 ]; then
    # binfmt_misc's F flag: the kernel holds qemu open, nothing of it is needed in the root.
    chroot "$root" /debootstrap/debootstrap --second-stage >"$work/second-stage.log" 2>&1 \
        || { tail -n 30 "$work/second-stage.log" >&2; exit 1; }
fi
# The host's CA bundle, so that pip in the root trusts what the host trusts.
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
tar -C "$root" --numeric-owner --xattrs -czf "$work/root.tar.gz" .
mv "$work/root.tar.gz" "$tarball"
find "$cache" -maxdepth 1 -name "$name-$arch-*.tar.gz" ! -path "$tarball" -delete
echo "$tarball"
