"""Load the YAML file into an `AgentConfig`, with errors a technician can act on.

Every error names the file, the line, the key path and what was expected, e.g.
`config.yaml:14: devices[0].tags[2].type: 'flaot32' is not one of int16, ...`.
`${NAME}` (or `${NAME:-default}`) in a value is replaced from the environment,
so that secrets stay out of the file; `$$` stands for a literal `$`.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from agent.config.models import AgentConfig

Loc = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The file cannot be used; `lines` are the messages, one per problem, in file order."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: AgentConfig
    path: Path
    sha256: str
    """Hash of the file as written (before substitution): identifies the config in use."""


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, substitute, validate. Raises ConfigError with every problem found."""
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration: {exc.strerror}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc

    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{path}:{line}: YAML syntax error: {problem}"]) from exc
    if not isinstance(document, CommentedMap):
        raise ConfigError([f"{path}:1: the file must be a mapping of sections (gateway, mqtt, devices, ...)"])

    lines: dict[Loc, int] = {}
    problems: list[tuple[int, str]] = []
    data = _to_plain(document, (), 1, lines, env, problems)
    if problems:
        raise ConfigError([f"{path}:{line}: {msg}" for line, msg in sorted(problems)])

    try:
        # Device profiles are looked up beside the file first (drivers/modbus/profiles.py).
        config = AgentConfig.model_validate(data, context={"config_dir": path.parent.resolve()})
    except ValidationError as exc:
        messages = sorted(_describe(err, data, lines) for err in exc.errors())
        raise ConfigError([f"{path}:{line}: {msg}" for line, msg in messages]) from exc
    return LoadedConfig(config=config, path=path, sha256=hashlib.sha256(raw).hexdigest())


def _to_plain(
    node: Any,
    loc: Loc,
    line: int,
    lines: dict[Loc, int],
    env: Mapping[str, str],
    problems: list[tuple[int, str]],
) -> Any:
    """Plain Python data from the YAML tree, recording the line of every key path."""
    lines[loc] = line
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            key_line = node.lc.key(key)[0] + 1
            value_line = node.lc.value(key)[0] + 1
            # A scalar is reported on its own line; a nested section on its key's line.
            child_line = value_line if not isinstance(value, (CommentedMap, CommentedSeq)) else key_line
            out[str(key)] = _to_plain(value, (*loc, str(key)), child_line, lines, env, problems)
        return out
    if isinstance(node, CommentedSeq):
        return [
            _to_plain(item, (*loc, i), node.lc.item(i)[0] + 1, lines, env, problems)
            for i, item in enumerate(node)
        ]
    if isinstance(node, str):
        return _substitute(node, loc, line, env, problems)
    return node


def _substitute(
    value: str, loc: Loc, line: int, env: Mapping[str, str], problems: list[tuple[int, str]]
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        message = (
            f"{format_loc(loc)}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )
        problems.append((line, message))
        return ""

    return _ENV_REF.sub(replace, str(value))


def format_loc(loc: Loc) -> str:
    """`devices[0].tags[2].type` from ('devices', 0, 'tags', 2, 'type')."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _data_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Drop the parts of a pydantic location that are not keys of the file (union tags)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("protocol") == part:
            continue  # the discriminator's tag: which device model validated this entry
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part in (node.get("kind"), node.get("protocol")):
            continue  # the tag pydantic adds for a discriminated union (`detectors[0].limits`)
        elif isinstance(node, dict | list):
            if isinstance(part, str) and not isinstance(node, list):
                out.append(part)  # a key that is missing or unknown
                break
            continue
        else:
            break
        out.append(part)
    return tuple(out)


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _describe(err: Any, data: Any, lines: dict[Loc, int]) -> tuple[int, str]:
    loc = _data_loc(tuple(err["loc"]), data)
    kind = err["type"]
    where = format_loc(loc)
    value = err.get("input")
    if kind == "missing":
        parent = loc[:-1]
        return _line_of(parent, lines), f"{where}: required key '{loc[-1]}' is missing"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        hint = _did_you_mean(key, _all_field_names())
        return _line_of(loc, lines), f"{where}: unknown key '{key}'{hint}"
    if kind in ("literal_error", "enum"):
        options = [o.strip().strip("'") for o in re.split(r",| or ", err["ctx"]["expected"])]
        options = [o for o in options if o]
        hint = _did_you_mean(str(value), options)
        return _line_of(loc, lines), f"{where}: {value!r} is not one of {', '.join(options)}{hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # The key that picks the model: `protocol` for a device, `kind` for a detector rule.
        key = str(err["ctx"].get("discriminator", "protocol")).strip("'")
        expected = err["ctx"].get("expected_tags", "").replace("'", "")
        if kind == "union_tag_invalid":
            tag = str(value.get(key))
            got = f"{value.get(key)!r} is not one of {expected}" + _did_you_mean(
                tag, [t.strip() for t in expected.split(",")])
        else:
            got = f"required key {key!r} is missing" + (f"; use one of {expected}"
                                                         if expected else "")
        return _line_of((*loc, key), lines), f"{where}.{key}: {got}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if narrowed := _AT.match(message):  # "at [2].tags: ..." names a place inside `loc`
        inner = tuple(int(p[1:-1]) if p.startswith("[") else p
                      for p in re.findall(r"\[\d+\]|\w+", narrowed.group(1)))
        loc = _data_loc((*loc, *inner), data)
        where, message = format_loc(loc), narrowed.group(2)
    message = message[:1].lower() + message[1:]
    shown = "" if narrowed or isinstance(value, dict | list) else f" (got {value!r})"
    return _line_of(loc, lines), f"{where}: {message}{shown}"


_AT = re.compile(r"^at ((?:\[\d+\]|\.\w+)+): (.*)$", re.DOTALL)


def _did_you_mean(word: str, options: list[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _all_field_names() -> frozenset[str]:
    return frozenset(_walk_fields(AgentConfig))


def _walk_fields(model: type[BaseModel]) -> Iterator[str]:
    for name, field in model.model_fields.items():
        yield name
        for inner in _models_in(field.annotation):
            yield from _walk_fields(inner)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _models_in(arg)
