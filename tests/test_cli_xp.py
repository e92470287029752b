"""``cvae-pms xp info`` and ``cvae-pms xp sample``: output, files and exit codes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cvae_pms.cli import main
from cvae_pms.xp.archive import read_xp
from cvae_pms.xp.sampling import SAMPLING_NM, sampled_flux, sampled_flux_error


@pytest.fixture(scope="module")
def samples(real_xp):
    return real_xp / "gaiaxpy_samples"


def _run(*args):
    return CliRunner().invoke(main, ["xp", *map(str, args)])


def test_info_lists_sources_flags_and_counts(samples, real_xp):
    vot = real_xp / "xp_spectral_lines" / "xp_continuous_combined_weiler2023_examples.vot"
    res = _run("info", samples / "XP_CONTINUOUS_RAW_with_missing_BP.csv", vot)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["file", "source_id", "bands", "n_bp"]
    missing = next(line for line in lines if "5405570973190252288" in line)
    assert missing.split()[2] == "RP" and missing.endswith("BP band missing")
    proxima = next(line for line in lines if "5853498713190525696" in line).split()
    assert proxima[2:5] == ["BP+RP", "55", "55"] and proxima[-2:] == ["yes", "ok"]
    assert 10 < float(proxima[5]) < 13 and 6 < float(proxima[6]) < 9     # G_BP, G_RP of Proxima Cen
    assert lines[-1] == "2 file(s), 7 source(s): 6 usable, 1 flagged"


def test_info_exit_codes_for_unusable_files(samples, tmp_path):
    res = _run("info", samples / "sources.avro")
    # every source flagged (too few coefficients) is information, not a failure of `info`
    assert res.exit_code == 0 and "warning:" in res.output and "no usable source among 30" in res.output
    assert "BP coefficients: 51 values, expected 55" in res.output
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    res = _run("info", samples / "XP_CONTINUOUS_RAW.csv", notes)
    assert res.exit_code == 1 and f"{notes}: not an XP table" in res.output
    assert "5853498713190525696" in res.output          # the good file is still listed
    other = tmp_path / "spectra.txt"
    other.write_text("x")
    res = _run("info", other)
    assert res.exit_code == 1 and "unknown XP file format" in res.output


def test_sample_writes_hdf5(samples, tmp_path):
    src = samples / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
    out = tmp_path / "flux.h5"
    res = _run("sample", src, "--out", out, "--chunk-size", 2)
    assert res.exit_code == 0, res.output
    assert "3 source(s), 2 usable, 1 flagged" in res.output
    assert [p.name for p in tmp_path.iterdir()] == ["flux.h5"]
    batch = read_xp(src)
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["source_id"][:], batch.source_id)
        np.testing.assert_array_equal(h5["wavelength_nm"][:], SAMPLING_NM)
        flux, err = h5["flux"][:], h5["flux_error"][:]
        assert flux.shape == err.shape == (3, 343)
        assert [e.decode() if isinstance(e, bytes) else e for e in h5["error"][:]] == \
            ["", "BP band missing", ""]
        assert h5.attrs["flux_unit"] == "W m^-2 nm^-1" and h5.attrs["input_file"] == str(src)
    # chunk size 2 vs whole file: same numbers up to BLAS rounding
    np.testing.assert_allclose(flux, sampled_flux(batch.bp_coefficients, batch.rp_coefficients), rtol=1e-13)
    np.testing.assert_allclose(err, sampled_flux_error(batch.bp_covariance, batch.rp_covariance), rtol=1e-13)
    assert np.isnan(flux[1]).all() and np.isfinite(flux[[0, 2]]).all()


def test_sample_errors(samples, tmp_path):
    res = _run("sample", samples / "XP_CONTINUOUS_RAW.csv", "--out", tmp_path / "no" / "f.h5")
    assert res.exit_code == 1 and "output directory" in res.output and "does not exist" in res.output
    empty = tmp_path / "empty.ecsv"
    empty.write_text("")
    res = _run("sample", empty, "--out", tmp_path / "f.h5")
    assert res.exit_code == 1 and f"{empty}: file is empty" in res.output
    assert list(tmp_path.iterdir()) == [empty]


def _sampled_csv(samples, tmp_path):
    """The coefficient file as an archive xp_sampled_mean_spectrum CSV (flux, flux_error)."""
    import pandas as pd

    batch = read_xp(samples / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    flux = sampled_flux(batch.bp_coefficients, batch.rp_coefficients)
    err = sampled_flux_error(batch.bp_covariance, batch.rp_covariance)
    cell = lambda row: "" if np.isnan(row).any() else "(" + ", ".join(map(repr, row)) + ")"
    path = tmp_path / "xp_sampled.csv"
    pd.DataFrame({"source_id": batch.source_id, "flux": [cell(r) for r in flux],
                  "flux_error": [cell(r) for r in err]}).to_csv(path, index=False)
    return path, batch, flux, err


def test_info_and_sample_on_a_sampled_file(samples, tmp_path):
    from cvae_pms.xp.photometry import g_bp_mag, g_rp_mag

    path, batch, flux, err = _sampled_csv(samples, tmp_path)
    res = _run("info", path)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    proxima = next(line for line in lines if "5853498713190525696" in line).split()
    assert proxima[2:5] == ["flux", "-", "-"] and proxima[-2:] == ["-", "ok"]
    assert abs(float(proxima[5]) - g_bp_mag(batch.bp_coefficients[:1])[0]) < 0.01
    assert abs(float(proxima[6]) - g_rp_mag(batch.rp_coefficients[:1])[0]) < 0.01
    missing = next(line for line in lines if "5405570973190252288" in line)
    assert missing.endswith("flux missing; flux_error missing")
    assert lines[-1] == "1 file(s), 3 source(s): 2 usable, 1 flagged"
    out = tmp_path / "flux.h5"
    res = _run("sample", path, "--out", out)
    assert res.exit_code == 0, res.output
    assert "input already sampled: flux and flux_error passed through" in res.output
    with h5py.File(out, "r") as h5:
        assert h5.attrs["passed_through"] == 1
        np.testing.assert_allclose(h5["flux"][:][[0, 2]], flux[[0, 2]], rtol=1e-15)
        np.testing.assert_allclose(h5["flux_error"][:][[0, 2]], err[[0, 2]], rtol=1e-15)
        assert np.isnan(h5["flux"][1]).all()
