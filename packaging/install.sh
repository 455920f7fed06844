#!/bin/bash
# Installs the edge agent on a gateway that already has Python >= 3.11, without the .deb:
#   /opt/edge-agent/venv                    a venv holding the agent (from this source tree
#                                           or a wheel) at the versions constraints.txt pins
#   /usr/local/bin/edge-agent               -> /opt/edge-agent/venv/bin/edge-agent
#   /etc/systemd/system/edge-agent.service  the unit (packaging/edge-agent.service)
#   /etc/edge-agent/config.yaml.example     the commented example configuration
# then `systemctl daemon-reload`. It never writes /etc/edge-agent/config.yaml and never
# starts the service unless it was already running (an upgrade: it is restarted).
# Safe to run again: the venv is reused and the agent upgraded in place.
#
# usage: packaging/install.sh [--prefix DIR] [--python PYTHON] [--source DIR_OR_WHEEL]
#   --prefix DIR   install under DIR instead of / (tests, staging); systemctl is not called.
#                  The venv under DIR names DIR in its scripts: it runs where it is.
#   --python       the interpreter the venv is made from (default: python3)
#   --source       the project directory (default: this script's) or a built wheel
#   --kernel-cache DIR  compiled kernels taken from DIR when it holds them for this source,
#                  and left there (packaging/kernel-cache.sh; tests and repeated installs)
set -euo pipefail
# The venv's Python imports the agent it installs, never one a PYTHONPATH names (a source
# checkout's: the kernels would be compiled there, and the package shipped without them).
unset PYTHONPATH

here=$(cd "$(dirname "$0")" && pwd)
project=$(dirname "$here")
prefix=/
python=python3
source=$project
kernel_cache=

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --source) source=$2; shift 2 ;;
        --kernel-cache) kernel_cache=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

root=${prefix%/}  # "" for /
venv="$root/opt/edge-agent/venv"
config=/etc/edge-agent/config.yaml
unit=edge-agent.service

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || { echo "install.sh: $python is missing or older than Python 3.11" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pip' 2>/dev/null; then
    echo "install.sh: creating $venv"
    "$python" -m venv --clear "$venv" || {
        echo "install.sh: '$python -m venv' failed; on Debian: apt-get install python3-venv" >&2
        exit 1
    }
fi

echo "install.sh: installing the agent from $source"
if [ -d "$source" ]; then
    # pip builds a directory in place (build/, *.egg-info): build from a copy of what
    # pyproject.toml packages, so that the source tree is left as it was.
    copy=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-src.XXXXXX")
    trap 'rm -rf "$copy"' EXIT
    (cd "$source" && tar --exclude=__pycache__ --exclude='_aot_*' -cf - pyproject.toml README.md agent drivers firmware-sim) \
        | tar -C "$copy" -xf -
    source=$copy
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/pip" install --quiet --upgrade --constraint "$project/constraints.txt" "$source"
# The same version number from a changed source tree is still a new agent: reinstall it.
"$venv/bin/pip" install --quiet --force-reinstall --no-deps "$source"
# The kernels compiled ahead of time: the agent then never loads numba (agent/detect/kernels/jit.py).
# numba.pycc needs setuptools to compile (a venv of Python >= 3.12 has none); -P: the
# installed agent, not a source tree in the working directory.
"$venv/bin/python" -c 'import setuptools' 2>/dev/null || "$venv/bin/pip" install --quiet setuptools
kernels_dir=$(echo "$venv"/lib/python3*/site-packages/agent/detect/kernels)
[ -z "$kernel_cache" ] || "$here/kernel-cache.sh" restore "$kernel_cache" "$kernels_dir"
"$venv/bin/python" -P -m agent.detect.kernels.build
[ -z "$kernel_cache" ] || "$here/kernel-cache.sh" save "$kernel_cache" "$kernels_dir"
# No program that writes to a PLC stays on the gateway (asyncua's tools, plc-sim, ...).
"$here/read-only-venv.sh" "$venv"

install -D -m 0644 "$here/edge-agent.service" "$root/etc/systemd/system/$unit"
install -D -m 0644 "$project/config/example.yaml" "$root/etc/edge-agent/config.yaml.example"
# Device profiles (`profile: eastron-sdm630`): drivers/modbus/profiles.py looks here.
install -d "$root/usr/share/edge-agent/profiles"
install -m 0644 "$project"/config/profiles/*.yaml "$root/usr/share/edge-agent/profiles/"
mkdir -p "$root/usr/local/bin"
ln -sfn "$venv/bin/edge-agent" "$root/usr/local/bin/edge-agent"

if [ -n "$root" ] || [ ! -d /run/systemd/system ]; then
    echo "install.sh: installed under ${root:-/}; systemd not told (prefix set or not PID 1)"
    exit 0
fi

systemctl daemon-reload
if [ ! -f "$config" ]; then
    echo "install.sh: $config does not exist: copy $config.example, edit it,"
    echo "  check it with 'edge-agent check -c $config', then 'systemctl enable --now $unit'"
elif systemctl is-active --quiet "$unit"; then
    echo "install.sh: restarting the running $unit"
    systemctl restart "$unit"
else
    echo "install.sh: start it with 'systemctl enable --now $unit'"
fi
