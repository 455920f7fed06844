"""Configuration: the YAML schema (`models`) and its loader with line-numbered errors."""

from agent.config.loader import ConfigError, LoadedConfig, load_config
from agent.config.models import AgentConfig

__all__ = ["AgentConfig", "ConfigError", "LoadedConfig", "load_config"]
