"""Data stage (sharpgen.data): local ingest, record loading checks, TAI times, and the real
records of ../shared/data as a local source through Snakemake itself."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

import snakeutil as su
from sharpgen import data as D
from sharpgen import patches as P
from sharpgen.sharp_io import name_header_mismatches, read_sharp

SERIES = "hmi.sharp_cea_720s"
CFG = {"mode": "crop", "size": 32, "bin": 8, "clip_gauss": 1000.0, "max_nan_fraction": 0.25,
       "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0}}


def _br(shared_data, harp, stamp, folder="sharp"):
    return shared_data / folder / f"{SERIES}.{harp}.{stamp}_TAI.Br.fits"


# --------------------------------------------------------------------------------------------
# local manifest
# --------------------------------------------------------------------------------------------
def test_local_manifest(shared_data, tmp_path):
    m = D.local_manifest(str(shared_data / "sharp" / f"{SERIES}.*.Br.fits"))
    assert list(m.columns) == list(D.MANIFEST_COLUMNS)
    assert len(m) == 3 and list(m.harpnum) == [377, 6060, 6060]
    assert list(m.t_rec) == ["2011.02.15_02:00:00_TAI", "2015.10.30_00:00:00_TAI", "2015.10.30_00:12:00_TAI"]
    assert set(m.source) == {"local"}
    with pytest.raises(FileNotFoundError, match="matches no SHARP Br FITS"):
        D.local_manifest(str(tmp_path / "nothing.*.Br.fits"))


def test_local_manifest_takes_a_list_of_globs_relative_to_root(shared_data):
    root = shared_data / "sharp"
    pats = ["../sharp_real/*.Br.fits", f"{SERIES}.*.Br.fits"]
    m = D.local_manifest(pats, root=root)
    assert len(m) == 14 + 3
    assert all(not Path(p).is_absolute() for p in m.path)  # kept relative to root
    assert sum(p.startswith("../sharp_real/") for p in m.path) == 14
    assert all((root / p).is_file() for p in m.path)
    assert m.groupby("harpnum").size().to_dict() == {377: 1, 1422: 1, 1441: 3, 1445: 2, 1446: 4,
                                                     1447: 4, 6060: 2}
    # sorted by (harpnum, t_rec), whatever the order of the globs
    assert m.equals(D.local_manifest(pats[::-1], root=root))
    assert list(m[["harpnum", "t_rec"]].itertuples(index=False)) == \
        sorted(m[["harpnum", "t_rec"]].itertuples(index=False))
    with pytest.raises(ValueError, match="non-empty list of globs"):
        D.local_manifest([], root=root)


def test_same_record_in_two_folders_is_listed_once(shared_data, tmp_path, caplog):
    """Issue 18: a record found twice by the glob gave two identical rows."""
    src = _br(shared_data, 6060, "20151030_000000")
    other = _br(shared_data, 6060, "20151030_001200")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(src, tmp_path / sub)
    shutil.copy(other, tmp_path / "a")
    # c/ holds a different file under the name of the 00:12 record
    (tmp_path / "c").mkdir()
    shutil.copy(src, tmp_path / "c" / other.name)
    with caplog.at_level(logging.INFO, logger="sharpgen.data"):
        m = D.local_manifest(str(tmp_path / "*" / f"{SERIES}.*.Br.fits"))
    assert len(m) == 2
    assert not m.duplicated(["harpnum", "t_rec"]).any()
    assert list(m.path) == [str(tmp_path / "a" / src.name), str(tmp_path / "a" / other.name)]
    dropped = [r for r in caplog.records if r.levelno == logging.WARNING and "dropping duplicate record" in r.getMessage()]
    assert len(dropped) == 2
    text = "\n".join(r.getMessage() for r in dropped)
    assert str(tmp_path / "b" / src.name) in text and "identical content" in text
    assert str(tmp_path / "c" / other.name) in text and "DIFFER" in text
    assert "HARP 6060 2015.10.30_00:12:00_TAI" in text


def test_same_path_matched_by_two_globs_is_listed_once(shared_data, caplog):
    pats = [str(shared_data / "sharp" / f"{SERIES}.*.Br.fits"), str(shared_data / "sharp" / f"{SERIES}.377.*.Br.fits")]
    with caplog.at_level(logging.INFO, logger="sharpgen.data"):
        m = D.local_manifest(pats)
    assert len(m) == 3
    assert "matched by more than one glob" in caplog.text


def test_non_br_and_foreign_names_are_ignored_with_a_log_line(shared_data, tmp_path, caplog):
    shutil.copy(_br(shared_data, 6060, "20151030_000000"), tmp_path)
    shutil.copy(shared_data / "sharp" / f"{SERIES}.6060.20151030_000000_TAI.Bp.fits", tmp_path)
    (tmp_path / "notes.Br.fits").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="sharpgen.data"):
        m = D.local_manifest(str(tmp_path / "*.fits"))
    assert len(m) == 1
    assert "ignoring" in caplog.text and "notes.Br.fits" in caplog.text and ".Bp.fits" in caplog.text


def test_read_manifest_names_missing_columns(tmp_path):
    p = tmp_path / "records.tsv"
    pd.DataFrame({"path": ["a"], "harpnum": [1]}).to_csv(p, sep="\t", index=False)
    with pytest.raises(D.ManifestError, match=r"lacks column\(s\) \['source', 't_rec'\]"):
        D.read_manifest(p)


# --------------------------------------------------------------------------------------------
# file name vs header
# --------------------------------------------------------------------------------------------
def test_real_names_agree_with_their_headers(shared_data):
    files = sorted(shared_data.glob("sharp*/*.fits"))
    assert len(files) > 50
    for f in files:
        assert name_header_mismatches(f, read_sharp(f, segment_check=None).header) == [], f


def test_renamed_bp_is_refused_by_name(shared_data, tmp_path, caplog):
    """Issue 18: a Bp file renamed *.Br.fits was accepted and its header HARPNUM silently
    replaced the file name's."""
    bp = shared_data / "sharp" / f"{SERIES}.377.20110215_020000_TAI.Bp.fits"
    fake = tmp_path / f"{SERIES}.9004.20120101_000000_TAI.Br.fits"
    shutil.copy(bp, fake)
    with pytest.raises(D.SkipRecord) as err:
        D.load_record(fake)
    assert err.value.reason == "name_mismatch"
    msg = str(err.value)
    assert str(fake) in msg
    assert "header HARPNUM 377 != file name's 9004" in msg
    assert "header T_REC 2011.02.15_02:00:00_TAI != file name's 20120101_000000_TAI" in msg
    # through the patch stage: skipped by name, the good record still gives its patch
    good = _br(shared_data, 6060, "20151030_000000")
    records = pd.DataFrame([{"path": str(good), "source": "local", "harpnum": 6060, "t_rec": "x"},
                            {"path": str(fake), "source": "local", "harpnum": 9004, "t_rec": "x"}])
    with caplog.at_level(logging.WARNING):
        arr, table, summary = P.build_patches(records, P.PatchConfig.from_mapping(CFG), progress=False)
    assert list(table.harpnum) == [6060]
    assert summary["skipped"]["name_mismatch"] == 1
    assert summary["skipped_records"][0]["path"] == str(fake)
    assert f"skipping record {fake}: name_mismatch" in caplog.text


def test_bitmap_renamed_br_is_refused_by_its_unit(shared_data, tmp_path):
    """Same HARP and time, so only the header's BUNIT ('' for a bitmap) tells it is no Br."""
    src = shared_data / "sharp_real" / f"{SERIES}.1441.20120306_142400_TAI.bitmap.fits"
    fake = tmp_path / f"{SERIES}.1441.20120306_142400_TAI.Br.fits"
    shutil.copy(src, fake)
    with pytest.raises(D.SkipRecord, match="BUNIT '' is not a magnetic field unit") as err:
        D.load_record(fake)
    assert err.value.reason == "name_mismatch"


def test_header_segment_keyword_is_compared(shared_data):
    hdr = read_sharp(_br(shared_data, 6060, "20151030_000000")).header.copy()
    name = _br(shared_data, 6060, "20151030_000000")
    assert name_header_mismatches(name, hdr) == []
    hdr["SEGMENT"] = "Bt"
    assert name_header_mismatches(name, hdr) == ["header SEGMENT 'Bt' != file name's 'Br'"]
    assert name_header_mismatches(Path("my_own_name.fits"), hdr) == []  # not a JSOC name


def test_quality_flags_are_refused_by_name(shared_data):
    rec = _br(shared_data, 1447, "20120307_082400", "sharp_real")
    with pytest.raises(D.SkipRecord, match=r"QUALITY=0x00010400 has flags outside mask 0x0") as err:
        D.load_record(rec)
    assert err.value.reason == "quality" and str(rec) in str(err.value)
    assert D.load_record(rec, quality_mask=0x10400).harpnum == 1447


def test_skip_reasons_are_checked():
    with pytest.raises(ValueError, match="unknown skip reason"):
        D.SkipRecord("whatever", "x")


# --------------------------------------------------------------------------------------------
# the real records through Snakemake (issue 13)
# --------------------------------------------------------------------------------------------
LOCAL_REAL = "tests/configs/local_real.yaml"


@pytest.mark.slow
def test_real_records_as_local_source_through_snakemake(shared_data, tmp_path):
    """data.source local over ../shared/data/sharp_real and sharp (tests/configs/local_real.yaml,
    relative globs as a user writes them) up to the patch outputs: quality-flagged records and
    HARP 1422 (46 % NaN) are skipped by name in the rule's log, HARPs without NOAA number are kept."""
    work = su.copy_workflow(tmp_path / "main")
    (tmp_path / "shared").symlink_to(shared_data.parent, target_is_directory=True)
    targets = ["results/data/patches.parquet", "results/data/patches_summary.json"]
    proc = su.run_snakemake(work, *targets, "--cores", "2", "--configfile", "tests/configs/tiny.yaml",
                            LOCAL_REAL, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    ran = {e[1] for e in su.job_events(proc.stdout + proc.stderr) if e[0] == "start"}
    assert ran == {"ingest_local", "make_patches"}

    manifest = pd.read_csv(work / "results/data/records.tsv", sep="\t")
    assert len(manifest) == 17 and set(manifest.source) == {"local"}
    assert all(p.startswith("../shared/data/sharp") for p in manifest.path)

    log = (work / "results/logs/make_patches.log").read_text()
    skipped = {
        "quality": ["hmi.sharp_cea_720s.1446.20120307_082400_TAI.Br.fits",
                    "hmi.sharp_cea_720s.1447.20120307_082400_TAI.Br.fits"],
        "nan_fraction": ["hmi.sharp_cea_720s.1422.20120306_142400_TAI.Br.fits"],
    }
    lines = [ln for ln in log.splitlines() if "skipping record" in ln]
    assert len(lines) == 3, "\n".join(lines)
    for reason, names in skipped.items():
        for n in names:
            assert any(n in ln and f": {reason} (" in ln for ln in lines), (n, reason, lines)
    assert "QUALITY=0x00010400" in log and "NaN fraction 0.458 of the record" in log

    table = pd.read_parquet(work / "results/data/patches.parquet")
    got = sorted((int(r.harpnum), r.t_rec, None if pd.isna(r.noaa) else int(r.noaa))
                 for r in table.itertuples())
    expected = sorted(
        [(377, "2011.02.15_02:00:00_TAI", 11158),
         (6060, "2015.10.30_00:00:00_TAI", 12441), (6060, "2015.10.30_00:12:00_TAI", 12441)]
        + [(1441, t, None) for t in ("2012.03.06_14:24:00_TAI", "2012.03.06_20:24:00_TAI", "2012.03.07_02:24:00_TAI")]
        + [(1445, t, None) for t in ("2012.03.06_14:24:00_TAI", "2012.03.06_20:24:00_TAI")]
        + [(1446, t, None) for t in ("2012.03.06_20:24:00_TAI", "2012.03.07_02:24:00_TAI", "2012.03.07_14:24:00_TAI")]
        + [(1447, t, 11428) for t in ("2012.03.06_14:24:00_TAI", "2012.03.06_20:24:00_TAI", "2012.03.07_14:24:00_TAI")]
    )
    assert got == expected
    assert table.groupby("harpnum").split.nunique().max() == 1
    summary = pd.read_json(work / "results/data/patches_summary.json", typ="series")
    assert summary["n_records"] == 17 and summary["n_patches"] == 14
    assert {k: v for k, v in summary["skipped"].items() if v} == {"quality": 2, "nan_fraction": 1}
