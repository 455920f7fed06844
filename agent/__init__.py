"""The edge agent daemon: configuration, runtime, detection, events, store, uplink, CLI."""

from importlib import metadata

try:
    __version__ = metadata.version("edge-agent")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
