"""Device profiles: ready register maps of common meters, so a device is a profile plus an address.

A profile is a YAML file (`config/profiles/<name>.yaml`) holding `profile`, `description`,
`source` (the datasheet it was taken from), a default `byte_order` and `tags`, written
exactly like a device's tags. It is looked up, first match wins, in:

1. `profiles/` beside the configuration file (a site's own maps),
2. `/usr/share/edge-agent/profiles/` (installed with the package),
3. `config/profiles/` of a source checkout.

`profile:` may also be a path to a file (relative to the configuration file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

INSTALLED_PROFILES = Path("/usr/share/edge-agent/profiles")
CHECKOUT_PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
PROFILE_KEYS = frozenset({"profile", "description", "source", "byte_order", "tags"})


def profile_dirs(config_dir: Path | None) -> list[Path]:
    """Where profiles are looked for, in order."""
    dirs = [config_dir / "profiles"] if config_dir is not None else []
    return [*dirs, INSTALLED_PROFILES, CHECKOUT_PROFILES]


def available_profiles(config_dir: Path | None = None) -> list[str]:
    """Names of every profile found, for the "did you mean" of an unknown one."""
    names = {p.stem for d in profile_dirs(config_dir) if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_profile(name: str, config_dir: Path | None) -> Path:
    if "/" in name or name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_absolute() and config_dir is not None:
            path = config_dir / path
        if not path.is_file():
            raise ValueError(f"profile file {path} does not exist")
        return path
    for directory in profile_dirs(config_dir):
        path = directory / f"{name}.yaml"
        if path.is_file():
            return path
    known = available_profiles(config_dir)
    raise ValueError(
        f"unknown profile {name!r}; known: {', '.join(known) or 'none'} "
        f"(looked in {', '.join(str(d) for d in profile_dirs(config_dir))})"
    )


def read_profile(path: Path) -> dict[str, Any]:
    """The profile's content as plain data, its shape checked (its tags are checked by the caller)."""
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"profile {path}: cannot read it: {exc}") from exc
    except YAMLError as exc:
        raise ValueError(f"profile {path}: YAML syntax error: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("tags"), list):
        # ValueError, not TypeError: pydantic reports only ValueErrors as configuration errors.
        raise ValueError(f"profile {path}: must be a mapping with a list of tags")  # noqa: TRY004
    unknown = sorted(set(data) - PROFILE_KEYS)
    if unknown:
        raise ValueError(f"profile {path}: unknown key(s) {', '.join(unknown)}")
    return data
