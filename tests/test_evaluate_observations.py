"""The seeded test rows and simulated observations that ``evaluate`` (and the benchmarks) use."""
from __future__ import annotations

import numpy as np
import pytest

from cvae_pms import params
from cvae_pms.evaluate import (EvaluationError, GSetting, draw_observations,
                               evaluated_observations, parse_g_mags, select_rows)

from helpers_infer import WL_NM, standin_sed


@pytest.fixture(scope="module")
def coefficients():
    """Noise-free coefficients (6, 55) x 2 of stand-in stars."""
    from cvae_pms.xp.instrument import sed_to_coefficients
    u = np.random.default_rng(0).uniform(size=(6, params.N_PARAMS))
    u[:, 6] *= 0.3
    return sed_to_coefficients(standin_sed(params.from_unit(u)), WL_NM)


def test_select_rows_sorted_unique_subset_reproducible():
    rows = np.random.default_rng(5).permutation(np.arange(3, 5000, 3))
    idx = select_rows(rows, 200, seed=7)
    assert idx.shape == (200,)
    assert np.all(np.diff(idx) > 0)                    # sorted and unique
    assert np.isin(idx, rows).all()
    np.testing.assert_array_equal(idx, select_rows(rows, 200, seed=7))
    assert not np.array_equal(idx, select_rows(rows, 200, seed=8))
    # asking for more rows than there are gives all of them, sorted
    np.testing.assert_array_equal(select_rows(rows[:50], 500, seed=7), np.sort(rows[:50]))


def test_draw_observations_seeded_by_seed_and_index(coefficients):
    bp0, rp0 = coefficients
    setting = GSetting(12.0, 17.0)
    a = draw_observations(bp0, rp0, setting, (15, 80), seed=3, index=1)
    b = draw_observations(bp0, rp0, setting, (15, 80), seed=3, index=1)
    c = draw_observations(bp0, rp0, setting, (15, 80), seed=3, index=2)
    n = bp0.shape[0]
    assert a.g.shape == a.n_transits.shape == (n,)
    assert a.bp.shape == a.rp.shape == (n, 55) and a.bp_cov.shape == a.rp_cov.shape == (n, 55, 55)
    assert np.all((a.g >= 12.0) & (a.g <= 17.0))
    assert a.n_transits.dtype.kind == "i" and np.all((a.n_transits >= 15) & (a.n_transits <= 80))
    for f in ("g", "n_transits", "bp", "rp", "bp_cov", "rp_cov"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    for f in ("g", "bp", "rp"):
        assert not np.array_equal(getattr(a, f), getattr(c, f))
    # a fixed G is exactly that G; the reported errors are noise-model ones, not zero
    d = draw_observations(bp0, rp0, GSetting(15.0, 15.0), (20, 20), seed=3)
    assert np.all(d.g == 15.0) and np.all(d.n_transits == 20)
    assert np.all(np.diagonal(d.bp_cov, axis1=1, axis2=2) > 0)


def test_draw_observations_reports_bad_input_as_evaluation_error():
    with pytest.raises(EvaluationError, match="simulating observations"):
        draw_observations(np.zeros((2, 55)), np.zeros((2, 55)), GSetting(15, 15), (15, 80), 0)


def test_evaluated_observations_use_the_position_in_the_g_mag_list(coefficients):
    """evaluate --g-mag 12,15,17 draws G 17 from stream index 2 (model error at the true
    T_eff): what bench_information_limit.py reproduces; index 0 would be other noise."""
    bp0, rp0 = coefficients
    theta = params.from_unit(np.random.default_rng(0).uniform(size=(6, params.N_PARAMS)))
    settings = parse_g_mags(["12,15", "17"])
    g17 = GSetting(17.0, 17.0)
    got = evaluated_observations(bp0, rp0, theta, settings, g17, (15, 80), seed=4)
    want = draw_observations(bp0, rp0, g17, (15, 80), seed=4, index=2,
                             teff=theta[:, params.INDEX["teff"]])
    first = draw_observations(bp0, rp0, g17, (15, 80), seed=4, index=0,
                              teff=theta[:, params.INDEX["teff"]])
    for f in ("g", "n_transits", "bp", "rp", "bp_cov", "rp_cov"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
    assert not np.array_equal(got.bp, first.bp)
    alone = evaluated_observations(bp0, rp0, theta, [g17], g17, (15, 80), seed=4)
    np.testing.assert_array_equal(alone.bp, first.bp)
    with pytest.raises(EvaluationError, match="not among --g-mag 12,15,17"):
        evaluated_observations(bp0, rp0, theta, settings, GSetting(13.0, 13.0), (15, 80), 4)
