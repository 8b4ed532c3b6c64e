"""JSOC client side of the download: configuration, e-mail redaction, retries, the record
query and its filters, and export requests (see :mod:`sharpgen.jsoc` for the whole pipeline)."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd


logger = logging.getLogger("sharpgen.jsoc")

JSOC_SERVER = "http://jsoc.stanford.edu"
EMAIL_ENV = "JSOC_EMAIL"
#: keywords queried for every record (all are SHARP keywords of hmi.sharp_cea_720s)
QUERY_KEYS = ("HARPNUM", "T_REC", "NOAA_AR", "QUALITY", "LON_FWT", "LAT_FWT", "USFLUX", "R_VALUE")
MANIFEST_COLUMNS = ("path", "source", "harpnum", "t_rec")
PART_SUFFIX = ".part"
_CHUNK = 1 << 16
_WARNINGS_LOCK = threading.Lock()
_USER_AGENT = "sharpgen-jsoc (drms client)"


class JsocError(RuntimeError):
    """Any failure of the JSOC download path; the message names the record or request."""


class JsocExportError(JsocError):
    """JSOC refused or failed an export request (message carries JSOC's own error text)."""


class JsocDownloadError(JsocError):
    """One or more files could not be downloaded after all retries."""


class FitsCheckError(ValueError):
    """A downloaded file is not a complete, readable FITS file."""


class _TruncatedDownload(IOError):
    """Fewer bytes arrived than the server announced in Content-Length."""


@dataclass(frozen=True)
class JsocConfig:
    """The ``data.jsoc`` config section (see config.yaml for the meaning of each key)."""

    server: str
    email: str | None
    series: str
    segment: str
    start: str
    end: str
    cadence: str
    require_noaa: bool
    max_abs_lon_deg: float
    quality_mask: int
    max_records: int | None
    batch_size: int
    n_workers: int
    retries: int
    backoff_s: float
    poll_s: float
    timeout_s: float
    max_failures: int

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "JsocConfig":
        """From a (partial) ``data.jsoc`` section: schema defaults fill what is not given."""
        from sharpgen.config import section

        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise JsocError(f"unknown data.jsoc config key(s) {unknown}; known: {sorted(known)}")
        return cls(**section("data", {"jsoc": cfg})["jsoc"])

    def __repr__(self) -> str:  # never show the e-mail
        items = ", ".join(
            f"{f.name}={'<redacted>' if f.name == 'email' and self.email else repr(getattr(self, f.name))}"
            for f in fields(self)
        )
        return f"JsocConfig({items})"


# --------------------------------------------------------------------------------------------
# e-mail handling


def resolve_email(config_email: str | None = None) -> str:
    """The JSOC export e-mail: ``config_email`` if set, else env ``JSOC_EMAIL``; error if neither."""
    email = (config_email or os.environ.get(EMAIL_ENV) or "").strip()
    if not email:
        raise JsocError(
            f"no JSOC e-mail address: set config data.jsoc.email or the {EMAIL_ENV} environment "
            "variable to an address registered at http://jsoc.stanford.edu/ajax/register_email.html"
        )
    return email


def _secret_forms(secret: str) -> list[str]:
    forms = {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret)}
    forms.add(urllib.parse.quote_plus(urllib.parse.quote_plus(secret)))  # drms check_address
    forms.add(urllib.parse.quote(secret, safe=""))
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every (URL-encoded) form of ``secret`` and the ``requester=`` user id removed."""
    if not secret:
        return text
    for form in _secret_forms(secret):
        text = text.replace(form, "<redacted>")
    local = secret.split("@")[0]
    if local:
        text = re.sub(r"(requester=)" + re.escape(urllib.parse.quote_plus(local)) + r"(?=&|$|\s)", r"\1<redacted>", text)
    return text


class _RedactFilter(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logged as is
            return True
        clean = redact(msg, self.secret)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg}\n{redact(exc_text, self.secret)}"
        return True


@contextlib.contextmanager
def redacting_logs(secret: str | None) -> Iterator[None]:
    """While active, every handler of the root logger (and of ``drms``) redacts ``secret``."""
    if not secret:
        yield
        return
    flt = _RedactFilter(secret)
    handlers = list(logging.getLogger().handlers) + list(logging.getLogger("drms").handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


# --------------------------------------------------------------------------------------------
# drms client, record sets, names


def server_config(server: str = JSOC_SERVER):
    """A ``drms.ServerConfig`` for a DRMS server at base URL ``server`` (JSOC layout: CGIs under
    ``cgi-bin/ajax/``, export files under the base URL + the export ``dir``)."""
    import drms

    base = server.rstrip("/") + "/"
    return drms.ServerConfig(
        name=f"sharpgen:{base}",
        cgi_baseurl=urllib.parse.urljoin(base, "cgi-bin/ajax/"),
        cgi_show_series="show_series",
        cgi_jsoc_info="jsoc_info",
        cgi_jsoc_fetch="jsoc_fetch",
        cgi_check_address="checkAddress.sh",
        http_download_baseurl=base,
    )


def make_client(server: str = JSOC_SERVER):
    """``drms.Client`` for ``server``; the e-mail is passed per export, never stored on it."""
    import drms

    return drms.Client(server=server_config(server))


def query_recordset(cfg: JsocConfig) -> str:
    """``series[][start-end@cadence]`` - every HARP, one frame per cadence step."""
    return f"{cfg.series}[][{cfg.start}-{cfg.end}@{cfg.cadence}]"


def record_name(series: str, harpnum: int, t_rec: str) -> str:
    """DRMS record name, e.g. ``hmi.sharp_cea_720s[377][2011.02.15_02:00:00_TAI]``."""
    return f"{series}[{int(harpnum)}][{t_rec}]"


def local_filename(series: str, harpnum: int, t_rec: str, segment: str) -> str:
    """JSOC's export file name (filenamefmt ``{series}.{HARPNUM}.{T_REC:A}.{segment}``), e.g.
    ``hmi.sharp_cea_720s.377.20110215_020000_TAI.Br.fits``."""
    t = t_rec.replace(".", "").replace(":", "").replace("-", "")
    return f"{series}.{int(harpnum)}.{t}.{segment}.fits"


_RECORD_RE = re.compile(r"^\s*([\w.]+)\[(\d+)\]\[([^\]]+)\]")


def parse_record_name(record: str) -> tuple[str, int, str]:
    """``series[harpnum][t_rec]...`` -> (series, harpnum, t_rec)."""
    m = _RECORD_RE.match(record or "")
    if not m:
        raise JsocError(f"cannot parse JSOC record name {record!r}")
    return m.group(1), int(m.group(2)), m.group(3)


# --------------------------------------------------------------------------------------------
# retries


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(
        exc,
        (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
            socket.timeout,
            _TruncatedDownload,
            FitsCheckError,
        ),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def with_retries(fn: Callable[[], Any], what: str, *, retries: int, backoff_s: float, secret: str | None = None) -> Any:
    """Call ``fn``; on a transient error (HTTP 5xx/408/429, connection errors, truncated or
    corrupt file) sleep ``backoff_s * 2**attempt`` and retry, at most ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            if not _retryable(exc) or attempt == retries:
                raise
            delay = backoff_s * 2**attempt
            logger.warning(
                "%s failed (%s); retry %d/%d in %.3g s", what, redact(_describe(exc), secret), attempt + 1, retries, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# query + filter


def query_records(client, cfg: JsocConfig) -> pd.DataFrame:
    """Keywords :data:`QUERY_KEYS` of every record of :func:`query_recordset` (unfiltered),
    columns lower-case (``harpnum``, ``t_rec``, ``noaa_ar``, ``quality``, ``lon_fwt`` [deg], ...)."""
    ds = query_recordset(cfg)
    logger.info("querying JSOC %s for %s", cfg.server, ds)

    def _q():
        # QUALITY stays a string: drms 0.9 parses its hex form only for object dtype, and with
        # pandas 3 (string dtype) it would coerce "0x00000000" to NaN. filter_records parses it.
        return client.query(ds, key=list(QUERY_KEYS), skip_conversion=["QUALITY"])

    try:
        df = with_retries(_q, f"query {ds}", retries=cfg.retries, backoff_s=cfg.backoff_s)
    except Exception as exc:  # noqa: BLE001
        raise JsocError(f"JSOC query {ds} on {cfg.server} failed: {_describe(exc)}") from None
    df = df.rename(columns=str.lower)
    missing = [k.lower() for k in QUERY_KEYS if k.lower() not in df.columns]
    if missing and len(df):
        raise JsocError(f"JSOC query {ds} returned no values for keyword(s) {missing}")
    for k in QUERY_KEYS:
        df[k.lower()] = df.get(k.lower(), pd.Series(dtype=float))
    logger.info("query %s: %d records", ds, len(df))
    return df


def filter_records(df: pd.DataFrame, cfg: JsocConfig) -> pd.DataFrame:
    """Apply the QUALITY, longitude and NOAA filters, sort by (harpnum, t_rec), cut to max_records.

    ``df`` columns as from :func:`query_records`; QUALITY may be int or hex string (``0x...``).
    A record with missing QUALITY or LON_FWT is dropped.
    """
    df = df.copy()
    n0 = len(df)
    quality = [_parse_int(q) for q in df["quality"]]  # a list: pandas would turn None into NaN
    keep_q = pd.Series([q is not None and (q & ~int(cfg.quality_mask)) == 0 for q in quality], index=df.index)
    lon = pd.to_numeric(df["lon_fwt"], errors="coerce")
    keep_lon = (lon.abs() <= cfg.max_abs_lon_deg).fillna(False).astype(bool)
    noaa = pd.to_numeric(df["noaa_ar"], errors="coerce")
    keep_noaa = (noaa > 0).fillna(False).astype(bool) if cfg.require_noaa else pd.Series(True, index=df.index)
    keep = keep_q & keep_lon & keep_noaa
    logger.info(
        "filters: %d records, dropped %d by QUALITY (mask 0x%x), %d by |LON_FWT| > %g deg, %d without NOAA AR%s",
        n0,
        int((~keep_q).sum()),
        int(cfg.quality_mask),
        int((~keep_lon).sum()),
        cfg.max_abs_lon_deg,
        int((~keep_noaa).sum()),
        "" if cfg.require_noaa else " (not required)",
    )
    out = df[keep].copy()
    out["harpnum"] = pd.to_numeric(out["harpnum"]).astype("int64")
    out["t_rec"] = out["t_rec"].astype(str)
    out["quality"] = np.array([q for q, k in zip(quality, keep) if k], dtype="int64")
    out = out.sort_values(["harpnum", "t_rec"], kind="stable").drop_duplicates(["harpnum", "t_rec"])
    if cfg.max_records is not None and len(out) > cfg.max_records:
        logger.info("max_records: keeping the first %d of %d records", cfg.max_records, len(out))
        out = out.iloc[: cfg.max_records]
    return out.reset_index(drop=True)


def _parse_int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip()
        try:
            return int(v, 16) if v.lower().startswith("0x") else int(float(v))
        except ValueError:
            return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else int(f)


