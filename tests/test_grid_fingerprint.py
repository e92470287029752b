"""Grid fingerprint: the same grid with last-bit differences (another CPU's regeneration)
matches its training grid although the content hash differs; any real change does not."""
from __future__ import annotations

import numpy as np
import pytest

from cvae_pms import params as P
from cvae_pms.grid.fingerprint import fingerprint_difference, grid_fingerprint
from cvae_pms.grid.gridfile import open_grid, write_grid
from cvae_pms.model.rundir import RunDirError, check_training_grid

META = {"source": "test", "random_seed": 3, "forward_model": {"version": 2},
        "package_versions": {"numpy": "2.4.6"}}


def _grid(path, bp_scale=1.0, meta=None, ulp=False, n=300):
    rng = np.random.default_rng(0)
    params = P.from_unit(rng.random((n, P.N_PARAMS)))
    bp = rng.normal(size=(n, 55)) * bp_scale
    rp = rng.normal(size=(n, 55))
    if ulp:                      # what another CPU's vectorised math does: last-bit changes
        flip = rng.random(bp.shape) < 0.3
        bp = np.where(flip, np.nextafter(bp, np.inf), bp)
    return write_grid(path, params, bp, rp, meta=dict(meta or META))


def test_fingerprint_accepts_a_last_bit_regeneration_and_refuses_real_changes(tmp_path):
    h0 = _grid(tmp_path / "a.h5")
    h1 = _grid(tmp_path / "b.h5", ulp=True)
    h2 = _grid(tmp_path / "c.h5", bp_scale=1 + 1e-6)
    h3 = _grid(tmp_path / "d.h5", meta={**META, "random_seed": 4})
    h4 = _grid(tmp_path / "e.h5", meta={**META, "package_versions": {"numpy": "2.5.0"}})
    assert len({h0, h1, h2, h3, h4}) == 5
    with open_grid(tmp_path / "a.h5") as g:
        fp = grid_fingerprint(g, chunk_size=128)       # chunked sums
        assert fp["rows"] == 300 and len(fp["bp_coefficients"]["sum"]) == 55
        assert fingerprint_difference(fp, grid_fingerprint(g)) == ""
    diffs = {}
    for name in "bcde":
        with open_grid(tmp_path / f"{name}.h5") as g:
            diffs[name] = fingerprint_difference(fp, grid_fingerprint(g))
    assert diffs["b"] == "" and diffs["e"] == ""    # rounding; newer packages only
    assert "bp_coefficients" in diffs["c"] and "random_seed" in diffs["d"]


def test_check_training_grid_uses_the_fingerprint_when_the_hash_differs(tmp_path):
    _grid(tmp_path / "a.h5")
    _grid(tmp_path / "b.h5", ulp=True)
    _grid(tmp_path / "c.h5", bp_scale=1.001)
    with open_grid(tmp_path / "a.h5") as g:
        trained = {"content_hash": g.content_hash, "fingerprint": grid_fingerprint(g)}
        assert check_training_grid("run", trained, g) == ""
    with open_grid(tmp_path / "b.h5") as g:
        assert "fingerprint matches" in check_training_grid("run", trained, g)
        with pytest.raises(RunDirError, match="no grid fingerprint"):
            check_training_grid("run", {"content_hash": trained["content_hash"]}, g)
        assert check_training_grid("run", {}, g) == ""           # unknown: accepted
    with open_grid(tmp_path / "c.h5") as g, pytest.raises(RunDirError,
                                                          match="fingerprint too: bp_coeff"):
        check_training_grid("run", trained, g, why=": rows would differ")
