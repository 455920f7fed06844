"""Simulated PLCs for the edge agent's demos and end-to-end tests (`plc-sim` command).

See firmware-sim/README.md for the scenarios, register maps and trace format.
"""
