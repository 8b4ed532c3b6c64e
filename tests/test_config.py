"""Config loading and schema validation: invalid keys and values are named in the error."""

from __future__ import annotations

import copy

import pytest
import yaml

from sharpgen.config import ConfigError, deep_merge, load_config, validate_config


def _default(repo_root):
    with open(repo_root / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_default_config_is_valid(repo_root):
    cfg = load_config(repo_root / "config.yaml")
    assert cfg["data"]["source"] in {"synthetic", "local", "jsoc"}


def test_tiny_overlay_is_valid(repo_root):
    load_config(repo_root / "config.yaml", repo_root / "tests" / "configs" / "tiny.yaml")


def test_unknown_key_is_named(repo_root):
    cfg = _default(repo_root)
    cfg["patches"]["sise"] = 64
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['sise'\] under 'patches'"):
        validate_config(cfg)


def test_unknown_top_level_key_is_named(repo_root):
    cfg = _default(repo_root)
    cfg["gann"] = {}
    with pytest.raises(ConfigError, match=r"\['gann'\] under the top level"):
        validate_config(cfg)


def test_bad_value_is_named(repo_root):
    cfg = _default(repo_root)
    cfg["patches"]["mode"] = "zoom"
    with pytest.raises(ConfigError, match=r"config key 'patches.mode': 'zoom' is not one of"):
        validate_config(cfg)


def test_deep_merge_is_recursive_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    snapshot = copy.deepcopy(base)
    out = deep_merge(base, {"a": {"c": 5}})
    assert out == {"a": {"b": 1, "c": 5}, "d": 3}
    assert base == snapshot
