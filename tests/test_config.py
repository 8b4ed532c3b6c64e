"""Config loading and schema validation: invalid keys and values are named in the error."""

from __future__ import annotations

import copy
from datetime import datetime

import pytest
import yaml

from sharpgen.config import ConfigError, deep_merge, load_config, parse_tai, validate_config


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


# --- semantic checks (check_semantics, run at the end of validate_config) --------------------
@pytest.mark.parametrize("split, message", [
    ({"train": 0.5, "val": 0.5, "test": 0.5},
     r"patches.split \(train=0.5, val=0.5, test=0.5\): the fractions sum to 1.5, not 1 \(within 1e-06\)"),
    ({"train": 0.0, "val": 0.0, "test": 0.0},
     r"patches.split \(train=0.0, val=0.0, test=0.0\): train must be > 0"),
    ({"train": 0.0, "val": 0.5, "test": 0.5}, r"train must be > 0"),
    ({"train": 0.7, "val": 0.15, "test": 0.16}, r"sum to 1.01, not 1"),
])
def test_split_fractions_are_checked_at_config_time(repo_root, split, message):
    """Issue 18: 0.5/0.5/0.5 was silently rescaled, all zeros failed after reading every record."""
    cfg = _default(repo_root)
    cfg["patches"]["split"].update(split)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_negative_split_fraction_is_named(repo_root):
    cfg = _default(repo_root)
    cfg["patches"]["split"].update(train=1.1, val=-0.1, test=0.0)
    with pytest.raises(ConfigError, match=r"config key 'patches.split.val': -0.1 is less than the minimum of 0"):
        validate_config(cfg)


def test_split_fractions_summing_to_one_pass(repo_root):
    cfg = _default(repo_root)
    cfg["patches"]["split"].update(train=0.8, val=0.1, test=0.1)  # 0.8 + 0.1 + 0.1 != 1.0 in binary
    validate_config(cfg)
    cfg["patches"]["split"].update(train=1.0, val=0.0, test=0.0)
    validate_config(cfg)


@pytest.mark.parametrize("times, message", [
    ({"start": "2010.06.01_00:00:00_TAI", "end": "2010.05.01_00:00:00_TAI"},
     r"config keys 'data.jsoc.start'/'data.jsoc.end': the time range ends before it starts "
     r"\(start '2010.06.01_00:00:00_TAI', end '2010.05.01_00:00:00_TAI'\)"),
    ({"start": "2010.05.01 00:00"},
     r"config key 'data.jsoc.start': '2010.05.01 00:00' is not a JSOC TAI time \(expected YYYY.MM.DD_hh:mm:ss_TAI"),
    ({"end": "2010.06.31_00:00:00_TAI"},
     r"config key 'data.jsoc.end': '2010.06.31_00:00:00_TAI' is not a valid TAI time: day is out of range"),
    ({"end": "2010.06.01_00:00:00_UTC"}, r"config key 'data.jsoc.end': .*time zone 'UTC' is not TAI"),
])
def test_jsoc_time_range_is_checked_at_config_time(repo_root, times, message):
    """Issue 15: a range ending before it starts, or an unparseable time, used to surface as
    'no records ... pass the filters' after a JSOC query."""
    cfg = _default(repo_root)
    cfg["data"]["jsoc"].update(times)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_jsoc_time_range_accepts_jsoc_forms(repo_root):
    cfg = _default(repo_root)
    cfg["data"]["jsoc"].update(start="2012.03.06_14:24_TAI", end="2012.03.07")
    validate_config(cfg)
    cfg["data"]["jsoc"].update(start="2012.03.07_00:00:00_TAI", end="2012.03.07_00:00:00_TAI")
    validate_config(cfg)  # one instant is a valid (one-step) range


def test_every_semantic_problem_is_listed(repo_root):
    cfg = _default(repo_root)
    cfg["patches"]["split"].update(train=0.5, val=0.5, test=0.5)
    cfg["data"]["jsoc"].update(start="2011.01.01_00:00:00_TAI", end="2010.01.01_00:00:00_TAI")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "patches.split" in str(err.value) and "ends before it starts" in str(err.value)


def test_local_glob_takes_one_glob_or_a_list(repo_root):
    cfg = _default(repo_root)
    cfg["data"]["local"]["glob"] = ["a/*.Br.fits", "b/*.Br.fits"]
    validate_config(cfg)
    cfg["data"]["local"]["glob"] = []
    with pytest.raises(ConfigError, match=r"config key 'data.local.glob'"):
        validate_config(cfg)


def test_max_pad_fraction_is_a_fraction(repo_root):
    cfg = _default(repo_root)
    assert cfg["patches"]["max_pad_fraction"] == 0.8
    cfg["patches"]["max_pad_fraction"] = 1.5
    with pytest.raises(ConfigError, match=r"config key 'patches.max_pad_fraction': 1.5 is greater than the maximum of 1"):
        validate_config(cfg)


# --- JSOC TAI times (parse_tai) ----------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("2010.05.01_00:00:00_TAI", datetime(2010, 5, 1)),
    ("2012.03.06_14:24:00_TAI", datetime(2012, 3, 6, 14, 24)),
    ("2012.03.06_14:24_TAI", datetime(2012, 3, 6, 14, 24)),
    ("2012.03.06_14:24:07.5_TAI", datetime(2012, 3, 6, 14, 24, 7, 500000)),
    ("2012.03.06", datetime(2012, 3, 6)),
    ("2012.03.06_14:24:00", datetime(2012, 3, 6, 14, 24)),
])
def test_parse_tai(text, expected):
    assert parse_tai(text) == expected


@pytest.mark.parametrize("text, message", [
    ("2010-05-01T00:00:00", "is not a JSOC TAI time"),
    ("yesterday", "is not a JSOC TAI time"),
    ("2010.13.01_00:00:00_TAI", "month must be in 1..12"),
    ("2010.02.30_00:00:00_TAI", "day is out of range"),
    ("2010.05.01_25:00:00_TAI", "hour must be in 0..23"),
    ("2010.05.01_00:00:00_UTC", "time zone 'UTC' is not TAI"),
    (20100501, "is not a string"),
])
def test_parse_tai_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tai(text)


def test_config_yaml_spells_out_exactly_the_schema_defaults():
    """Defaults live in the schema; config.yaml repeats them for the reader and must agree (the
    registry-derived directions.parameters is left out of config.yaml on purpose)."""
    import yaml

    from sharpgen.config import DEFAULT_CONFIG, load_schema, schema_defaults
    from sharpgen.parameters import REQUESTABLE

    defaults = schema_defaults(load_schema())
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert defaults["directions"].pop("parameters") == list(REQUESTABLE)
    assert raw == defaults


def test_validation_fills_every_default_and_typed_sections_need_no_get():
    from sharpgen.config import section, typed, validate_config
    from sharpgen.directions.config import DirectionsConfig

    cfg = {"data": {"source": "synthetic"}, "patches": {"mode": "crop", "size": 64, "clip_gauss": 500.0},
           "gan": {"arch": "paper", "nz": 100, "steps": 3, "batch_size": 4},
           "sampling": {"n": 10, "seed": 1}, "directions": {}, "ssl": {}, "retrieval": {}, "report": {},
           "results_dir": "r", "checkpoint_dir": "c"}
    validate_config(cfg)
    assert cfg["patches"]["bin"] == 2 and cfg["patches"]["clip_gauss"] == 500.0  # given value wins
    assert cfg["directions"]["traversal"]["n_base"] == 128 and cfg["gan"]["log_every"] == 25
    d = typed(DirectionsConfig, cfg["directions"])
    assert d.traversal.n_eps == 13 and d.parameters[0] == "tuf" and isinstance(d.strips.directions, tuple)
    assert section("ssl", {"augment": {"hflip": False}})["augment"]["vflip"] is True
    with pytest.raises(Exception, match="unknown config key"):
        typed(DirectionsConfig, {**cfg["directions"], "log_params": ["tuf"]})
