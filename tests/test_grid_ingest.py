"""`grid ingest`: every input format round-trips; every bad input fails cleanly, leaving no file."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table
from click.testing import CliRunner

from cvae_pms import params as P
from cvae_pms.cli import main
from cvae_pms.grid.gridfile import open_grid, validate_grid
from cvae_pms.grid.ingest import IngestError, ingest_table

N = 40


def _data(n: int = N, seed: int = 3):
    rng = np.random.default_rng(seed)
    p = P.from_unit(rng.uniform(0.01, 0.99, size=(n, 7)))
    scale = np.logspace(4, 0, 55)
    bp = rng.normal(size=(n, 55)) * scale
    rp = rng.normal(size=(n, 55)) * scale
    bp[:, 0] = np.abs(bp[:, 0]) + 1e4
    rp[:, 0] = np.abs(rp[:, 0]) + 1e4
    return p, bp, rp


def _arr_str(a: np.ndarray, brackets: str = "()") -> list[str]:
    return [brackets[0] + ", ".join(repr(float(v)) for v in row) + brackets[1] for row in a]


def _frame(p, bp, rp, style: str = "strings") -> pd.DataFrame:
    df = pd.DataFrame(p, columns=list(P.NAMES))
    if style == "strings":
        df["bp_coefficients"] = _arr_str(bp)
        df["rp_coefficients"] = _arr_str(rp, "[]")
    else:
        coeff = pd.DataFrame(np.hstack([bp, rp]), columns=[f"{b}_coeff_{i}" for b in ("bp", "rp")
                                                           for i in range(55)])
        df = pd.concat([df, coeff], axis=1)
    return df


def _write(fmt: str, path, p, bp, rp) -> None:
    if fmt == "csv-strings":
        _frame(p, bp, rp).to_csv(path, index=False, float_format="%.17g")
    elif fmt == "csv-columns":
        _frame(p, bp, rp, "columns").to_csv(path, index=False, float_format="%.17g")
    elif fmt == "parquet":
        cols = {n: p[:, j] for j, n in enumerate(P.NAMES)}
        cols["bp_coefficients"] = pa.array(bp.tolist(), type=pa.list_(pa.float64()))
        cols["rp_coefficients"] = pa.array(rp.tolist(), type=pa.list_(pa.float64()))
        pq.write_table(pa.table(cols), path, row_group_size=16)
    elif fmt in ("fits", "ecsv", "votable"):
        t = Table({n: p[:, j] for j, n in enumerate(P.NAMES)})
        t["bp_coefficients"] = bp
        t["rp_coefficients"] = rp
        t.write(path, format={"fits": "fits", "ecsv": "ascii.ecsv", "votable": "votable"}[fmt])
    elif fmt == "fits-columns":
        Table.from_pandas(_frame(p, bp, rp, "columns")).write(path, format="fits")
    else:
        raise ValueError(fmt)


FORMATS = {"csv-strings": "t.csv", "csv-columns": "t.csv", "parquet": "t.parquet",
           "fits": "t.fits", "fits-columns": "t.fits", "ecsv": "t.ecsv", "votable": "t.vot"}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip_every_format(tmp_path, fmt):
    p, bp, rp = _data()
    src = tmp_path / FORMATS[fmt]
    _write(fmt, src, p, bp, rp)
    out = tmp_path / "g.h5"
    report = ingest_table(src, out, chunk_size=16)  # several chunks
    assert (report.rows_read, report.rows_written, report.rows_dropped) == (N, N, {})
    with open_grid(out) as g:
        np.testing.assert_allclose(g.params, p, rtol=1e-15, atol=0)
        gb, gr = g.coefficients()
        np.testing.assert_allclose(gb, bp, rtol=1e-15, atol=0)
        np.testing.assert_allclose(gr, rp, rtol=1e-15, atol=0)
        assert g.meta["source"] == src.name and g.meta["forward_model"] == {}
        assert g.meta["ingest"]["spectra"] == "coefficients"
        assert g.reference_distance_pc is None
    validate_grid(out)


def test_hdf5_layout_with_column_order(tmp_path):
    p, bp, rp = _data()
    order = ["mass", "teff", "Macc", "logg", "mh", "ff", "a0"]
    ours = [("log_mdot" if c == "Macc" else c) for c in order]
    src = tmp_path / "other.h5"
    with h5py.File(src, "w") as h:
        h["grid/pars"] = np.column_stack([p[:, P.INDEX[c]] for c in ours])
        h["grid/bp"] = bp
        h["grid/rp"] = rp
    out = tmp_path / "g.h5"
    r = CliRunner().invoke(main, ["grid", "ingest", str(src), "--out", str(out),
                                  "--hdf5-params", "grid/pars", "--hdf5-bp", "grid/bp",
                                  "--hdf5-rp", "grid/rp", "--map", "Macc=log_mdot",
                                  "--hdf5-param-columns", ",".join(order)])
    assert r.exit_code == 0, r.output
    with open_grid(out) as g:
        np.testing.assert_array_equal(g.params, p)
        np.testing.assert_array_equal(g.coefficients()[1], rp)


@pytest.mark.parametrize("layout", ["csv-columns", "parquet-array"])
def test_flux_only_input(tmp_path, layout):
    from cvae_pms.xp.sampling import calibration_matrices
    a_bp, a_rp = calibration_matrices()
    p, bp, rp = _data()
    flux = (bp @ a_bp + rp @ a_rp) * 1e-3
    if layout == "csv-columns":
        df = pd.concat([pd.DataFrame(p, columns=list(P.NAMES)),
                        pd.DataFrame(flux, columns=[f"flux_{i}" for i in range(343)])], axis=1)
        src = tmp_path / "flux.csv"
        df.to_csv(src, index=False, float_format="%.17g")
    else:
        cols = {n: p[:, j] for j, n in enumerate(P.NAMES)}
        cols["flux"] = pa.array(flux.tolist(), type=pa.list_(pa.float64()))
        src = tmp_path / "flux.parquet"
        pq.write_table(pa.table(cols), src)
    out = tmp_path / "g.h5"
    r = CliRunner().invoke(main, ["grid", "ingest", str(src), "--out", str(out),
                                  "--reference-distance-pc", "10"])
    assert r.exit_code == 0, r.output
    with open_grid(out) as g:
        assert g.has_sampled_flux and g.reference_distance_pc == 10.0
        np.testing.assert_allclose(g.sampled_flux(), flux, rtol=1e-15)
        gb, gr = g.coefficients()
        calib = gb @ a_bp + gr @ a_rp
        rel = np.linalg.norm(calib - flux, axis=1) / np.linalg.norm(flux, axis=1)
        assert np.median(rel) < 0.01
        fit = g.meta["ingest"]["flux_fit"]
        assert fit["rel_residual_median"] == pytest.approx(np.median(rel), rel=1e-6)
        # coefficients stay sane (plain least squares gives |c| ~1e3-1e4 times too large)
        for fitted, true in ((gb, bp * 1e-3), (gr, rp * 1e-3)):
            ratio = np.linalg.norm(fitted, axis=1) / np.linalg.norm(true, axis=1)
            assert np.all((ratio > 0.5) & (ratio < 2.0))
    validate_grid(out)


def test_map_and_mdot_linear(tmp_path):
    p, bp, rp = _data()
    df = _frame(p, bp, rp).rename(columns={"teff": "Teff", "log_mdot": "Macc"})
    df["Macc"] = 10.0 ** df["Macc"]
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False, float_format="%.17g")
    out = tmp_path / "g.h5"
    r = CliRunner().invoke(main, ["grid", "ingest", str(src), "--out", str(out), "--map",
                                  "Teff=teff", "--map", "Macc=log_mdot", "--mdot-linear"])
    assert r.exit_code == 0, r.output
    with open_grid(out) as g:
        np.testing.assert_allclose(g.params, p, rtol=1e-13)
        assert g.meta["ingest"]["column_map"] == {"Teff": "teff", "Macc": "log_mdot"}
        assert g.meta["ingest"]["mdot_linear"] is True


def test_drop_invalid_counts(tmp_path):
    p, bp, rp = _data()
    p[3, 0] = 9000.0          # out of bounds
    p[5, 6] = -1.0            # out of bounds
    p[7, 1] = np.nan          # NaN parameter
    p[9] = p[2]               # duplicate
    bp[11, 4] = np.inf        # bad spectrum
    src = tmp_path / "t.parquet"
    _write("parquet", src, p, bp, rp)
    out = tmp_path / "g.h5"
    rep = ingest_table(src, out, drop_invalid=True)
    assert rep.rows_read == N and rep.rows_written == N - 5
    assert sum(rep.rows_dropped.values()) == 5
    assert any("teff" in k for k in rep.rows_dropped)
    keep = np.setdiff1d(np.arange(N), [3, 5, 7, 9, 11])
    with open_grid(out) as g:
        np.testing.assert_array_equal(g.params, p[keep])
        assert sum(g.meta["ingest"]["rows_dropped"].values()) == 5


@pytest.mark.parametrize("fmt", ["csv-columns", "parquet", "fits"])
def test_duplicates_across_chunk_boundaries(tmp_path, fmt):
    """Chunks of 8 rows: duplicates within a chunk (9 of 8), across adjacent chunks (16 of 15),
    far apart (20 and 33 of 3), and -0.0 vs 0.0 (37 of 5) are all found; a row repeating the
    parameters of a row dropped for another reason (30 of 24, bad spectrum) is the first valid
    occurrence and is kept."""
    p, bp, rp = _data()
    p[5, P.INDEX["a0"]] = 0.0
    for dup, orig in ((9, 8), (16, 15), (20, 3), (33, 3), (37, 5), (30, 24)):
        p[dup] = p[orig]
    p[37, P.INDEX["a0"]] = -0.0
    bp[24, 7] = np.inf
    src = tmp_path / FORMATS[fmt]
    _write(fmt, src, p, bp, rp)
    rep = ingest_table(src, tmp_path / "g.h5", drop_invalid=True, chunk_size=8)
    dup_key = "duplicating an earlier parameter vector"
    assert rep.rows_read == N and rep.rows_dropped[dup_key] == 5
    assert rep.rows_written == N - 6
    keep = np.setdiff1d(np.arange(N), [9, 16, 20, 33, 37, 24])
    with open_grid(tmp_path / "g.h5") as g:
        np.testing.assert_array_equal(g.params, p[keep])
        assert len(np.unique(g.params, axis=0)) == g.params.shape[0]
    with pytest.raises(IngestError, match=r"5 rows duplicating an earlier parameter vector "
                                          r"\(rows 9, 16, 20, 33, 37\)"):
        ingest_table(src, tmp_path / "h.h5", chunk_size=8)
    assert not (tmp_path / "h.h5").exists()


def _fails(tmp_path, src, *extra, match: str) -> None:
    out = tmp_path / "out" / "g.h5"
    out.parent.mkdir(exist_ok=True)
    r = CliRunner().invoke(main, ["grid", "ingest", str(src), "--out", str(out), *extra])
    assert r.exit_code != 0, r.output
    assert match in r.output, r.output
    assert list(out.parent.iterdir()) == []


def _csv(tmp_path, p, bp, rp, name="bad.csv", **kw):
    src = tmp_path / name
    _frame(p, bp, rp, **kw).to_csv(src, index=False, float_format="%.17g")
    return src


def test_bad_parameters(tmp_path):
    p, bp, rp = _data()
    q = p.copy()
    q[[4, 8, 30], 4] = 0.5
    _fails(tmp_path, _csv(tmp_path, q, bp, rp), match="3 rows outside the bounds of ff")
    _fails(tmp_path, _csv(tmp_path, q, bp, rp), match="rows 4, 8, 30")
    q = p.copy()
    q[6, 2] = np.nan
    _fails(tmp_path, _csv(tmp_path, q, bp, rp), match="1 rows with NaN/inf parameters (rows 6)")
    q = p.copy()
    q[10] = q[1]
    _fails(tmp_path, _csv(tmp_path, q, bp, rp), match="duplicating an earlier parameter vector "
                                                       "(rows 10)")
    q = p.copy()
    q[:, 3] = 10.0 ** q[:, 3]
    q[12, 3] = 0.0
    _fails(tmp_path, _csv(tmp_path, q, bp, rp), "--mdot-linear", match="Mdot <= 0")


def test_bad_spectra(tmp_path):
    p, bp, rp = _data()
    b = bp.copy()
    b[2, 7] = np.nan
    _fails(tmp_path, _csv(tmp_path, p, b, rp), match="missing bp_coefficients (rows 2)")
    df = _frame(p, bp, rp)
    df.loc[5, "rp_coefficients"] = "(" + ", ".join(["1.0"] * 54) + ")"
    df.to_csv(tmp_path / "short.csv", index=False)
    _fails(tmp_path, tmp_path / "short.csv", match="wrong number of coefficients in "
                                                  "'rp_coefficients': row 5 has 54, expected 55")
    df = _frame(p, bp, rp, "columns").drop(columns=["bp_coeff_54"])
    df.to_csv(tmp_path / "cols.csv", index=False)
    _fails(tmp_path, tmp_path / "cols.csv", match="wrong number of coefficients")


def test_missing_column_and_bad_map(tmp_path):
    p, bp, rp = _data()
    df = _frame(p, bp, rp).drop(columns=["mass"])
    df.to_csv(tmp_path / "m.csv", index=False)
    _fails(tmp_path, tmp_path / "m.csv", match="missing parameter column(s) mass")
    _fails(tmp_path, tmp_path / "m.csv", match="columns: teff, logg")
    _fails(tmp_path, _csv(tmp_path, p, bp, rp), "--map", "Mstar=mass", match="Mstar")
    df = pd.DataFrame(p, columns=list(P.NAMES))
    df.to_csv(tmp_path / "nospec.csv", index=False)
    _fails(tmp_path, tmp_path / "nospec.csv", match="no spectra")


def test_empty_and_not_a_table(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    _fails(tmp_path, tmp_path / "empty.csv", match="empty")
    p, bp, rp = _data()
    _frame(p, bp, rp).iloc[:0].to_csv(tmp_path / "header.csv", index=False)
    _fails(tmp_path, tmp_path / "header.csv", match="no data rows")
    (tmp_path / "blob.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    _fails(tmp_path, tmp_path / "blob.bin", match="not a table")
    _fails(tmp_path, tmp_path / "absent.csv", match="not found")


def test_corrupt_hdf5_and_hdf5_errors(tmp_path):
    p, bp, rp = _data()
    src = tmp_path / "other.h5"
    with h5py.File(src, "w") as h:
        h["p"] = p
        h["bp"] = bp
        h["rp"] = rp[:, :50]
    args = ["--hdf5-params", "p", "--hdf5-bp", "bp", "--hdf5-rp", "rp"]
    _fails(tmp_path, src, *args, match="wrong number of coefficients")
    _fails(tmp_path, src, "--hdf5-params", "p", "--hdf5-bp", "bp", "--hdf5-rp", "nope",
           match="no dataset 'nope'")
    data = src.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    _fails(tmp_path, tmp_path / "trunc.h5", *args, match="not a readable HDF5 file")


def test_output_directory_missing(tmp_path):
    p, bp, rp = _data()
    src = _csv(tmp_path, p, bp, rp, name="ok.csv")
    r = CliRunner().invoke(main, ["grid", "ingest", str(src), "--out",
                                  str(tmp_path / "no" / "g.h5")])
    assert r.exit_code == 1 and "does not exist" in r.output
    with pytest.raises(IngestError, match="does not exist"):
        ingest_table(src, tmp_path / "no" / "g.h5")


REAL_TABLES = ["gaiaxpy_samples/XP_CONTINUOUS_RAW.csv", "gaiaxpy_samples/XP_CONTINUOUS_RAW.ecsv",
               "xp_spectral_lines/xp_continuous_combined_weiler2023_examples.vot"]


@pytest.mark.parametrize("name", REAL_TABLES)
def test_real_archive_layouts(tmp_path, real_xp, name):
    """Real archive files (plus made-up parameter columns) ingest to their exact coefficients."""
    path = real_xp / name
    fmt = {"csv": "ascii.csv", "ecsv": "ascii.ecsv", "vot": "votable"}[path.suffix[1:]]
    t = Table.read(path, format=fmt)
    p, *_ = _data(len(t))
    for j, n in enumerate(P.NAMES):
        t[n] = p[:, j]
    if path.suffix == ".csv":  # keep the archive's '(...)' strings as they are
        df = pd.read_csv(path)
        for j, n in enumerate(P.NAMES):
            df[n] = p[:, j]
        src = tmp_path / "in.csv"
        df.to_csv(src, index=False, float_format="%.17g")
        expect = np.array([[float(v) for v in s.strip("()").split(",")]
                           for s in df["bp_coefficients"]])
    else:
        src = tmp_path / ("in" + path.suffix)
        t.write(src, format=fmt)
        expect = np.stack([np.asarray(v, dtype=float) for v in t["bp_coefficients"]])
    out = tmp_path / "g.h5"
    ingest_table(src, out)
    with open_grid(out) as g:
        np.testing.assert_array_equal(g.coefficients()[0], expect)
        np.testing.assert_allclose(g.params, p, rtol=1e-15)


def test_real_missing_band(tmp_path, real_xp):
    df = pd.read_csv(real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    p, *_ = _data(len(df))
    for j, n in enumerate(P.NAMES):
        df[n] = p[:, j]
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    bad = np.flatnonzero(df["bp_coefficients"].isna().to_numpy())
    assert bad.size == 1
    _fails(tmp_path, src, match=f"missing bp_coefficients (rows {bad[0]})")
    rep = ingest_table(src, tmp_path / "g.h5", drop_invalid=True)
    assert rep.rows_written == len(df) - 1
