"""Load the YAML file into an `AgentConfig`, with errors a technician can act on.

Every error names the file, the line, the key path and what was expected, e.g.
`config.yaml:14: devices[0].tags[2].type: 'flaot32' is not one of int16, ...`.
`${NAME}` (or `${NAME:-default}`) in a value is replaced from the environment,
so that secrets stay out of the file; `$$` stands for a literal `$`. Anchors and merge keys
work (`<<: *meter`); top-level keys starting `x-` are ignored, a place to define them. The
file is bounded (size, nesting, alias expansion, tags) so that any input is an error message.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError

from agent.config.models import AgentConfig

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

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
    literal_secrets: tuple[str, ...] = ()
    """Key paths of secrets written in the file itself, not taken from the environment."""


MAX_BYTES = 256 << 10
"""A configuration is a few kB (a thousand tags: some 70 kB); the YAML parser needs about a
second per 100 kB, so a larger file is refused before it is parsed."""
MAX_DEPTH = 32
"""Sections nest a few levels; deeper is a mistake or an attack on the parser."""
MAX_VALUES = 100_000
"""Values after expanding aliases (`*name`): a few anchors can otherwise expand exponentially."""
MAX_PROBLEMS = 50
"""Problems listed; the count of the rest follows."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")
_CORE = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))


def load_config(path: Path | str, environ: Mapping[str, str] | None = None, *,
                local_files: bool = True) -> LoadedConfig:
    """Read, substitute, validate. Raises ConfigError with every problem found (and nothing
    else, whatever the file holds: a reload must never stop the agent). `local_files=False`:
    the file is for another machine (checked before a push), whose key files are not here."""
    path = Path(path)
    # Device profiles are looked up beside the file first (drivers/modbus/profiles.py).
    loaded = load_model(path, AgentConfig, environ,
                        context={"config_dir": path.parent.resolve(), "local_files": local_files},
                        sections="gateway, mqtt, devices, ...")
    return LoadedConfig(config=loaded.model, path=path, sha256=loaded.sha256,
                        literal_secrets=loaded.literal_secrets)


@dataclass(frozen=True, slots=True)
class LoadedModel(Generic[M]):
    model: M
    sha256: str
    literal_secrets: tuple[str, ...]


def load_model(path: Path, model: type[M], environ: Mapping[str, str] | None = None, *,
               context: Mapping[str, Any] | None = None, sections: str = "") -> LoadedModel[M]:
    """Any configuration model from a YAML file, with the same bounds and `file:line`
    messages as the agent's (the fleet side's config uses it too)."""
    env = os.environ if environ is None else environ
    raw = _read(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    if bad := _CONTROL.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise ConfigError([(f"{path}:{line}: control character U+{ord(bad.group()):04X} at column "
                           f"{column}: only tab, newline and carriage return may appear")])
    if (depth := _flow_depth(text)) > MAX_DEPTH:
        raise ConfigError([f"{path}:{depth.line}: nested deeper than {MAX_DEPTH} levels"])
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{path}:{line}: YAML syntax error: {problem}"]) from exc
    except (RecursionError, MemoryError) as exc:
        raise ConfigError([(f"{path}: nested too deep to read (sections nest at most "
                           f"{MAX_DEPTH} levels)")]) from exc
    except Exception as exc:  # ruamel's reader and constructor errors are not all marked
        raise ConfigError([(f"{path}: not a YAML file this agent can read "
                           f"({type(exc).__name__})")]) from exc
    if not isinstance(document, CommentedMap):
        raise ConfigError([f"{path}:1: the file must be a mapping of sections ({sections})"])

    walk = _Walk(env, _secret_field_names(model))
    data = walk.plain(document, (), 1)
    if walk.problems:
        raise ConfigError(_listed(path, walk.problems))

    try:
        validated = model.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        errors = exc.errors()
        messages = [_describe(err, data, walk.lines, model) for err in errors[:MAX_PROBLEMS]]
        raise ConfigError(_listed(path, messages, len(errors))) from exc
    return LoadedModel(validated, hashlib.sha256(raw).hexdigest(), tuple(walk.literal_secrets))


class _Depth(int):
    line: int


def _flow_depth(text: str) -> _Depth:
    """The deepest nesting of [ and { outside quotes and comments, and its line: the parser
    recurses per level, so a thousand of them would exhaust the stack before it says so."""
    deepest, depth, line, at, quote = 0, 0, 1, 1, ""
    comment = False
    for ch in text:
        if ch == "\n":
            line, comment = line + 1, False
        elif comment:
            continue
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, line
        elif ch in "]}":
            depth = max(depth - 1, 0)
    out = _Depth(deepest)
    out.line = at
    return out


def _read(path: Path) -> bytes:
    """The file's bytes; a FIFO, a device or a huge file is refused before it is read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(
                st.st_mode) else "a device or socket"
            raise ConfigError([f"{path}: not a regular file ({what}): give the YAML file itself"])
        if st.st_size > MAX_BYTES:
            raise ConfigError([(f"{path}: {st.st_size:,} bytes is too large for a configuration "
                               f"(at most {MAX_BYTES:,})")])
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration: {exc.strerror}"]) from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{path}: too large for a configuration (at most {MAX_BYTES:,} bytes)"])
    return raw


def _listed(path: Path, problems: list[tuple[int, str]], total: int = 0) -> list[str]:
    """`file:line: message` in file order, at most MAX_PROBLEMS of them and the count left."""
    total = max(total, len(problems))
    shown = sorted(problems)[:MAX_PROBLEMS]
    out = [f"{path}:{line}: {msg}" for line, msg in shown]
    if total > len(shown):
        out.append(f"{path}: ... and {total - len(shown):,} more problems")
    return out


class _Walk:
    """Plain Python data from the YAML tree, recording the line of every key path; tags,
    depth and alias expansion are bounded here."""

    def __init__(self, env: Mapping[str, str], secrets: frozenset[str]) -> None:
        self.env = env
        self.secrets = secrets
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[int, str]] = []
        self.values = 0
        self.literal_secrets: list[str] = []

    def plain(self, node: Any, loc: Loc, line: int) -> Any:
        self.lines[loc] = line
        self.values += 1
        if self.values > MAX_VALUES:
            if self.values == MAX_VALUES + 1:
                self.problems.append((line, (f"{format_loc(loc)}: more than {MAX_VALUES:,} values "
                                            f"once aliases (*name) are expanded")))
            return None
        if len(loc) > MAX_DEPTH:
            if not any("nested deeper" in m for _, m in self.problems):
                self.problems.append((line, (f"{format_loc(loc[:MAX_DEPTH])}: nested deeper than "
                                            f"{MAX_DEPTH} levels")))
            return None
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag is not None and tag not in _PLAIN_TAGS:
            shown = tag.replace(_CORE, "!!")
            self.problems.append((line, (f"{format_loc(loc)}: the YAML tag {shown} is not allowed "
                                        f"(a configuration holds plain values)")))
            return None
        if isinstance(node, CommentedMap):
            out: dict[Any, Any] = {}
            for key, value in node.items():
                if not loc and str(key).startswith("x-"):
                    continue  # a section of its own for anchors (`x-meter: &meter ...`)
                key_line, value_line = _key_lines(node, key, line)
                # A scalar is reported on its own line; a nested section on its key's line.
                nested = isinstance(value, (CommentedMap, CommentedSeq))
                out[str(key)] = self.plain(value, (*loc, str(key)),
                                           key_line if nested else value_line)
            return out
        if isinstance(node, CommentedSeq):
            return [self.plain(item, (*loc, i), node.lc.item(i)[0] + 1 if i in node.lc.data
                               else line) for i, item in enumerate(node)]
        if isinstance(node, TaggedScalar):  # an explicit !!str and the like
            node = str(node.value)
        if loc and loc[-1] in self.secrets and node is not None and not (
                isinstance(node, str) and _ENV_REF.search(node)):
            self.literal_secrets.append(format_loc(loc))
        if isinstance(node, str):
            return _substitute(node, loc, line, self.env, self.problems)
        return node


def _key_lines(node: CommentedMap, key: Any, fallback: int) -> tuple[int, int]:
    """Lines of a key and its value, looked up in the maps merged in (`<<: *name`) too."""
    merged = [m[-1] if isinstance(m, tuple) else m for m in getattr(node, "merge", ())]
    for source in (node, *merged):
        if key in source.lc.data:
            return source.lc.key(key)[0] + 1, source.lc.value(key)[0] + 1
    return fallback, fallback


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


def _describe(err: Any, data: Any, lines: dict[Loc, int],
              model: type[BaseModel]) -> tuple[int, str]:
    loc = _data_loc(tuple(err["loc"]), data)
    kind = err["type"]
    where = format_loc(loc)
    value = err.get("input")
    if kind == "missing":
        parent = loc[:-1]
        return _line_of(parent, lines), f"{where}: required key '{loc[-1]}' is missing"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        hint = _did_you_mean(key, _all_field_names(model))
        return _line_of(loc, lines), f"{where}: unknown key '{key}'{hint}"
    if kind in ("literal_error", "enum"):
        options = [o.strip().strip("'") for o in re.split(r",| or ", err["ctx"]["expected"])]
        options = [o for o in options if o]
        meant = _MEANT.get(str(value).lower())
        hint = (f" ({value} is {meant} here)" if meant in options else
                _did_you_mean(str(value), options))
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
    secret = bool(loc) and loc[-1] in _secret_field_names(model)
    if secret and kind == "string_type":
        message += " (put it in quotes, or better in the environment: ${NAME})"
    shown = "" if narrowed or secret or isinstance(value, dict | list) else f" (got {value!r})"
    return _line_of(loc, lines), f"{where}: {message}{shown}"


_MEANT = {"float": "float32", "real": "float32", "single": "float32", "double": "float64",
          "lreal": "float64", "int": "int16", "short": "int16", "uint": "uint16",
          "word": "uint16", "dint": "int32", "long": "int32", "udint": "uint32",
          "dword": "uint32", "lint": "int64", "ulint": "uint64", "lword": "uint64"}
"""Register types by what a PLC's or a datasheet's name means (IEC 61131-3: REAL is 32 bits,
INT 16), where spelling would suggest another (`float` is not `float64`)."""

_AT = re.compile(r"^at ((?:\[\d+\]|\.\w+)+): (.*)$", re.DOTALL)


def _did_you_mean(word: str, options: list[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.cache
def _all_field_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, _ in _walk_fields(model))


@functools.cache
def _secret_field_names(model: type[BaseModel]) -> frozenset[str]:
    """Keys whose value is never shown in a message, whatever its type (a numeric password)."""
    return frozenset(name for name, annotation in _walk_fields(model)
                     if _mentions(annotation, SecretStr))


def _walk_fields(model: type[BaseModel]) -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        yield name, field.annotation
        for inner in _models_in(field.annotation):
            yield from _walk_fields(inner)


def _mentions(annotation: Any, wanted: type) -> bool:
    return annotation is wanted or any(_mentions(a, wanted)
                                       for a in getattr(annotation, "__args__", ()))


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _models_in(arg)
