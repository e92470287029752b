"""Gaia XP archive readers, covariance construction and the archive-layout writer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cvae_pms.xp.archive import XPBatch, XPReadError, iter_xp, read_xp, write_xp_table
from cvae_pms.xp.covariance import (band_covariance, errors_and_correlations,
                                    is_positive_definite, lower_triangle_covariance)

PROXIMA = 5853498713190525696


@pytest.fixture(scope="module")
def samples(real_xp):
    return real_xp / "gaiaxpy_samples"


@pytest.fixture(scope="module")
def fits_path(real_xp):
    return real_xp / "xp_spectral_lines" / "xp_continuous_combined_chunk0.fits"


@pytest.fixture(scope="module")
def raw_csv(samples):
    return read_xp(samples / "XP_CONTINUOUS_RAW.csv")


def _check_valid(batch: XPBatch) -> None:
    ok = batch.ok
    assert np.isfinite(batch.bp_coefficients[ok]).all() and np.isfinite(batch.rp_covariance[ok]).all()
    assert np.isnan(batch.bp_coefficients[~ok]).all() and np.isnan(batch.rp_covariance[~ok]).all()
    for cov in (batch.bp_covariance[ok], batch.rp_covariance[ok]):
        np.testing.assert_array_equal(cov, np.swapaxes(cov, 1, 2))
        assert (np.diagonal(cov, axis1=1, axis2=2) > 0).all()


@pytest.mark.parametrize("name, n, n_ok, corr", [
    ("gaiaxpy_samples/XP_CONTINUOUS_RAW.csv", 2, 2, True),
    ("gaiaxpy_samples/XP_CONTINUOUS_RAW.ecsv", 2, 2, True),
    ("gaiaxpy_samples/18Sco-XP-spectra.csv", 1, 1, True),
    ("gaiaxpy_samples/MeanSpectrumSolutionWithCov.avro", 2, 2, True),
    ("gaiaxpy_samples/regular_single_source.avro", 1, 0, False),
    ("gaiaxpy_samples/sources.avro", 30, 0, False),
    ("xp_spectral_lines/xp_continuous_combined_chunk0.fits", 2000, 2000, False),
    ("xp_spectral_lines/xp_continuous_combined_weiler2023_examples.vot", 4, 4, True),
])
def test_every_real_file_reads(real_xp, name, n, n_ok, corr):
    batch = read_xp(real_xp / name)
    assert len(batch) == n and int(batch.ok.sum()) == n_ok
    assert batch.source_id.dtype == np.int64 and (batch.source_id > 0).all()
    assert batch.bp_coefficients.shape == (n, 55) and batch.rp_covariance.shape == (n, 55, 55)
    assert bool(batch.correlations_present[batch.ok].all()) == corr or n_ok == 0
    assert set(batch.extra) >= {"parallax", "phot_g_mean_mag", "bp_standard_deviation"}
    _check_valid(batch)


def test_short_avro_solutions_are_flagged_like_gaiaxpy_refuses_them(samples):
    # gaiaxpy.calibrate raises "Coefficients length doesn't match" for these test products
    batch = read_xp(samples / "sources.avro")
    assert set(batch.error) == {"BP coefficients: 51 values, expected 55"}
    assert (batch.bp_n_parameters == 51).all() and (batch.rp_n_parameters == 55).all()
    single = read_xp(samples / "regular_single_source.avro")
    assert single.error[0] == ("BP coefficients: 48 values, expected 55; "
                               "RP coefficients: 44 values, expected 55")


def test_csv_ecsv_avro_agree(samples, raw_csv):
    ecsv = read_xp(samples / "XP_CONTINUOUS_RAW.ecsv")
    np.testing.assert_array_equal(ecsv.source_id, raw_csv.source_id)
    np.testing.assert_array_equal(ecsv.bp_coefficients, raw_csv.bp_coefficients)
    np.testing.assert_array_equal(ecsv.rp_covariance, raw_csv.rp_covariance)
    avro = read_xp(samples / "MeanSpectrumSolutionWithCov.avro")
    i = list(raw_csv.source_id).index(PROXIMA)
    j = list(avro.source_id).index(PROXIMA)
    np.testing.assert_allclose(avro.bp_coefficients[j], raw_csv.bp_coefficients[i], rtol=1e-12)
    # Avro covariance * standardDeviation^2 == archive errors/correlations (float32 in the CSV)
    for band in ("bp", "rp"):
        a = getattr(avro, f"{band}_covariance")[j]
        c = getattr(raw_csv, f"{band}_covariance")[i]
        scale = np.sqrt(np.outer(np.diag(c), np.diag(c)))
        np.testing.assert_allclose(a / scale, c / scale, atol=2e-6)


def test_missing_bp_source_is_flagged_and_others_kept(samples):
    batch = read_xp(samples / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    assert batch.source_id.tolist() == [5853498713190525696, 5405570973190252288, 5762406957886626816]
    assert batch.error.tolist() == ["", "BP band missing", ""]
    assert batch.bp_n_parameters.tolist() == [55, 0, 55] and batch.rp_n_parameters.tolist() == [55] * 3
    assert batch.ok.tolist() == [True, False, True]


def test_fits_per_value_columns_and_chunked_streaming(fits_path):
    from astropy.io import fits

    batches = list(iter_xp(fits_path, chunk_size=700))
    assert [len(b) for b in batches] == [700, 700, 600]
    whole = XPBatch.concat(batches)
    with fits.open(fits_path) as hdul:
        data = hdul[1].data
        coeff = np.column_stack([data[f"rp_coeff_{k}"] for k in range(55)]).astype(float)
        err = np.column_stack([data[f"e_bp_coeff_{k}"] for k in range(55)]).astype(float)
        np.testing.assert_array_equal(whole.source_id, data["source_id"])
    np.testing.assert_array_equal(whole.rp_coefficients, coeff)
    np.testing.assert_array_equal(np.diagonal(whole.bp_covariance, axis1=1, axis2=2), err**2)
    off = whole.bp_covariance - np.einsum("ni,ij->nij", err**2, np.eye(55))
    assert not off.any()                      # no correlations: diagonal covariance
    assert not whole.correlations_present.any()
    sub = whole.select(np.arange(5, 9))
    assert len(sub) == 4 and sub.source_id.tolist() == whole.source_id[5:9].tolist()


def test_covariance_matches_gaiaxpy_construction(raw_csv, samples):
    from gaiaxpy.core.generic_functions import array_to_symmetric_matrix, str_to_array
    from gaiaxpy.spectrum.utils import _correlation_to_covariance_dr3int5

    row = pd.read_csv(samples / "XP_CONTINUOUS_RAW.csv").iloc[0]
    for band in ("bp", "rp"):
        corr = array_to_symmetric_matrix(str_to_array(row[f"{band}_coefficient_correlations"]), 55)
        errors = str_to_array(row[f"{band}_coefficient_errors"])
        std = row[f"{band}_standard_deviation"]
        ref = _correlation_to_covariance_dr3int5(corr, errors, std) * std**2
        ours = getattr(raw_csv, f"{band}_covariance")[0]
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
        np.testing.assert_allclose(np.diag(ours), errors**2, rtol=1e-15)


def test_band_covariance_properties_and_inverse():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 55, 80))
    cov = a @ np.swapaxes(a, 1, 2) / 80
    errors, corr = errors_and_correlations(cov)
    assert corr.shape == (3, 1485) and (np.abs(corr) <= 1).all()
    back = band_covariance(errors, corr)
    np.testing.assert_allclose(back, cov, rtol=1e-12, atol=1e-14)
    diag = band_covariance(errors, None)
    np.testing.assert_array_equal(diag, np.einsum("ni,ij->nij", errors**2, np.eye(55)))
    tri = cov[:, np.tril_indices(55)[0], np.tril_indices(55)[1]]
    np.testing.assert_array_equal(lower_triangle_covariance(tri), cov)


def test_is_positive_definite_flags_each_bad_matrix():
    good = np.eye(55)[None].repeat(4, axis=0)
    bad = np.full((55, 55), -0.5) + 1.5 * np.eye(55)      # eigenvalue 1.5 - 0.5*55 < 0
    batch = np.stack([good[0], bad, good[1], np.full((55, 55), np.nan)])
    assert is_positive_definite(batch).tolist() == [True, False, True, False]
    assert is_positive_definite(good).all() and is_positive_definite(good[:0]).shape == (0,)
    many = np.concatenate([good, batch, good])
    assert is_positive_definite(many, block=3).tolist() == [True] * 5 + [False, True, False] + [True] * 4


def test_gzipped_csv_reads_like_the_plain_file(samples, raw_csv, tmp_path):
    import gzip

    path = tmp_path / "raw.csv.gz"
    path.write_bytes(gzip.compress((samples / "XP_CONTINUOUS_RAW.csv").read_bytes()))
    batch = read_xp(path)
    np.testing.assert_array_equal(batch.rp_covariance, raw_csv.rp_covariance)


# --------------------------------------------------------------------------- writer
@pytest.mark.parametrize("ext", ["csv", "ecsv"])
def test_write_read_round_trip_and_gaiaxpy_reads_it(tmp_path, raw_csv, ext):
    import contextlib
    import io

    import gaiaxpy

    out = write_xp_table(tmp_path / f"w.{ext}", raw_csv)
    assert [p.name for p in tmp_path.iterdir()] == [f"w.{ext}"]  # no temporary left behind
    back = read_xp(out)
    np.testing.assert_array_equal(back.source_id, raw_csv.source_id)
    np.testing.assert_array_equal(back.bp_coefficients, raw_csv.bp_coefficients)
    np.testing.assert_allclose(back.rp_covariance, raw_csv.rp_covariance, rtol=1e-13, atol=0)
    assert back.correlations_present.all() and back.ok.all()
    with contextlib.redirect_stdout(io.StringIO()):
        df, _ = gaiaxpy.calibrate(str(out), save_file=False)
    assert df["source_id"].tolist() == raw_csv.source_id.tolist()
    assert np.isfinite(np.stack(df["flux"])).all()


def test_writer_mapping_with_missing_band_and_extra(tmp_path, raw_csv):
    bp = raw_csv.bp_coefficients.copy()
    bp[1] = np.nan
    data = {"source_id": raw_csv.source_id, "bp_coefficients": bp,
            "rp_coefficients": raw_csv.rp_coefficients, "bp_covariance": raw_csv.bp_covariance,
            "rp_covariance": raw_csv.rp_covariance, "extra": {"parallax": np.array([768.07, 1.5])}}
    back = read_xp(write_xp_table(tmp_path / "m.csv", data))
    assert back.error.tolist() == ["", "BP band missing"]
    np.testing.assert_array_equal(back.extra["parallax"], [768.07, 1.5])
    with pytest.raises(XPReadError, match="does not exist"):
        write_xp_table(tmp_path / "nowhere" / "m.csv", data)
    with pytest.raises(XPReadError, match="writes .csv or .ecsv"):
        write_xp_table(tmp_path / "m.fits", data)


@pytest.mark.parametrize("ext", ["csv", "ecsv"])
def test_writer_streams_in_chunks_with_one_header(tmp_path, raw_csv, monkeypatch, ext):
    """Several chunks (one source each here): one header, every row once, in order, and a
    missing band or an extra column in a later chunk survives."""
    from cvae_pms.xp import archive_write
    monkeypatch.setattr(archive_write, "WRITE_CHUNK", 1)
    n = 5
    idx = np.arange(n) % len(raw_csv.source_id)
    bp = raw_csv.bp_coefficients[idx].copy()
    bp[3] = np.nan
    data = {"source_id": np.arange(n) + 100, "bp_coefficients": bp,
            "rp_coefficients": raw_csv.rp_coefficients[idx],
            "bp_covariance": raw_csv.bp_covariance[idx], "rp_covariance": raw_csv.rp_covariance[idx],
            "extra": {"phot_g_mean_mag": np.linspace(10, 14, n), "empty": np.full(n, np.nan)}}
    out = write_xp_table(tmp_path / f"c.{ext}", data)
    text = out.read_text()
    assert sum(line.startswith("source_id,") for line in text.splitlines()) == 1
    back = read_xp(out)
    np.testing.assert_array_equal(back.source_id, np.arange(n) + 100)
    assert back.error[3] == "BP band missing" and back.ok.sum() == n - 1
    np.testing.assert_array_equal(back.rp_coefficients[back.ok], raw_csv.rp_coefficients[idx][back.ok])
    np.testing.assert_allclose(back.extra["phot_g_mean_mag"], np.linspace(10, 14, n))
    assert "empty" not in back.extra


# --------------------------------------------------------------------------- bad input
def test_whole_file_problems_raise_with_the_file_name(tmp_path):
    cases = {"notes.csv": "hello,world\n1,2\n", "empty.csv": "", "garbage.fits": "not a fits file",
             "garbage.avro": "not avro", "garbage.vot": "<html>nope</html>", "x.txt": "a,b\n",
             "header_only.csv": "source_id,bp_coefficients,rp_coefficients\n"}
    expected = {"notes.csv": "no 'source_id' column", "empty.csv": "file is empty",
                "garbage.fits": "not a readable FITS", "garbage.avro": "not a readable Avro",
                "garbage.vot": "not a readable VOTable", "x.txt": "unknown XP file format",
                "header_only.csv": "no sources"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(XPReadError, match=expected[name]) as info:
            read_xp(path)
        assert str(path) in str(info.value)
    with pytest.raises(XPReadError, match="no such file"):
        read_xp(tmp_path / "absent.csv")


def _edited_csv(samples, tmp_path, edit) -> XPBatch:
    df = pd.read_csv(samples / "XP_CONTINUOUS_RAW.csv", dtype=object)
    edit(df)
    path = tmp_path / "edited.csv"
    df.to_csv(path, index=False)
    return read_xp(path)


def test_nan_and_wrong_length_and_bad_covariance_are_flagged_per_source(samples, tmp_path):
    def nan_bp(df):
        values = df.loc[0, "bp_coefficients"].strip("()[]").split(",")
        df.loc[0, "bp_coefficients"] = "(" + ",".join(["nan"] + values[1:]) + ")"

    batch = _edited_csv(samples, tmp_path, nan_bp)
    assert batch.error.tolist() == ["NaN in BP coefficients", ""]

    def short_rp(df):
        values = df.loc[1, "rp_coefficients"].strip("()[]").split(",")
        df.loc[1, "rp_coefficients"] = "[" + ",".join(values[:54]) + "]"

    batch = _edited_csv(samples, tmp_path, short_rp)
    assert batch.error.tolist() == ["", "RP coefficients: 54 values, expected 55"]
    assert batch.rp_n_parameters.tolist() == [55, 54]

    def indefinite(df):
        df.loc[0, "bp_coefficient_correlations"] = "[" + ",".join(["-0.5"] * 1485) + "]"

    batch = _edited_csv(samples, tmp_path, indefinite)
    assert batch.error.tolist() == ["BP covariance not positive definite", ""]
    assert np.isnan(batch.bp_covariance[0]).all() and batch.ok.tolist() == [False, True]


def test_avro_record_problems_are_flagged_per_source(samples, tmp_path):
    import fastavro

    with open(samples / "MeanSpectrumSolutionWithCov.avro", "rb") as fh:
        reader = fastavro.reader(fh)
        schema, records = reader.writer_schema, list(reader)
    records[0]["rpSpec"]["solution"]["covariance"] = None
    records[1]["bpSpec"]["solution"]["parameters"][3] = float("nan")
    path = tmp_path / "edited.avro"
    with open(path, "wb") as fh:
        fastavro.writer(fh, schema, records)
    batch = read_xp(path)
    assert batch.error.tolist() == ["RP covariance missing", "NaN in BP coefficients"]
    assert not batch.ok.any() and len(batch) == 2


def test_one_pass_column_parsing_equals_cell_by_cell_and_falls_back_on_anything_odd():
    """The whole-column parser gives the same floats as ``float`` per value (round-trip exact)
    and declines every cell set the per-cell path has to word an error or a NaN for."""
    from cvae_pms.xp import batch as xb

    rng = np.random.default_rng(3)
    values = rng.normal(size=(40, 55)) * 10.0 ** rng.integers(-20, 20, size=(40, 55))
    cells = ["[" + ",".join(repr(float(v)) for v in row) + "]" for row in values]
    fast = xb.parse_uniform_cells(cells, 55)
    assert fast is not None and np.array_equal(fast, values)
    slow = np.array([xb.as_values(c) for c in cells])
    assert np.array_equal(fast, slow)
    # the filled array and lengths are what the per-cell path gives
    out, lengths = xb.fill_cells(cells, 55, "BP coefficients", [[] for _ in cells], required=True)
    assert np.array_equal(out, values) and (lengths == 55).all()
    odd = {"null": cells[:3] + ["[" + ",".join(["null"] + ["1.0"] * 54) + "]"],
           "nan": cells[:3] + ["[" + ",".join(["nan"] + ["1.0"] * 54) + "]"],
           "short": cells[:3] + ["[" + ",".join(["1.0"] * 54) + "]"],
           "missing": cells[:3] + [""],
           "none": cells[:3] + [None],
           "newline": cells[:3] + ["[" + ",".join(["1.0"] * 27 + ["1.0\n2.0"] + ["1.0"] * 26) + "]"],
           "array": [np.ones(55)] * 4}
    for name, case in odd.items():
        assert xb.parse_uniform_cells(case, 55) is None, name
    errors = [[] for _ in range(4)]
    out, lengths = xb.fill_cells(odd["short"], 55, "BP coefficients", errors, required=True)
    assert np.array_equal(out[:3], values[:3]) and np.isnan(out[3]).all()
    assert errors[3] == ["BP coefficients: 54 values, expected 55"] and lengths[3] == 54


def test_missing_cells_keep_the_one_pass_parse_for_the_rest(monkeypatch):
    """A chunk with missing sources ("" or None cells) parses its full cells in one pass and
    words the missing ones exactly as the cell-by-cell path does."""
    from cvae_pms.xp import batch as xb

    values = np.random.default_rng(4).normal(size=(5, 55))
    cells = ["[" + ",".join(repr(float(v)) for v in row) + "]" for row in values]
    cells[1], cells[3] = "", None
    calls = []
    real = xb._parse_texts
    monkeypatch.setattr(xb, "_parse_texts", lambda t, w: calls.append(len(t)) or real(t, w))
    errors = [[] for _ in cells]
    out, lengths = xb.fill_cells(cells, 55, "BP coefficients", errors, required=True)
    assert calls == [3]
    monkeypatch.setattr(xb, "_parse_texts", lambda t, w: None)       # the cell-by-cell path
    errors_slow = [[] for _ in cells]
    out_slow, lengths_slow = xb.fill_cells(cells, 55, "BP coefficients", errors_slow, required=True)
    assert np.array_equal(out, out_slow, equal_nan=True) and np.array_equal(lengths, lengths_slow)
    assert errors == errors_slow == [[], ["BP coefficients missing"], [], ["BP coefficients missing"], []]
    assert np.array_equal(out[[0, 2, 4]], values[[0, 2, 4]]) and lengths.tolist() == [55, 0, 55, 0, 55]
