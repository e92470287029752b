"""crosscheck: joins by source_id and by RA/Dec, missing values, unit conversions, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from click.testing import CliRunner

from cvae_pms import params
from cvae_pms.cli import main
from cvae_pms.diagnostics import crosscheck as cc
from cvae_pms.posterior_file import FLAG_FAILED, PosteriorChunk, PosteriorWriter

IDS = np.array([4345775217221821312, 5853498713190525696, 111, 222], dtype=np.int64)
CENTRE = np.array([[5800.0, 4.4, 0.0, -9.0, 0.05, 1.0, 0.1],
                   [3100.0, 5.0, 0.2, -10.0, 0.01, 0.3, 0.0],
                   [4000.0, 4.0, 0.1, -8.0, 0.10, 0.6, 2.0],
                   [4500.0, 4.2, 0.0, -7.5, 0.20, 0.8, 1.5]])
SIGMA = np.array([100.0, 0.1, 0.1, 0.3, 0.02, 0.1, 0.1])
RA = np.array([243.9, 217.4, 10.0, 10.001])
DEC = np.array([-8.37, -62.7, 20.0, 20.0])


@pytest.fixture
def post_file(tmp_path):
    """A posterior file: 4 sources, Gaussian samples (sd SIGMA) around CENTRE; the last failed."""
    rng = np.random.default_rng(0)
    s = 4000
    samples = CENTRE[:, None, :] + SIGMA * rng.standard_normal((4, s, 7))
    samples[3] = np.nan
    status = np.array([0, 0, 0, FLAG_FAILED])
    path = tmp_path / "post.h5"
    with PosteriorWriter(path, n_samples=s) as w:
        w.append(PosteriorChunk(source_id=IDS, samples=samples, status=status,
                                message=["", "", "", "missing BP band"],
                                input_file=["x.csv"] * 4, ood_distance=np.zeros(4),
                                bound_params=np.zeros(4)))
    return path


def literature():
    """5 rows: 3 with a posterior, 1 whose posterior failed, 1 unknown; one teff missing."""
    t = Table()
    t["source_id"] = np.array([IDS[0], IDS[1], IDS[2], IDS[3], 999], dtype=np.int64)
    t["Teff"] = MaskedColumn([5810.0, 3050.0, 0.0, 4500.0, 4000.0],
                             mask=[False, False, True, False, False])
    t["e_Teff"] = [20.0, 100.0, 50.0, 50.0, 50.0]
    t["logg"] = [4.44, 5.2, 4.0, 4.2, 4.0]
    return t


def test_source_id_match_with_missing_values(post_file, tmp_path):
    lit_path = tmp_path / "lit.ecsv"
    literature().write(lit_path, format="ascii.ecsv")
    res = cc.run_crosscheck(post_file, lit_path, tmp_path / "out", value_map={"Teff": "teff"})
    assert res.parameters == ("teff", "logg")
    assert res.per_source["source_id"].tolist() == IDS[:3].tolist()
    # Unmatched: the failed posterior and the unknown id, each with its reason.
    un = Table.read(tmp_path / "out" / "unmatched.csv")
    assert un["lit_source_id"].tolist() == [IDS[3], 999]
    assert "missing BP band" in un["reason"][0] and "no posterior" in un["reason"][1]
    teff = res.per_parameter["teff"]
    assert teff["n"] == 2                      # the masked Teff is skipped, logg is not
    assert res.per_parameter["logg"]["n"] == 3
    assert teff["literature_error_column"] == "e_Teff"   # found next to the value column
    r = res.per_source["teff_residual"]
    assert r[0] == pytest.approx(5800 - 5810, abs=8) and r[1] == pytest.approx(3100 - 3050, abs=8)
    assert np.isnan(r[2])
    # z = residual / sqrt(sigma_post^2 + sigma_lit^2), sigma_post = (p84 - p16) / 2 ~ 100 K.
    assert res.per_source["teff_z"][1] == pytest.approx(50 / np.hypot(100, 100), abs=0.08)
    # logg: 4.44 and 4.0 lie within 1 sigma of 4.4 / 4.0; 5.2 is 2 sigma from 5.0.
    assert res.per_source["logg_in68"].tolist() == [True, False, True]
    assert res.per_source["logg_in95"].tolist() == [True, False, True]
    assert res.per_parameter["logg"]["frac_in68"] == pytest.approx(2 / 3)
    assert res.per_parameter["logg"]["n_outside_box"] == 1          # 5.2 > 5.0
    summary = json.loads((tmp_path / "out" / "crosscheck.json").read_text())
    assert summary["n_matched"] == 3 and summary["n_unmatched"] == 2
    assert (tmp_path / "out" / "crosscheck.png").stat().st_size > 5000


def test_radec_match_with_positions(post_file, tmp_path):
    pos = Table({"source_id": IDS, "ra": RA, "dec": DEC})
    pos.write(tmp_path / "pos.csv", format="ascii.csv")
    lit = Table()
    # 0.5" and 0.3" off sources 0 and 2; one 5" away from source 1; RA/Dec named as VizieR does.
    lit["RAJ2000"] = [RA[0] + 0.5 / 3600 / np.cos(np.radians(DEC[0])), RA[1] + 5 / 3600,
                      RA[2], np.nan]
    lit["DEJ2000"] = [DEC[0], DEC[1], DEC[2] + 0.3 / 3600, 0.0]
    lit["teff"] = [5810.0, 3050.0, 4100.0, 4000.0]
    lit.write(tmp_path / "lit.vot", format="votable")
    post = cc.read_posterior_summary(post_file, tmp_path / "pos.csv")
    res = cc.crosscheck(post, cc.read_table(tmp_path / "lit.vot"), match="radec",
                        radius_arcsec=1.0)
    assert res.per_source["source_id"].tolist() == [IDS[0], IDS[2]]
    assert res.per_source["sep_arcsec"].tolist() == pytest.approx([0.5, 0.3], abs=0.01)
    assert res.unmatched["lit_row"].tolist() == [1, 3]
    assert res.unmatched["nearest_sep_arcsec"][0] == pytest.approx(5 * np.cos(np.radians(DEC[1])),
                                                                   rel=0.01)
    # Without positions the posterior summary has no coordinates: a clear error.
    with pytest.raises(cc.CrosscheckError, match="--positions"):
        cc.crosscheck(cc.read_posterior_summary(post_file), lit, match="radec")


def test_unit_conversions_mdot_linear_and_av_to_a0(post_file, tmp_path):
    lit = Table()
    lit["Gaia"] = ["Gaia DR3 4345775217221821312", "Gaia DR3 111"]
    lit["Mdot"] = [1e-9, -1.0]                 # a non-positive rate is unusable: skipped
    lit["e_Mdot"] = [1e-10, 1e-10]
    lit["AV"] = [0.1, 2.0]
    lit["e_AV"] = [0.05, 0.2]
    res = cc.crosscheck(cc.read_posterior_summary(post_file), lit, id_column="Gaia",
                        value_map={"Mdot": "log_mdot", "AV": "a0"}, mdot_linear=True)
    ps = res.per_source
    assert ps["source_id"].tolist() == [IDS[0], IDS[2]]
    assert ps["log_mdot_lit"][0] == pytest.approx(-9.0)
    assert ps["log_mdot_lit_err"][0] == pytest.approx(0.1 / np.log(10))
    assert np.isnan(ps["log_mdot_lit"][1]) and res.per_parameter["log_mdot"]["n"] == 1
    assert ps["a0_lit"].tolist() == pytest.approx([0.1 * cc.AV_TO_A0, 2.0 * cc.AV_TO_A0])
    assert ps["a0_lit_err"][1] == pytest.approx(0.2 * cc.AV_TO_A0)
    # The documented default is the G23 ratio A(541.4 nm) / A(551 nm) at R_V = 3.1.
    from astropy import units as u
    from dust_extinction.parameter_averages import G23
    law = G23(Rv=3.1)
    assert cc.AV_TO_A0 == pytest.approx(float(law(541.4 * u.nm) / law(551 * u.nm)), abs=0.005)
    # Literature already in A0: no conversion.
    res0 = cc.crosscheck(cc.read_posterior_summary(post_file), lit, id_column="Gaia",
                         value_map={"AV": "a0"}, lit_extinction="a0")
    assert res0.per_source["a0_lit"].tolist() == [0.1, 2.0]


def test_cli_crosscheck_and_its_errors(post_file, tmp_path):
    lit_path = tmp_path / "lit.csv"
    literature().write(lit_path, format="ascii.csv")
    out = tmp_path / "cc"
    runner = CliRunner()
    r = runner.invoke(main, ["crosscheck", str(post_file), str(lit_path), "--map", "Teff=teff",
                             "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 without a posterior" in r.output
    assert {p.name for p in out.iterdir()} == {"crosscheck.csv", "crosscheck.json",
                                               "crosscheck.png", "unmatched.csv"}
    r = runner.invoke(main, ["crosscheck", str(post_file), str(lit_path), "--map", "Teff=temp",
                             "--out", str(out)])
    assert r.exit_code == 1 and "'temp' is not one of" in r.output
    r = runner.invoke(main, ["crosscheck", str(post_file), str(lit_path), "--map", "T=teff",
                             "--out", str(out)])
    assert r.exit_code == 1 and "column 'T'" in r.output
    r = runner.invoke(main, ["crosscheck", str(tmp_path / "none.h5"), str(lit_path),
                             "--out", str(out)])
    assert r.exit_code == 1 and "none.h5" in r.output
    assert len(params.NAMES) == 7
