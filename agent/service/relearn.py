"""`edge-agent relearn`: make a device's anomaly rules learn again, after a repair, a new
sensor or a changed process, when what they learned is no longer what normal looks like.

A running agent holds what was learned in memory and overwrites the state file at its next
save, so the command asks it over the control socket to forget and save at once
(`KeepLearned.forget`; no restart); with the agent stopped it rewrites the file without the
rows (keeping owner and mode). No race: the agent listens before any device reads its state
file and stops only after its last save; a command finding no agent rewrites the file, then
asks again (docs/detection.md, "Across restarts"). Names are checked against the running
agent's own configuration; rows match rules as the state file keys them (`rule_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from agent.config import AgentConfig
from agent.config.detection import LEARNING_KINDS
from agent.detect.learned_state import (
    KeepLearned,
    describe_row,
    in_rule_order,
    rule_of,
    state_path,
)
from agent.detect.state_file import StateFile
from agent.events import Event
from agent.service.control import CONTROL_SOCKET, ask

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMAND = "relearn"


class RelearnError(ValueError):
    """A device or rule the configuration does not know, or one that learns nothing."""


def request(device: str | None, rules: Sequence[str]) -> dict[str, Any]:
    """The control request: `device` None for every device (then no rules)."""
    return {"command": COMMAND, "device": device, "rules": list(rules)}


def _learning_rules(config: AgentConfig) -> dict[str, list[str]]:
    """Each device's rules that learn (devices without any left out)."""
    rules = {device.name: [name for name, rule in config.rules_of(device.name)
                           if rule.kind in LEARNING_KINDS] for device in config.devices}
    return {device: names for device, names in rules.items() if names}


def targets(config: AgentConfig, device: str | None, rules: Sequence[str]) -> dict[str, list[str]]:
    """Device -> the rules to forget: the named ones, or all that learn; every device's
    when `device` is None. Raises RelearnError naming what is known."""
    learning = _learning_rules(config)
    if device is None:
        if rules:
            raise RelearnError("rule names need a device: relearn DEVICE RULE ...")
        return learning
    if device not in {d.name for d in config.devices}:
        known = ", ".join(learning) or "none"
        raise RelearnError(f"no device named {device!r}; devices with rules that learn: {known}")
    if device not in learning:
        raise RelearnError(f"device {device!r} has no rule that learns "
                           f"({', '.join(LEARNING_KINDS)}): nothing to forget")
    kinds = {name: rule.kind for name, rule in config.rules_of(device)}
    known = ", ".join(learning[device])
    for rule in rules:
        if rule not in kinds:
            raise RelearnError(f"device {device!r} has no rule named {rule!r}; "
                               f"its rules that learn: {known}")
        if kinds[rule] not in LEARNING_KINDS:
            raise RelearnError(f"rule {rule!r} of device {device!r} is a {kinds[rule]} rule, "
                               f"which learns nothing; its rules that learn: {known}")
    return {device: list(dict.fromkeys(rules)) or learning[device]}


def _parse(req: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    device, rules = req.get("device"), req.get("rules", [])
    if not (device is None or isinstance(device, str)) or not isinstance(rules, list) \
            or not all(isinstance(rule, str) for rule in rules):
        raise RelearnError("a relearn request names a device (or null for all) and a list "
                           "of rules")
    return device, rules


# --- in the running agent ------------------------------------------------------------------


def forget_running(config: AgentConfig, learned: Mapping[str, KeepLearned],
                   req: Mapping[str, Any], time_ns: int) -> tuple[dict[str, Any], list[Event]]:
    """The agent's answer to a relearn request, and the events of the episodes it ended
    (for the store). `learned`: the running devices' learned state, by device."""
    device, rules = _parse(req)
    forgotten: dict[str, Any] = {}
    events: list[Event] = []
    for name, names in targets(config, device, rules).items():
        # Every device with rules has its learned state while the agent runs (the caller
        # answers only once all started, never during a reload or once stopping).
        ended, rows = learned[name].forget(names, time_ns)
        events += ended
        forgotten[name] = {"rules": names, "rows": [describe_row(key) for key in rows],
                           "path": str(state_path(config.gateway.state_dir, name))}
    return {"ok": True, "running": True, "forgotten": forgotten}, events


# --- with the agent stopped ----------------------------------------------------------------


def forget_saved(config: AgentConfig, device: str | None,
                 rules: Sequence[str]) -> dict[str, Any]:
    """Rewrite the state files without the rows of the rules to forget (the agent is not
    running); the answer, as the agent would give it."""
    forgotten: dict[str, Any] = {}
    for name, names in targets(config, device, rules).items():
        store = StateFile(state_path(config.gateway.state_dir, name))
        document = store.load_document()
        data = document.get("data")
        data = data if isinstance(data, dict) else {}
        every_rule = [rule for rule, _ in config.rules_of(name)]
        gone = in_rule_order((key for key in data if rule_of(key, every_rule) in names),
                             every_rule)
        if gone:
            rewritten = {**document, "data": {k: v for k, v in data.items() if k not in gone}}
            times = document.get("learned_at")
            if isinstance(times, dict):
                rewritten["learned_at"] = {k: v for k, v in times.items() if k not in gone}
            store.replace_now(rewritten)
        forgotten[name] = {"rules": names, "rows": [describe_row(key) for key in gone],
                           "path": str(store.path)}
    return {"ok": True, "running": False, "forgotten": forgotten}


# --- the command ---------------------------------------------------------------------------


def _ask_agent(config: AgentConfig, req: dict[str, Any]) -> dict[str, Any] | None:
    """The running agent's answer; None when no agent listens."""
    path = config.gateway.state_dir / CONTROL_SOCKET
    try:
        return ask(path, req)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except ValueError:
        raise OSError(f"the agent closed {path} without answering (was it stopping?); "
                      "run the command again") from None


def _status_answers(config: AgentConfig) -> bool:
    from agent.service.status import STATUS_SOCKET, read_status

    try:
        read_status(config.gateway.state_dir / STATUS_SOCKET)
    except (OSError, ValueError):
        return False
    return True


def describe(answer: Mapping[str, Any]) -> list[str]:
    """What was forgotten, one line per device."""
    forgotten: Mapping[str, Any] = answer["forgotten"]
    if not forgotten:
        return ["no device has a rule that learns: nothing to forget"]
    when = ("learning again from the next samples" if answer["running"]
            else "learning again from the first samples once the agent runs")
    lines = []
    for device, item in forgotten.items():
        if item["rows"]:
            where = "" if answer["running"] else f" in {item['path']}"
            lines.append(f"{device}: forgot {', '.join(item['rows'])}{where}; {when}")
        else:
            lines.append(f"{device}: {', '.join(item['rules'])} had learned nothing yet; {when}")
    return lines


def run(config: AgentConfig, device: str | None, rules: Sequence[str], out: TextIO,
        err: TextIO) -> int:
    """`edge-agent relearn`: through the running agent, else in the state files."""
    req = request(device, rules)
    try:
        answer = _ask_agent(config, req)
        if answer is None:
            if _status_answers(config):
                print(f"relearn: the agent is running but does not answer on "
                      f"{config.gateway.state_dir / CONTROL_SOCKET} (its log says why: "
                      "control_socket_failed); restart it, or stop it and run this again",
                      file=err)
                return EXIT_FAILURE
            answer = forget_saved(config, device, rules)
            # An agent started meanwhile may have read the file before it was rewritten.
            answer = _ask_agent(config, req) or answer
    except RelearnError as exc:
        print(f"relearn: {exc}", file=err)
        return EXIT_USAGE
    except PermissionError as exc:
        print(f"relearn: not allowed: {exc} (run as the agent's user or root)", file=err)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"relearn: {exc}", file=err)
        return EXIT_FAILURE
    if not answer.get("ok"):
        print(f"relearn: {answer.get('error')}", file=err)
        return int(answer.get("exit", EXIT_FAILURE))
    for line in describe(answer):
        print(line, file=out)
    return EXIT_OK
