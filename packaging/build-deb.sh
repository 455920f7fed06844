#!/bin/bash
# Builds dist/edge-agent_<version>_<arch>.deb: a venv at /opt/edge-agent/venv holding the
# agent and its pinned dependencies, the systemd unit, the example configuration.
#
# The venv is made in a staging tree at <stage>/opt/edge-agent/venv with the target's
# interpreter (/usr/bin/python3.X, the one Debian's pythonX.Y package installs) and then
# made to belong at /opt/edge-agent/venv: a venv finds itself through the pyvenv.cfg beside
# bin/python, not through its path, so only the texts that name the staging path are
# rewritten (script shebangs, activate scripts, pyvenv.cfg), and the bytecode is compiled
# with /opt/edge-agent/... as its source path. The build fails if the staging path is left
# anywhere in the tree. packaging/README.md explains the choice. The venv keeps no program
# that writes to a PLC (read-only-venv.sh); the docs, edge-agent(1), the copyright and the
# changelog go to /usr/share.
#
# usage: packaging/build-deb.sh [--out DIR] [--python /usr/bin/python3.11] [--pip PIP]
#                               [--kernel-cache DIR]
# --kernel-cache DIR: the compiled kernels are taken from DIR when it holds them for the
# current kernel source, and left there after a build (under emulation they take minutes);
# the caller keys DIR by whatever else goes into them (constraints.txt, the compiler).
set -euo pipefail
# The venv's Python imports the agent it installs, never one a PYTHONPATH names (a source
# checkout's: the kernels would be compiled there, and the package shipped without them).
unset PYTHONPATH

here=$(cd "$(dirname "$0")" && pwd)
project=$(dirname "$here")
out="$project/dist"
python=/usr/bin/python3
pip="$project/.venv/bin/pip"
prefix=/opt/edge-agent
kernel_cache=

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --pip) pip=$2; shift 2 ;;
        --kernel-cache) kernel_cache=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb is missing (Debian package dpkg)" >&2; exit 1; }
# The ahead-of-time kernels are C compiled at build time; the package needs no compiler.
for tool in gcc g++; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing (Debian packages gcc g++, needed to build only)" >&2; exit 1; }
done
[ -x "$pip" ] || { echo "build-deb.sh: $pip is missing: run 'make venv' first" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "build-deb.sh: $python is older than 3.11" >&2; exit 1; }

# The interpreter the venv links to, by its versioned name (/usr/bin/python3.11), so that
# the package can depend on exactly that Debian package: site-packages is lib/python3.11
# and the binary wheels are cp311, a python3 moving to 3.12 would break them.
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
interpreter=$(dirname "$("$python" -c 'import sys; print(sys.executable)')")/python$pyver
[ -x "$interpreter" ] || { echo "build-deb.sh: $interpreter is missing" >&2; exit 1; }

version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$project/pyproject.toml")
maintainer=${DEB_MAINTAINER:-$("$python" -c 'import sys, tomllib; m = tomllib.load(open(sys.argv[1], "rb"))["project"]["maintainers"][0]; print(m["name"], "<" + m["email"] + ">")' "$project/pyproject.toml")}
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.2.0rc1 -> 1.2.0~rc1.
debversion=$(printf '%s' "$version" | sed -E 's/^([0-9.]+)(a|b|rc)([0-9]+)$/\1~\2\3/')
arch=$(dpkg --print-architecture)

stage=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
venv="$stage$prefix/venv"

echo "build-deb.sh: edge-agent $debversion for $arch, Python $pyver ($interpreter)"
# pip builds a source directory in place (build/, *.egg-info): build from a copy, so that
# the working tree is neither written nor read while someone edits it. The copy holds what
# pyproject.toml packages (agent*, drivers*, plc_sim* in firmware-sim/) and its readme.
source=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-src.XXXXXX")
trap 'rm -rf "$stage" "$source"' EXIT
(cd "$project" && tar --exclude=__pycache__ --exclude='_aot_*' -cf - pyproject.toml README.md agent drivers firmware-sim) \
    | tar -C "$source" -xf -
"$interpreter" -m venv --without-pip "$venv"
# pip runs from the project's venv against the new one: the target venv carries no pip.
# The wheel of the agent is built from the source tree (non-editable); every dependency
# at the version constraints.txt pins.
PIP_DISABLE_PIP_VERSION_CHECK=1 "$pip" --python "$venv/bin/python" install --quiet \
    --no-compile --constraint "$project/constraints.txt" "$source"
# The kernels compiled ahead of time, with the venv's own numba and numpy, so that the agent
# never loads numba (agent/detect/kernels/jit.py). numba.pycc needs setuptools while it compiles:
# the project venv's version, installed for the build and removed after it, and so is
# argparse-manpage, which writes edge-agent(1) below from the installed agent's parser. No
# bytecode here: compileall writes it below; -P: the installed agent, not a source tree in
# the working directory.
setuptools=$("$project/.venv/bin/python" -c 'import setuptools; print(setuptools.__version__)')
PIP_DISABLE_PIP_VERSION_CHECK=1 "$pip" --python "$venv/bin/python" install --quiet \
    --no-compile --constraint "$project/constraints.txt" "setuptools==$setuptools" argparse-manpage
# The C and C++ compilers write source paths into the extension (__FILE__, debug info): they
# are made to name the installed venv, not the staging tree (so a cached one fits any build).
# A recent setuptools (84 here) compiles numba's C++ runtime (nrt.cpp) with CXXFLAGS, not CFLAGS.
kernels_dir=$(echo "$venv"/lib/python3*/site-packages/agent/detect/kernels)
[ -z "$kernel_cache" ] || "$here/kernel-cache.sh" restore "$kernel_cache" "$kernels_dir"
map="-ffile-prefix-map=$stage$prefix=$prefix"
CFLAGS="${CFLAGS:-} $map" CXXFLAGS="${CXXFLAGS:-} $map" PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/python" -P -m agent.detect.kernels.build
[ -z "$kernel_cache" ] || "$here/kernel-cache.sh" save "$kernel_cache" "$kernels_dir"
# edge-agent(1) from the argparse definitions, with the defaults a gateway sees (-c: /etc).
env -u EDGE_AGENT_CONFIG PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -P -c \
    'import sys; from argparse_manpage.cli import main; sys.exit(main())' \
    --module agent.cli.main --function build_parser --prog edge-agent --project-name edge-agent \
    --version "$version" --description "edge agent for retrofitted machines" \
    --author "$maintainer" --manual-section 1 --manual-title "edge-agent manual" \
    --output "$stage/edge-agent.1"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$pip" --python "$venv/bin/python" uninstall --quiet --yes \
    setuptools argparse-manpage

"$here/read-only-venv.sh" "$venv"

# Make the tree belong at $prefix/venv.
{ grep -rlF --binary-files=without-match "$stage" "$venv" || true; } | while IFS= read -r file; do
    sed -i "s|$stage$prefix|$prefix|g" "$file"
done
"$venv/bin/python" -m compileall -q -j 0 -s "$stage" -p / "$venv/lib" >/dev/null
if left=$(grep -rlF "$stage" "$venv"); then
    echo "build-deb.sh: the staging path is still named in:" >&2
    echo "$left" >&2
    exit 1
fi

install -D -m 0644 "$here/edge-agent.service" "$stage/lib/systemd/system/edge-agent.service"
install -D -m 0644 "$project/config/example.yaml" "$stage/etc/edge-agent/config.yaml.example"
# Device profiles (`profile: eastron-sdm630`): drivers/modbus/profiles.py looks here.
install -d "$stage/usr/share/edge-agent/profiles"
install -m 0644 "$project"/config/profiles/*.yaml "$stage/usr/share/edge-agent/profiles/"
doc="$stage/usr/share/doc/edge-agent"
install -D -m 0644 "$here/README.md" "$doc/README.md"
install -m 0644 "$project/docs/technician-guide.md" "$doc/technician-guide.md"
install -m 0644 "$here/debian/copyright" "$doc/copyright"
gzip -9n < "$here/debian/changelog" > "$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"
install -d "$stage/usr/share/man/man1"
gzip -9n < "$stage/edge-agent.1" > "$stage/usr/share/man/man1/edge-agent.1.gz"
rm "$stage/edge-agent.1"
mkdir -p "$stage/usr/bin"
ln -s "$prefix/venv/bin/edge-agent" "$stage/usr/bin/edge-agent"

mkdir -p "$stage/DEBIAN"
installed_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: edge-agent
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kib
Depends: python$pyver, procps
Section: misc
Priority: optional
Description: edge agent for retrofitted machines
 Polls PLCs and energy meters over Modbus, condenses the samples locally,
 stores every event on disk and forwards it to an MQTT broker (QoS 1, TLS).
 Self-contained venv in $prefix/venv, systemd unit edge-agent.service.
CONTROL
echo /etc/edge-agent/config.yaml.example > "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$stage/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/edge-agent_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$stage" "$deb" >/dev/null
echo "$deb"
