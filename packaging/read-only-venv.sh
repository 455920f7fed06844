#!/bin/bash
# Removes from a gateway's venv every program that writes to a PLC or stands in for one:
# asyncua's command-line tools (uawrite, uacall, uaclient, uaserver, ...), pymodbus's
# simulator, plc-sim and its package, and any other script a dependency installed. The
# agent is read-only towards the PLC; what the gateway ships keeps that promise too.
# Kept: edge-agent, the interpreter links, activate scripts and pip (install.sh upgrades
# in place with it).
#
# usage: packaging/read-only-venv.sh VENV
set -euo pipefail
venv=${1:?usage: read-only-venv.sh VENV}
[ -x "$venv/bin/python" ] || { echo "read-only-venv.sh: $venv is not a venv" >&2; exit 1; }
for program in "$venv"/bin/*; do
    case $(basename "$program") in
        edge-agent | python | python3 | python3.* | activate* | Activate.ps1 | pip | pip3 | pip3.*) ;;
        *) rm -f "$program" ;;
    esac
done
rm -rf "$venv"/lib/python3.*/site-packages/plc_sim
# The fleet side (edge-fleet, docs/fleet.md) runs on a server, never on a gateway.
rm -rf "$venv"/lib/python3.*/site-packages/fleet
