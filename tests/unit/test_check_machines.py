"""`edge-agent check` on machines: the summary says what each machine does, and a power tag
whose sharing keeps the energy reports on site is warned about."""

from __future__ import annotations

from pathlib import Path

from agent.cli.check import summary, warnings
from agent.config import load_config

CONFIG = """
gateway: {id: gw, state_dir: /tmp/edge-agent-test}
mqtt: {host: 127.0.0.1, tls: {enabled: false}}
devices:
  - name: press-1
    protocol: modbus-tcp
    host: 127.0.0.1
    share: events
    tags:
      - {name: current_a, address: 0, type: float32}
machines:
  - {name: press, device: press-1, current_tag: current_a, idle_above_a: 1, running_above_a: 10,
     shifts: ["06:00", "18:00"], timezone: Europe/Vienna}
"""


def test_summary_and_warning(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    loaded = load_config(path, environ={})
    [line] = [s for s in summary(loaded) if s.startswith("machine")]
    assert line == ("machine press on press-1: state from current_a (idle > 1 A, running > 10 A, "
                    "hysteresis 0 A, dwell 5 s); no energy (give a meter or line_voltage_v); "
                    "report every 900 s and at shifts 06:00, 18:00 (Europe/Vienna)")
    assert warnings(loaded) == [("machine press: its signal current_a is shared `events`, so its "
                                "energy reports stay on site")]


def test_summary_says_which_rules_run_only_in_some_states(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG + """
detectors:
  - {device: press-1, kind: zscore, name: load, tags: [current_a],
     while_states: [running, overload], settle_s: 30}
  - {device: press-1, kind: limits, tags: [current_a], high: 40}
""")
    rules = [s for s in summary(load_config(path, environ={})) if s.startswith("rule")]
    assert rules == [("rule load on press-1: zscore of current_a, only while press in running, "
                     "overload (settled 30 s)"),
                     "rule limits-2 on press-1: limits of current_a"]
