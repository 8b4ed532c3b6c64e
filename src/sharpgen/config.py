"""Configuration: load config.yaml (plus overlays), validate it, fill defaults, typed sections.

The same validator runs in the Snakefile and in the ``sharpgen`` CLI, so an invalid key or value
stops either with a message that names the key, e.g. ``config key 'patches.mode': 'zoom' is not
one of ['crop', 'resize']``.

Defaults live in one place, the JSON schema (``default:`` of every leaf of
rules/schemas/config.schema.yaml; ``x-registry-default: requestable`` takes the parameter list
from :mod:`sharpgen.parameters`). :func:`validate_config` fills them in, so every stage sees
every key; :func:`section` does the same for one section given as a partial mapping (tests,
library use), and :func:`typed` turns a section into the stage's frozen dataclass.
config.yaml spells the defaults out for the reader (tests/test_config.py checks they agree).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import re
import typing
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


@functools.lru_cache(maxsize=8)
def _load_schema(path: str) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def load_schema(schema: str | Path = DEFAULT_SCHEMA) -> dict:
    """The config schema as a dict (a fresh copy)."""
    return copy.deepcopy(_load_schema(str(schema)))


def _registry_default(kind: str) -> list:
    from sharpgen import parameters

    if kind == "requestable":
        return list(parameters.REQUESTABLE)
    raise ConfigError(f"schema: unknown x-registry-default {kind!r}")


_NO_DEFAULT = object()


def schema_defaults(node: Mapping[str, Any]) -> Any:
    """Default value of a schema node: its ``default`` (or registry default), or for an object
    the dict of its properties' defaults (properties without one are left out)."""
    out = _default(node)
    return {} if out is _NO_DEFAULT else out


def _default(node: Mapping[str, Any]) -> Any:
    if "default" in node:
        return copy.deepcopy(node["default"])
    if "x-registry-default" in node:
        return _registry_default(node["x-registry-default"])
    if node.get("type") == "object" and "properties" in node:
        out = {}
        for key, sub in node["properties"].items():
            d = _default(sub)
            if d is not _NO_DEFAULT:
                out[key] = d
        return out
    return _NO_DEFAULT


def fill_defaults(config: Mapping[str, Any], schema: str | Path = DEFAULT_SCHEMA) -> dict:
    """``config`` with every key the schema has a default for filled in (values given win)."""
    return deep_merge(schema_defaults(load_schema(schema)), config)


def section(name: str, values: Mapping[str, Any] | None = None, schema: str | Path = DEFAULT_SCHEMA) -> dict:
    """One config section (e.g. ``"directions"``) with its schema defaults under ``values``."""
    node = load_schema(schema)["properties"][name]
    return deep_merge(schema_defaults(node), dict(values or {}))


T = typing.TypeVar("T")


def typed(cls: type[T], values: Mapping[str, Any]) -> T:
    """Frozen dataclass ``cls`` from a (defaults-filled) mapping: nested dataclass fields are
    built recursively, lists become tuples where the field is a tuple. Unknown keys -> ConfigError."""
    if isinstance(values, cls):
        return values
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v, hint = values[f.name], hints[f.name]
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint) and isinstance(v, Mapping):
            v = typed(hint, v)
        elif (hint is tuple or origin is tuple) and isinstance(v, (list, tuple)):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def validate_config(config: dict, schema: str | Path = DEFAULT_SCHEMA) -> None:
    """Raise :class:`ConfigError` naming every invalid key (dotted path) and why; then fill the
    schema's defaults into ``config`` in place, so that every stage sees every key."""
    import jsonschema

    schema_obj = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema_obj)
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: list(e.absolute_path))
    lines = []
    for err in errors:
        key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            where = f"'{key}'" if err.absolute_path else "the top level"
            lines.append(f"unknown config key(s) {extra} under {where}")
        else:
            lines.append(f"config key '{key}': {err.message}")
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    filled = deep_merge(schema_defaults(schema_obj), config)
    config.clear()
    config.update(filled)
    check_semantics(config)


# --- semantic checks: what the JSON schema cannot express (run by validate_config) ----------
# Self-contained on purpose: every rule's code closure contains this module, so it imports no
# stage module (sharpgen.patches and sharpgen.data use these helpers instead).

TAI_EXAMPLE = "2010.05.01_00:00:00_TAI"
_TAI_RE = re.compile(
    r"^(?P<y>\d{4})\.(?P<mo>\d{1,2})\.(?P<d>\d{1,2})"
    r"(?:_(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r"(?:_(?P<zone>[A-Za-z]+))?$"
)
#: fractions of the keys left out of ``patches.split``
def _split_defaults() -> dict[str, float]:
    split = schema_defaults(load_schema())["patches"]["split"]
    return {k: float(split[k]) for k in ("train", "val", "test")}


#: the schema's default split fractions (train / val / test)
SPLIT_DEFAULTS = _split_defaults()
SPLIT_SUM_TOL = 1e-6


def parse_tai(text: str) -> datetime.datetime:
    """A JSOC time in TAI, as ``T_REC`` and ``data.jsoc.start``/``end`` write it, -> naive
    datetime (TAI). Accepted: ``YYYY.MM.DD_hh:mm:ss_TAI`` and the forms JSOC also takes with the
    seconds, the time or the zone left out (``2010.05.01_00:00_TAI``, ``2010.05.01``; no zone
    means the series' TAI). Raises ValueError naming the text and the problem."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string (expected a TAI time like {TAI_EXAMPLE})")
    m = _TAI_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a JSOC TAI time (expected YYYY.MM.DD_hh:mm:ss_TAI, "
                         f"e.g. {TAI_EXAMPLE})")
    if m["zone"] is not None and m["zone"].upper() != "TAI":
        raise ValueError(f"{text!r}: time zone {m['zone']!r} is not TAI (write times as "
                         f"YYYY.MM.DD_hh:mm:ss_TAI, e.g. {TAI_EXAMPLE})")
    micro = int((m["f"] or "0")[:6].ljust(6, "0"))
    try:
        return datetime.datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"] or 0),
                                 int(m["mi"] or 0), int(m["s"] or 0), micro)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid TAI time: {exc}") from None


def split_fractions(split: Mapping[str, Any] | None) -> dict[str, float]:
    """The train/val/test fractions of a ``patches.split`` section (keys left out take
    :data:`SPLIT_DEFAULTS`), checked: each a number >= 0, train > 0, sum 1 within 1e-6. Nothing
    is rescaled. Raises ValueError naming the keys and values."""
    s = dict(split or {})
    fr, problems = {}, []
    for k, d in SPLIT_DEFAULTS.items():
        v = s.get(k, d)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            problems.append(f"{k}={v!r} is not a finite number")
            continue
        fr[k] = float(v)
        if v < 0:
            problems.append(f"{k}={v!r} is negative")
    if not problems:
        if fr["train"] <= 0:
            problems.append("train must be > 0 (the GAN and SimSiam train on it)")
        total = sum(fr.values())
        if abs(total - 1.0) > SPLIT_SUM_TOL:
            problems.append(f"the fractions sum to {total:.9g}, not 1 (within {SPLIT_SUM_TOL:g})")
    if problems:
        shown = ", ".join(f"{k}={s.get(k, d)!r}" + ("" if k in s else " (default)")
                          for k, d in SPLIT_DEFAULTS.items())
        raise ValueError(f"patches.split ({shown}): " + "; ".join(problems))
    return fr


def check_semantics(config: Mapping[str, Any]) -> None:
    """Checks across keys that the JSON schema cannot express, run by :func:`validate_config`
    after the schema, so that a bad setting stops the run before any record is read. Raises
    :class:`ConfigError` listing every problem with the keys and values:

    * ``patches.split``: every fraction >= 0, train > 0, train + val + test = 1 within 1e-6
      (:func:`split_fractions`; nothing is rescaled);
    * ``data.jsoc.start`` / ``end``: JSOC TAI times (:func:`parse_tai`), end not before start.
    """
    lines = []
    patches = config.get("patches") or {}
    if isinstance(patches, Mapping):
        try:
            split_fractions(patches.get("split"))
        except ValueError as exc:
            lines.append(str(exc))  # "patches.split (train=..., val=..., test=...): why"
    jsoc = (config.get("data") or {}).get("jsoc") or {}
    times = {}
    for key in ("start", "end"):
        if key in jsoc:
            try:
                times[key] = parse_tai(jsoc[key])
            except ValueError as exc:
                lines.append(f"config key 'data.jsoc.{key}': {exc}")
    if len(times) == 2 and times["end"] < times["start"]:
        lines.append(f"config keys 'data.jsoc.start'/'data.jsoc.end': the time range ends before it "
                     f"starts (start {jsoc['start']!r}, end {jsoc['end']!r})")
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def section_hash(*sections: Any) -> str:
    """Short stable hash of config sections (used to key checkpoint folders)."""
    blob = json.dumps(sections, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
