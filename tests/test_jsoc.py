"""sharpgen.jsoc against the JSOC replay server (tests/jsoc_replay.py): query, filters, export
polling and errors, download faults, resume after a kill, and the e-mail never leaking."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sharpgen import jsoc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jsoc_replay import REGISTERED_EMAIL, ReplayServer, Scenario  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERIES = "hmi.sharp_cea_720s"
F377 = "hmi.sharp_cea_720s.377.20110215_020000_TAI.Br.fits"
F6060A = "hmi.sharp_cea_720s.6060.20151030_000000_TAI.Br.fits"
F6060B = "hmi.sharp_cea_720s.6060.20151030_001200_TAI.Br.fits"
ALL = [F377, F6060A, F6060B]
# a window holding all three real records (they sit on the 12-minute T_REC grid)
WINDOW = dict(start="2011.02.15_02:00:00_TAI", end="2015.10.31_00:00:00_TAI", cadence="12m")


def email_forms(email: str = REGISTERED_EMAIL) -> list[str]:
    q = urllib.parse.quote_plus
    return [email, q(email), urllib.parse.quote(email, safe=""), q(q(email)), email.split("@")[0]]


def assert_no_email(text: str, where: str) -> None:
    for form in email_forms():
        assert form not in text, f"JSOC e-mail ({form!r}) leaked into {where}"


def assert_tree_has_no_email(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            assert_no_email(p.read_bytes().decode("latin1"), str(p))


@pytest.fixture
def server(shared_data):
    """Factory: server(Scenario(...)) -> a started ReplayServer, stopped after the test."""
    started = []

    def _make(scenario: Scenario | None = None) -> ReplayServer:
        srv = ReplayServer(shared_data, scenario).start()
        started.append(srv)
        return srv

    yield _make
    for srv in started:
        srv.stop()


@pytest.fixture(autouse=True)
def _no_env_email(monkeypatch):
    monkeypatch.delenv("JSOC_EMAIL", raising=False)


@pytest.fixture
def debug_log(tmp_path):
    """A DEBUG file handler on the root logger (drms logs request URLs at DEBUG)."""
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


def cfg_for(srv: ReplayServer, **kw) -> dict:
    cfg = dict(server=srv.url, poll_s=0.01, backoff_s=0.01, retries=2, n_workers=2, **WINDOW)
    cfg.update(kw)
    return cfg


def file_gets(srv: ReplayServer, name: str) -> list[int]:
    return [status for n, status in srv.file_gets if n == name]


# ------------------------------------------------------------------------------------------
# pure functions


def test_server_config_builds_jsoc_urls():
    sc = jsoc.server_config("http://127.0.0.1:8123")
    assert sc.url_jsoc_info == "http://127.0.0.1:8123/cgi-bin/ajax/jsoc_info"
    assert sc.url_jsoc_fetch == "http://127.0.0.1:8123/cgi-bin/ajax/jsoc_fetch"
    assert sc.url_check_address == "http://127.0.0.1:8123/cgi-bin/ajax/checkAddress.sh"
    assert sc.http_download_baseurl == "http://127.0.0.1:8123/"
    default = jsoc.server_config()
    assert default.url_jsoc_fetch == "http://jsoc.stanford.edu/cgi-bin/ajax/jsoc_fetch"


def test_recordset_and_names_follow_jsoc(shared_data):
    cfg = jsoc.JsocConfig.from_mapping(dict())
    assert jsoc.query_recordset(cfg) == (
        "hmi.sharp_cea_720s[][2010.05.01_00:00:00_TAI-2010.06.01_00:00:00_TAI@8h]"
    )
    # our cache names equal JSOC's export names (the real files in shared/data carry them)
    assert jsoc.local_filename(SERIES, 377, "2011.02.15_02:00:00_TAI", "Br") == F377
    assert (shared_data / "sharp" / F377).is_file()
    assert jsoc.parse_record_name("hmi.sharp_cea_720s[6060][2015.10.30_00:12:00_TAI]{Br}") == (
        SERIES, 6060, "2015.10.30_00:12:00_TAI")
    with pytest.raises(jsoc.JsocError, match="cannot parse"):
        jsoc.parse_record_name("hmi.M_45s[2012.01.01_01:01:30_TAI]")


def test_filter_records_quality_longitude_noaa_and_limit():
    df = pd.DataFrame(
        {
            "harpnum": [7, 5, 5, 9, 11, 12, 13],
            "t_rec": ["2010.05.01_08:00:00_TAI", "2010.05.01_08:00:00_TAI", "2010.05.01_00:00:00_TAI",
                      "2010.05.01_00:00:00_TAI", "2010.05.01_00:00:00_TAI", "2010.05.01_00:00:00_TAI",
                      "2010.05.01_00:00:00_TAI"],
            "noaa_ar": [11000, 11001, 11001, 0, 11002, 11003, 11004],
            "quality": ["0x00000000", "0x00000000", "0x00000400", "0x00000000", "0x00000000", None, "0x00000000"],
            "lon_fwt": [10.0, -60.0, 5.0, 0.0, 61.0, 0.0, float("nan")],
        }
    )
    cfg = jsoc.JsocConfig.from_mapping(dict())
    out = jsoc.filter_records(df, cfg)
    # 5@00 bad QUALITY, 9 no NOAA, 11 at the limb, 12 no QUALITY, 13 no LON_FWT
    assert list(zip(out.harpnum, out.t_rec)) == [(5, "2010.05.01_08:00:00_TAI"), (7, "2010.05.01_08:00:00_TAI")]
    # a mask that allows bit 0x400 keeps 5@00; not requiring NOAA keeps 9
    out = jsoc.filter_records(df, jsoc.JsocConfig.from_mapping(dict(quality_mask=0x400, require_noaa=False)))
    assert list(out.harpnum) == [5, 5, 7, 9]
    assert list(out.quality) == [0x400, 0, 0, 0]
    out = jsoc.filter_records(df, jsoc.JsocConfig.from_mapping(dict(quality_mask=0x400, require_noaa=False, max_records=2)))
    assert list(zip(out.harpnum, out.t_rec)) == [(5, "2010.05.01_00:00:00_TAI"), (5, "2010.05.01_08:00:00_TAI")]


def test_config_rejects_unknown_keys_and_hides_email():
    with pytest.raises(jsoc.JsocError, match="unknown data.jsoc config key"):
        jsoc.JsocConfig.from_mapping({"servr": "x"})
    assert_no_email(repr(jsoc.JsocConfig.from_mapping(dict(email=REGISTERED_EMAIL))), "JsocConfig repr")


def test_redact_removes_every_url_form():
    q = urllib.parse.quote_plus
    text = f"a {REGISTERED_EMAIL} b {q(REGISTERED_EMAIL)} c {q(q(REGISTERED_EMAIL))} requester=sharpgen.tester&x=1"
    assert_no_email(jsoc.redact(text, REGISTERED_EMAIL), "redacted text")


def test_missing_email_is_a_clear_error():
    with pytest.raises(jsoc.JsocError, match="JSOC_EMAIL"):
        jsoc.resolve_email(None)


def test_check_fits_on_real_and_cut_files(shared_data, tmp_path):
    src = shared_data / "sharp" / F6060A
    assert jsoc.check_fits(src) == src.stat().st_size
    data = src.read_bytes()
    for n, msg in [(len(data) - 2880, "imply"), (len(data) // 2, "imply"), (100, "not a readable FITS")]:
        p = tmp_path / f"cut{n}.fits"
        p.write_bytes(data[:n])
        with pytest.raises(jsoc.FitsCheckError, match=msg):
            jsoc.check_fits(p)
    p = tmp_path / "padded.fits"
    p.write_bytes(data + b"\0" * 2880)
    with pytest.raises(jsoc.FitsCheckError, match="imply"):
        jsoc.check_fits(p)


# ------------------------------------------------------------------------------------------
# replay server: success, query window, filters


def test_download_success_manifest_and_files(server, shared_data, tmp_path, debug_log, capsys):
    srv = server()
    manifest_path = tmp_path / "results" / "records.tsv"
    cache = tmp_path / "cache"
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), cache, manifest_path)

    m = pd.read_csv(manifest_path, sep="\t")
    assert list(m.columns) == ["path", "source", "harpnum", "t_rec"]
    assert list(m.harpnum) == [377, 6060, 6060]
    assert list(m.t_rec) == ["2011.02.15_02:00:00_TAI", "2015.10.30_00:00:00_TAI", "2015.10.30_00:12:00_TAI"]
    assert set(m.source) == {"jsoc"}
    assert [Path(p).name for p in m.path] == ALL
    for p in m.path:
        assert Path(p).read_bytes() == (shared_data / "sharp" / Path(p).name).read_bytes()
    pd.testing.assert_frame_equal(out.astype({"harpnum": "int64"}), m.astype({"harpnum": "int64"}), check_dtype=False)
    assert not list(cache.glob("*.part")) and not list(manifest_path.parent.glob(".*tmp"))

    # one query, one export (method url, protocol fits, segment Br), notify carried the e-mail
    (req,) = srv.requests_for("exp_request")
    assert req["method"] == "url" and req["protocol"] == "fits" and req["notify"] == REGISTERED_EMAIL
    assert req["ds"].count("{Br}") == 3
    # ... but the e-mail is in no log, no output, no progress bar
    assert "URL for request" in debug_log.read_text()  # drms' DEBUG URLs did reach the log
    assert_no_email(debug_log.read_text(), "the DEBUG log")
    captured = capsys.readouterr()
    assert_no_email(captured.out + captured.err, "stdout/stderr")
    assert_tree_has_no_email(tmp_path)


def test_query_cadence_window_and_filters_skip_records(server, tmp_path):
    base = dict(HARPNUM=6060, NOAA_AR=12441, QUALITY=0, LON_FWT=-20.0, LAT_FWT=14.0, USFLUX=3e21, R_VALUE=2.0)
    extra = [
        dict(base, T_REC="2015.10.30_08:00:00_TAI", LON_FWT=75.0),  # limb
        dict(base, T_REC="2015.10.30_16:00:00_TAI", QUALITY=0x400),  # bad quality
        dict(base, HARPNUM=6061, NOAA_AR=0, T_REC="2015.10.30_08:00:00_TAI"),  # no NOAA AR
    ]
    srv = server(Scenario(extra_records=extra))
    cfg = cfg_for(srv, email=REGISTERED_EMAIL, start="2015.10.30_00:00:00_TAI", end="2015.10.31_00:00:00_TAI", cadence="8h")
    out = jsoc.download_records(cfg, tmp_path / "cache", tmp_path / "records.tsv")
    # @8h from 00:00 selects 00:00, 08:00, 16:00 (not 00:12); filters leave the real 00:00 only
    (rs,) = srv.requests_for("rs_list")
    assert rs["ds"] == "hmi.sharp_cea_720s[][2015.10.30_00:00:00_TAI-2015.10.31_00:00:00_TAI@8h]"
    assert list(zip(out.harpnum, out.t_rec)) == [(6060, "2015.10.30_00:00:00_TAI")]
    (req,) = srv.requests_for("exp_request")
    assert req["ds"] == "hmi.sharp_cea_720s[6060][2015.10.30_00:00:00_TAI]{Br}"
    assert [n for n, _ in srv.file_gets] == [F6060A]


def test_no_record_passes_is_an_error(server, tmp_path):
    srv = server()
    with pytest.raises(jsoc.JsocError, match=r"no records of hmi\.sharp_cea_720s\[\]\[2011.*max_abs_lon_deg=1"):
        jsoc.download_records(cfg_for(srv, max_abs_lon_deg=1.0), tmp_path / "c", tmp_path / "r.tsv")
    assert not (tmp_path / "r.tsv").exists()


def test_max_records_and_batches(server, tmp_path):
    srv = server()
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, batch_size=2, max_records=3), tmp_path / "c")
    assert len(out) == 3
    reqs = srv.requests_for("exp_request")
    assert [r["ds"].count("{Br}") for r in reqs] == [2, 1]
    out = jsoc.download_records(cfg_for(srv, max_records=2), tmp_path / "c")
    assert len(out) == 2  # everything cached: no export, so no e-mail needed


def test_transient_query_error_is_retried(server, tmp_path):
    srv = server(Scenario(cgi_500={"rs_list": 1}))
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), tmp_path / "c")
    assert len(out) == 3 and len(srv.requests_for("rs_list")) == 2


# ------------------------------------------------------------------------------------------
# export: pending, errors, e-mail problems


def test_export_pending_statuses_then_done(server, tmp_path):
    srv = server(Scenario(pending=(2, 1, 6, 2)))
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), tmp_path / "c")
    assert len(out) == 3
    assert len(srv.requests_for("exp_status")) == 5  # 4 pending answers + done


def test_export_timeout(server, tmp_path):
    srv = server(Scenario(pending=(1,) * 10_000))
    with pytest.raises(jsoc.JsocExportError, match=r"still pending.*timeout_s=0.2"):
        jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, timeout_s=0.2), tmp_path / "c")


def test_export_error_status_carries_jsoc_message(server, tmp_path, debug_log):
    msg = "Export failed: hmi.sharp_cea_720s segment Br offline (tape read error)"
    srv = server(Scenario(pending=(2,), export_error=(4, msg)))
    with pytest.raises(jsoc.JsocExportError) as err:
        jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), tmp_path / "c", tmp_path / "r.tsv")
    text = str(err.value)
    assert msg in text and "status=4" in text and "JSOC_20200410_001" in text
    assert "hmi.sharp_cea_720s[377][2011.02.15_02:00:00_TAI]" in text  # names the records
    assert_no_email(text, "the error message")
    assert_no_email(debug_log.read_text(), "the DEBUG log")
    assert not (tmp_path / "r.tsv").exists()


def test_export_request_http_error_does_not_leak_email(server, tmp_path, debug_log):
    srv = server(Scenario(cgi_500={"exp_request": -1}))
    with pytest.raises(jsoc.JsocExportError, match="HTTP 500") as err:
        jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, retries=1), tmp_path / "c")
    assert len(srv.requests_for("exp_request")) == 2
    assert_no_email(str(err.value), "the error message")
    assert_no_email(debug_log.read_text(), "the DEBUG log")


def test_unregistered_email_is_refused_before_export(server, tmp_path):
    srv = server()
    with pytest.raises(jsoc.JsocError, match="not registered") as err:
        jsoc.download_records(cfg_for(srv, email="someone.else@example.org"), tmp_path / "c")
    assert "someone.else" not in str(err.value)
    assert srv.requests_for("exp_request") == []


def test_email_from_environment(server, tmp_path, monkeypatch):
    srv = server()
    with pytest.raises(jsoc.JsocError, match="JSOC_EMAIL"):
        jsoc.download_records(cfg_for(srv), tmp_path / "c")
    monkeypatch.setenv("JSOC_EMAIL", REGISTERED_EMAIL)
    assert len(jsoc.download_records(cfg_for(srv), tmp_path / "c")) == 3


# ------------------------------------------------------------------------------------------
# download faults


def test_http_500_transient_then_ok(server, tmp_path):
    srv = server(Scenario(file_500={F6060A: 2}))
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, retries=2), tmp_path / "c")
    assert len(out) == 3
    assert file_gets(srv, F6060A) == [500, 500, 200]


def test_http_500_permanent_names_record_and_keeps_others(server, tmp_path):
    srv = server(Scenario(file_500={F6060B: -1}))
    cache = tmp_path / "c"
    with pytest.raises(jsoc.JsocDownloadError) as err:
        jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, retries=2), cache, tmp_path / "r.tsv")
    text = str(err.value)
    assert "hmi.sharp_cea_720s[6060][2015.10.30_00:12:00_TAI]: HTTP 500" in text and "1 of 3" in text
    assert file_gets(srv, F6060B) == [500, 500, 500]
    assert sorted(p.name for p in cache.iterdir()) == [F377, F6060A]  # completed files stay
    assert not (tmp_path / "r.tsv").exists()
    # tolerated with max_failures=1: the manifest lists the other two
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, retries=0, max_failures=1), cache, tmp_path / "r.tsv")
    assert [Path(p).name for p in pd.read_csv(tmp_path / "r.tsv", sep="\t").path] == [F377, F6060A] == [
        Path(p).name for p in out.path]


def test_truncated_transfer_is_retried_then_detected(server, shared_data, tmp_path):
    # Content-Length announces the whole file, the connection closes after half of it
    srv = server(Scenario(file_truncate={F377: 1}))
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), tmp_path / "c")
    assert file_gets(srv, F377) == [200, 200]
    assert Path(out.path[0]).read_bytes() == (shared_data / "sharp" / F377).read_bytes()

    srv = server(Scenario(file_truncate={F377: -1}))
    with pytest.raises(jsoc.JsocDownloadError, match=r"\[377\].*received \d+ of 492480 bytes"):
        jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, retries=1), tmp_path / "c2")
    assert not (tmp_path / "c2" / F377).exists() and not list((tmp_path / "c2").glob("*.part"))


def test_file_cut_short_is_detected_by_fits_check(server, shared_data, tmp_path):
    # a consistent Content-Length but half a FITS file: only the FITS check can tell
    srv = server(Scenario(file_short={F6060B: 1}))
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), tmp_path / "c")
    assert file_gets(srv, F6060B) == [200, 200]
    assert Path(out.path[2]).read_bytes() == (shared_data / "sharp" / F6060B).read_bytes()

    srv = server(Scenario(file_short={F6060B: -1}))
    with pytest.raises(jsoc.JsocDownloadError, match=r"\[6060\]\[2015.10.30_00:12:00_TAI\].*FITS headers imply"):
        jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL, retries=1), tmp_path / "c2")


# ------------------------------------------------------------------------------------------
# resume


def test_resume_skips_complete_files_and_redoes_partial_ones(server, shared_data, tmp_path):
    srv = server()
    cache = tmp_path / "c"
    jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), cache)
    # simulate an interrupted run: one file missing with a half-written .part, one corrupt file
    (cache / F6060A).unlink()
    (cache / (F6060A + ".part")).write_bytes((shared_data / "sharp" / F6060A).read_bytes()[:5000])
    (cache / F6060B).write_bytes((shared_data / "sharp" / F6060B).read_bytes()[:70000])
    n_gets = len(srv.file_gets)
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), cache)
    assert sorted(n for n, _ in srv.file_gets[n_gets:]) == [F6060A, F6060B]  # 377 skipped
    assert srv.requests_for("exp_request")[-1]["ds"].count("{Br}") == 2
    assert not list(cache.glob("*.part"))
    for p in out.path:
        assert Path(p).read_bytes() == (shared_data / "sharp" / Path(p).name).read_bytes()
    # all complete: a rerun neither exports nor downloads, and needs no e-mail
    n_exports, n_gets = len(srv.requests_for("exp_request")), len(srv.file_gets)
    out = jsoc.download_records(cfg_for(srv), cache)
    assert len(out) == 3
    assert len(srv.requests_for("exp_request")) == n_exports and len(srv.file_gets) == n_gets


KILL_SCRIPT = """
import sys
sys.path.insert(0, {src!r})
from sharpgen import jsoc
jsoc.download_records(dict(server={url!r}, poll_s=0.01, backoff_s=0.01, n_workers=1, **{window!r}), {cache!r})
"""


def test_killed_download_resumes(server, shared_data, tmp_path):
    """A real download process killed (SIGKILL) mid-file; the rerun fetches only what is missing."""
    srv = server(Scenario(file_delay_s={F6060B: 0.5}))  # the last file trickles in 16 kB / 0.5 s
    cache = tmp_path / "c"
    code = KILL_SCRIPT.format(src=str(REPO / "src"), url=srv.url, window=WINDOW, cache=str(cache))
    env = dict(os.environ, JSOC_EMAIL=REGISTERED_EMAIL)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = cache / (F6060B + ".part")
    try:
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "download never reached the slow file"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
    assert (cache / F377).is_file() and (cache / F6060A).is_file()
    assert part.is_file() and not (cache / F6060B).exists()  # killed mid-file: no final name

    srv.scenario.file_delay_s = {}
    n_gets = len(srv.file_gets)
    out = jsoc.download_records(cfg_for(srv, email=REGISTERED_EMAIL), cache)
    assert [n for n, _ in srv.file_gets[n_gets:]] == [F6060B]
    assert not part.exists()
    for p in out.path:
        assert Path(p).read_bytes() == (shared_data / "sharp" / Path(p).name).read_bytes()


# ------------------------------------------------------------------------------------------
# the Snakemake script


def test_workflow_script_writes_manifest_and_log_without_email(server, tmp_path, monkeypatch):
    import runpy

    srv = server()
    cfg = cfg_for(srv)
    smk = SimpleNamespace(
        log=[str(tmp_path / "logs" / "download_jsoc.log")],
        params=SimpleNamespace(cfg=cfg, cache_dir=str(tmp_path / "jsoc_cache")),
        output=SimpleNamespace(manifest=str(tmp_path / "data" / "records.tsv")),
        config={"data": {"jsoc": dict(cfg, email=REGISTERED_EMAIL)}},
    )
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        runpy.run_path(str(REPO / "workflow_scripts" / "download_jsoc.py"), init_globals={"snakemake": smk})
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    log = Path(smk.log[0]).read_text()
    assert "3 records in the manifest" in log
    assert len(pd.read_csv(smk.output.manifest, sep="\t")) == 3
    assert_tree_has_no_email(tmp_path)
