"""Download SHARP CEA Br segments from JSOC with ``drms``: query, filter, export, fetch, resume.

Pipeline (:func:`download_records`):

1. **Query** the record set ``series[][start-end@cadence]`` (e.g.
   ``hmi.sharp_cea_720s[][2010.05.01_00:00:00_TAI-2010.06.01_00:00:00_TAI@8h]``) for the keywords
   in :data:`QUERY_KEYS`, with :meth:`drms.Client.query` (JSOC ``jsoc_info?op=rs_list``).
2. **Filter** (:func:`filter_records`): QUALITY bits outside ``quality_mask`` drop a record,
   ``|LON_FWT| > max_abs_lon_deg`` drops it (limb records are strongly foreshortened), and with
   ``require_noaa`` a HARP without a NOAA active region (``NOAA_AR <= 0``) is dropped. Records are
   sorted by (HARPNUM, T_REC) and cut to ``max_records``.
3. **Resume**: a record whose file is already in the cache directory and passes
   :func:`check_fits` (readable by astropy, file size equal to the size its FITS headers imply) is
   not exported or downloaded again.
4. **Export** the missing records' segment (``method=url``, ``protocol=fits``) in batches of
   ``batch_size`` records; each request is polled every ``poll_s`` seconds until it is done
   (statuses 1, 2 and 6 are pending, exactly as drms treats them; any other non-zero status is an
   error that carries JSOC's own message) or ``timeout_s`` passes.
5. **Download** the files with ``n_workers`` threads: each file goes to a ``.part`` sibling, is
   checked (byte count against Content-Length, then :func:`check_fits`) and renamed into place, so a
   killed run never leaves a half file under a final name. Failures are retried ``retries`` times
   with exponential back-off ``backoff_s * 2**attempt``.

The JSOC e-mail (config ``email`` or env ``JSOC_EMAIL``) is sent to JSOC only: every log record
passes through :func:`redacting_logs` and every error message through :func:`redact`, and nothing
the module writes contains it.
"""

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
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.atomic import atomic_path

logger = logging.getLogger(__name__)

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

    server: str = JSOC_SERVER
    email: str | None = None
    series: str = "hmi.sharp_cea_720s"
    segment: str = "Br"
    start: str = "2010.05.01_00:00:00_TAI"
    end: str = "2010.06.01_00:00:00_TAI"
    cadence: str = "8h"
    require_noaa: bool = True
    max_abs_lon_deg: float = 60.0
    quality_mask: int = 0
    max_records: int | None = None
    batch_size: int = 100
    n_workers: int = 4
    retries: int = 4
    backoff_s: float = 2.0
    poll_s: float = 5.0
    timeout_s: float = 3600.0
    max_failures: int = 0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "JsocConfig":
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise JsocError(f"unknown data.jsoc config key(s) {unknown}; known: {sorted(known)}")
        return cls(**cfg)

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


# --------------------------------------------------------------------------------------------
# FITS check


def check_fits(path: str | os.PathLike) -> int:
    """Raise :class:`FitsCheckError` unless ``path`` is a complete FITS file; return its size.

    Complete means: astropy opens every HDU, the file size equals the end of the last HDU's data
    as the headers imply (so a file cut short, or with garbage appended, fails), and some HDU is an
    image with at least one axis.
    """
    from astropy.io import fits

    path = Path(path)
    size = path.stat().st_size
    try:
        # catch_warnings changes process-wide state: serialise it across download threads
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JSOC headers have non-standard cards
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                info = hdul.fileinfo(len(hdul) - 1)
                expected = int(info["datLoc"]) + int(info["datSpan"])
                has_image = any(int(h.header.get("NAXIS", 0)) > 0 or int(h.header.get("ZNAXIS", 0)) > 0 for h in hdul)
    except Exception as exc:  # noqa: BLE001
        raise FitsCheckError(f"{path.name}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    if size != expected:
        raise FitsCheckError(f"{path.name}: file is {size} bytes but its FITS headers imply {expected} bytes")
    if not has_image:
        raise FitsCheckError(f"{path.name}: FITS file has no image HDU")
    return size


def is_complete(path: str | os.PathLike) -> bool:
    """True if ``path`` exists and passes :func:`check_fits`."""
    try:
        check_fits(path)
        return True
    except (FileNotFoundError, FitsCheckError):
        return False


# --------------------------------------------------------------------------------------------
# export


def export_urls(client, records: pd.DataFrame, cfg: JsocConfig, email: str) -> dict[tuple[int, str], str]:
    """Export the ``cfg.segment`` of ``records`` (columns harpnum, t_rec) and return
    {(harpnum, t_rec): download URL}. Batches of ``cfg.batch_size`` records per request."""
    import drms

    urls: dict[tuple[int, str], str] = {}
    rows = list(zip(records["harpnum"].astype(int), records["t_rec"].astype(str)))
    for b in range(0, len(rows), cfg.batch_size):
        batch = rows[b : b + cfg.batch_size]
        ds = ",".join(f"{record_name(cfg.series, h, t)}{{{cfg.segment}}}" for h, t in batch)
        first = record_name(cfg.series, *batch[0])
        label = f"{first}" + (f" and {len(batch) - 1} more record(s)" if len(batch) > 1 else "")
        logger.info("export request %d/%d: %s, segment %s", b // cfg.batch_size + 1,
                    -(-len(rows) // cfg.batch_size), label, cfg.segment)
        try:
            req = with_retries(
                lambda: client.export(ds, method="url", protocol="fits", email=email),
                f"export request for {label}",
                retries=cfg.retries,
                backoff_s=cfg.backoff_s,
                secret=email,
            )
        except Exception as exc:  # noqa: BLE001
            raise JsocExportError(
                redact(f"JSOC export request for {label} failed: {_describe(exc)}", email)
            ) from None
        t0 = time.monotonic()
        try:
            # drms polls exp_status every poll_s s while the status is 1, 2 or 6 (6 at most 5
            # times), raises DrmsExportError on any other non-zero status, False on timeout
            done = with_retries(
                lambda: req.wait(timeout=max(cfg.timeout_s - (time.monotonic() - t0), 0.0), sleep=cfg.poll_s),
                f"export status of {req.id}",
                retries=cfg.retries,
                backoff_s=cfg.backoff_s,
                secret=email,
            )
            if not done:
                raise JsocExportError(
                    f"JSOC export {req.id} for {label} still pending (status {req.status}) after "
                    f"timeout_s={cfg.timeout_s:g} s"
                )
            table = req.urls
        except drms.DrmsExportError as exc:
            raise JsocExportError(
                redact(f"JSOC export {req.id} for {label} failed: {exc}", email)
            ) from None
        except JsocExportError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise JsocExportError(
                redact(f"JSOC export {req.id} for {label} failed: {_describe(exc)}", email)
            ) from None
        logger.info("export %s done: %d file(s)", req.id, len(table))
        for record, url in zip(table["record"], table["url"]):
            _, h, t = parse_record_name(record)
            urls[(h, t)] = url
        missing = [record_name(cfg.series, h, t) for h, t in batch if (h, t) not in urls]
        if missing:
            logger.warning("export %s has no file for %d record(s), e.g. %s", req.id, len(missing), missing[0])
    return urls


# --------------------------------------------------------------------------------------------
# download


def fetch_file(url: str, dest: str | os.PathLike, *, timeout: float = 60.0) -> int:
    """Download ``url`` to ``dest`` atomically (``dest.part`` + rename) and return its size.

    Raises ``_TruncatedDownload`` when fewer bytes than Content-Length arrive, and
    :class:`FitsCheckError` when the file is not a complete FITS file; nothing is left at ``dest``
    then.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + PART_SUFFIX)
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as fh:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            n = 0
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                n += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if expected is not None and n != expected:
            raise _TruncatedDownload(f"{dest.name}: received {n} of {expected} bytes")
        size = check_fits(part)
        os.replace(part, dest)
        return size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise


def download_files(
    jobs: Sequence[tuple[str, str, Path]],
    *,
    n_workers: int = 4,
    retries: int = 4,
    backoff_s: float = 2.0,
    timeout: float = 60.0,
) -> tuple[dict[str, int], dict[str, str]]:
    """Fetch ``jobs`` = [(record name, url, dest path)] with a bounded thread pool.

    Returns ({record: size in bytes} of the files downloaded, {record: error} of the failures).
    """
    from tqdm.auto import tqdm

    done: dict[str, int] = {}
    failed: dict[str, str] = {}
    if not jobs:
        return done, failed

    def _one(record: str, url: str, dest: Path) -> int:
        return with_retries(
            lambda: fetch_file(url, dest, timeout=timeout),
            f"download of {record}",
            retries=retries,
            backoff_s=backoff_s,
        )

    with ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="jsoc-dl") as pool:
        futures = {pool.submit(_one, r, u, d): r for r, u, d in jobs}
        with tqdm(total=len(jobs), desc="JSOC download", unit="file") as bar:
            for fut in as_completed(futures):
                record = futures[fut]
                try:
                    done[record] = fut.result()
                except Exception as exc:  # noqa: BLE001
                    failed[record] = _describe(exc)
                    logger.error("download of %s failed: %s", record, failed[record])
                bar.update(1)
    return done, failed


def clean_partials(cache_dir: Path) -> int:
    """Remove ``*.part`` leftovers of a killed run; return how many were removed."""
    n = 0
    for p in cache_dir.glob("*" + PART_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def write_manifest(path: str | os.PathLike, manifest: pd.DataFrame) -> None:
    """Write the record manifest (tab-separated, :data:`MANIFEST_COLUMNS`) atomically."""
    with atomic_path(path, suffix=".tsv") as tmp:
        manifest.loc[:, list(MANIFEST_COLUMNS)].to_csv(tmp, sep="\t", index=False)


def download_records(
    cfg: JsocConfig | Mapping[str, Any],
    cache_dir: str | os.PathLike,
    manifest_path: str | os.PathLike | None = None,
    *,
    email: str | None = None,
    client=None,
) -> pd.DataFrame:
    """Query, filter, export and download; return (and optionally write) the record manifest.

    Parameters
    ----------
    cfg : the ``data.jsoc`` config section.
    cache_dir : folder for the downloaded FITS files (kept between runs, so a rerun resumes).
    manifest_path : where to write ``records.tsv``; not written when None.
    email : JSOC export e-mail; default ``cfg.email`` or env ``JSOC_EMAIL`` (only needed when
        something has to be exported).
    client : a ``drms.Client``; default one for ``cfg.server``.

    Returns
    -------
    DataFrame with columns ``path`` (cache_dir / file name), ``source`` ("jsoc"), ``harpnum``,
    ``t_rec``, one row per downloaded record, sorted by (harpnum, t_rec).
    """
    if not isinstance(cfg, JsocConfig):
        cfg = JsocConfig.from_mapping(cfg)
    secret = email or cfg.email or os.environ.get(EMAIL_ENV)
    with redacting_logs(secret):
        return _download_records(cfg, Path(cache_dir), manifest_path, email or cfg.email, client)


def _download_records(cfg: JsocConfig, cache_dir: Path, manifest_path, email, client) -> pd.DataFrame:
    t0 = time.monotonic()
    client = client if client is not None else make_client(cfg.server)
    records = filter_records(query_records(client, cfg), cfg)
    if records.empty:
        raise JsocError(
            f"no records of {query_recordset(cfg)} pass the filters (quality_mask={cfg.quality_mask}, "
            f"max_abs_lon_deg={cfg.max_abs_lon_deg}, require_noaa={cfg.require_noaa})"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    n_parts = clean_partials(cache_dir)
    if n_parts:
        logger.info("removed %d partial download(s) left by an interrupted run", n_parts)

    records["record"] = [record_name(cfg.series, h, t) for h, t in zip(records["harpnum"], records["t_rec"])]
    records["path"] = [
        cache_dir / local_filename(cfg.series, h, t, cfg.segment) for h, t in zip(records["harpnum"], records["t_rec"])
    ]
    complete = np.array([is_complete(p) for p in records["path"]], dtype=bool)
    for p in records["path"][~complete]:
        if p.exists():  # present but corrupt: never trust it
            logger.warning("%s is incomplete or unreadable; downloading it again", p.name)
            p.unlink()
    todo = records[~complete]
    logger.info("%d records selected: %d already in %s, %d to download", len(records), int(complete.sum()), cache_dir, len(todo))

    failed: dict[str, str] = {}
    if len(todo):
        address = resolve_email(email)
        try:
            registered = with_retries(
                lambda: client.check_email(address), "JSOC e-mail check", retries=cfg.retries, backoff_s=cfg.backoff_s,
                secret=address,
            )
        except Exception as exc:  # noqa: BLE001
            raise JsocError(redact(f"JSOC e-mail check on {cfg.server} failed: {_describe(exc)}", address)) from None
        if not registered:
            raise JsocError(
                f"the JSOC e-mail address (config data.jsoc.email or {EMAIL_ENV}) is not registered with "
                f"{cfg.server}; register it at http://jsoc.stanford.edu/ajax/register_email.html"
            )
        urls = export_urls(client, todo, cfg, address)
        jobs = []
        for rec, h, t, p in zip(todo["record"], todo["harpnum"], todo["t_rec"], todo["path"]):
            url = urls.get((int(h), str(t)))
            if url is None:
                failed[rec] = "JSOC export returned no file for this record"
            else:
                jobs.append((rec, url, p))
        got, dl_failed = download_files(
            jobs, n_workers=cfg.n_workers, retries=cfg.retries, backoff_s=cfg.backoff_s, timeout=min(cfg.timeout_s, 300.0)
        )
        failed.update(dl_failed)
        logger.info("downloaded %d file(s), %.1f MB", len(got), sum(got.values()) / 1e6)

    if len(failed) > cfg.max_failures:
        lines = [f"{r}: {e}" for r, e in sorted(failed.items())]
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        raise JsocDownloadError(
            f"{len(failed)} of {len(records)} record(s) could not be downloaded (max_failures={cfg.max_failures}); "
            f"files already downloaded stay in {cache_dir} and a rerun resumes:\n  " + "\n  ".join(lines[:20]) + more
        )
    if failed:
        logger.warning("%d record(s) left out (max_failures=%d): %s", len(failed), cfg.max_failures, sorted(failed))

    ok = records[~records["record"].isin(list(failed))]
    manifest = pd.DataFrame(
        {
            "path": [str(p) for p in ok["path"]],
            "source": "jsoc",
            "harpnum": ok["harpnum"].astype("int64").to_numpy(),
            "t_rec": ok["t_rec"].astype(str).to_numpy(),
        }
    )
    if manifest_path is not None:
        write_manifest(manifest_path, manifest)
    logger.info("JSOC: %d records in the manifest (%.1f s)", len(manifest), time.monotonic() - t0)
    return manifest
