"""Configuration: load config.yaml (plus overlays) and validate it against the JSON schema.

The same validator runs in the Snakefile and in the ``sharpgen`` CLI, so an invalid key or value
stops either with a message that names the key, e.g. ``config key 'patches.mode': 'zoom' is not
one of ['crop', 'resize']``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA = REPO_ROOT / "rules" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict:
    """Return ``base`` updated recursively by ``overlay`` (Snakemake's --configfile semantics)."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(*paths: str | Path, schema: str | Path = DEFAULT_SCHEMA) -> dict:
    """Load ``config.yaml`` (or the first path) merged with later overlays, then validate."""
    paths = paths or (DEFAULT_CONFIG,)
    config: dict = {}
    for p in paths:
        with open(p) as fh:
            config = deep_merge(config, yaml.safe_load(fh) or {})
    validate_config(config, schema)
    return config


def validate_config(config: Mapping[str, Any], schema: str | Path = DEFAULT_SCHEMA) -> None:
    """Raise :class:`ConfigError` naming the first invalid key (dotted path) and why."""
    import jsonschema

    with open(schema) as fh:
        schema_obj = yaml.safe_load(fh)
    validator = jsonschema.Draft202012Validator(schema_obj)
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    lines = []
    for err in errors:
        key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            where = f"'{key}'" if err.absolute_path else "the top level"
            lines.append(f"unknown config key(s) {extra} under {where}")
        else:
            lines.append(f"config key '{key}': {err.message}")
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def section_hash(*sections: Any) -> str:
    """Short stable hash of config sections (used to key checkpoint folders)."""
    blob = json.dumps(sections, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
