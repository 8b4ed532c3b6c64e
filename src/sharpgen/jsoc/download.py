"""JSOC download side: FITS completeness checks, atomic file fetches with retries, the
resumable download driver :func:`download_records` and its manifest (see :mod:`sharpgen.jsoc`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.atomic import atomic_path

from sharpgen.jsoc.client import (
    EMAIL_ENV,
    MANIFEST_COLUMNS,
    PART_SUFFIX,
    FitsCheckError,
    JsocConfig,
    JsocDownloadError,
    JsocError,
    JsocExportError,
    _CHUNK,
    _TruncatedDownload,
    _USER_AGENT,
    _WARNINGS_LOCK,
    _describe,
    filter_records,
    local_filename,
    make_client,
    parse_record_name,
    query_records,
    query_recordset,
    record_name,
    redact,
    redacting_logs,
    resolve_email,
    with_retries,
)

logger = logging.getLogger("sharpgen.jsoc")


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
    from sharpgen.logutil import progress_bar

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
        with progress_bar(total=len(jobs), desc="JSOC download", unit="file") as bar:
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
