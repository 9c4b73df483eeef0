"""Strict typed experiment configs: YAML with ``_base_`` inheritance and dotted overrides."""

from attnkit.config.diff import ABSENT, config_diff, flatten
from attnkit.config.loader import (
    CONFIG_FILENAME,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)
from attnkit.config.schema import ExperimentConfig

__all__ = [
    "ABSENT",
    "CONFIG_FILENAME",
    "ConfigError",
    "ExperimentConfig",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
    "parse_override",
    "save_config",
]
