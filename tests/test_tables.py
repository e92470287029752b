"""One definition each: the suffix -> astropy format map (cvae_pms.io.tables) and the
numpy -> JSON conversion (cvae_pms.io.json_ready), with the writers that use them."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from astropy.table import Table

from cvae_pms.io import tables
from cvae_pms.io.tables import SUMMARY_SUFFIXES, TEXT_SUFFIXES, table_format


@pytest.mark.parametrize("name, fmt", [
    ("a.csv", "ascii.csv"), ("a.ECSV", "ascii.ecsv"), ("a.fits", "fits"), ("a.fit", "fits"),
    ("a.fits.gz", "fits"), ("a.vot", "votable"), ("a.xml", "votable"), ("dir.v1/a.votable", "votable"),
    ("a.parquet", None), ("a", None), ("a.csv.bak", None)])
def test_table_format_by_suffix(name, fmt):
    assert table_format(name) == fmt


def test_allowed_suffixes_filter_the_format():
    assert table_format("x.fits", TEXT_SUFFIXES) is None
    assert table_format("x.ecsv", TEXT_SUFFIXES) == "ascii.ecsv"
    assert table_format("x.vot", SUMMARY_SUFFIXES) is None
    assert table_format("x.fits", SUMMARY_SUFFIXES) == "fits"


def test_module_examples():
    assert doctest.testmod(tables).failed == 0


@pytest.mark.parametrize("suffix", SUMMARY_SUFFIXES)
def test_summary_round_trip_in_every_summary_format(tmp_path, suffix):
    from cvae_pms.posterior_file import read_summary, write_summary
    t = Table({"source_id": np.array([1, 2], np.int64), "teff_median": [4000.5, 5100.25]})
    path = write_summary(t, tmp_path / f"s{suffix}")
    back = read_summary(path)
    assert list(back["source_id"]) == [1, 2]
    np.testing.assert_allclose(back["teff_median"], t["teff_median"])


def test_summary_refuses_other_formats_naming_the_file(tmp_path):
    from cvae_pms.posterior_file import PosteriorFileError, write_summary
    with pytest.raises(PosteriorFileError, match=r"s\.vot: summary format must be"):
        write_summary(Table({"a": [1]}), tmp_path / "s.vot")


def test_json_ready_rules_and_valid_json(tmp_path):
    """One conversion: results get null for NaN/inf (valid JSON); the grid meta keeps its
    hashed rule ("NaN", infinities as they are)."""
    import json
    from pathlib import Path

    from cvae_pms.diagnostics.result_files import write_json
    from cvae_pms.grid.format import canonical_meta_json
    from cvae_pms.io.json_ready import json_ready
    from cvae_pms.model.rundir import write_json as write_run_json

    obj = {"x": np.array([1.0, np.nan]), "n": np.int32(3), "ok": np.bool_(True),
           "p": Path("a/b"), "t": (np.float32(0.5), np.inf)}
    want = {"x": [1.0, None], "n": 3, "ok": True, "p": "a/b", "t": [0.5, None]}
    assert json_ready(obj) == want
    for writer, name in ((write_json, "r.json"), (write_run_json, "m.json")):
        writer(tmp_path / name, obj)
        assert json.loads((tmp_path / name).read_text()) == want
        assert "NaN" not in (tmp_path / name).read_text()
    assert canonical_meta_json({"a": float("nan"), "b": 1.5}) == '{"a":"NaN","b":1.5}'
    assert json_ready([np.nan, -np.inf], nan="NaN", keep_inf=True) == ["NaN", -np.inf]
