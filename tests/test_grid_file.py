"""Grid file format: writing, reading, validation, atomic writes, corrupt files, `grid info`."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cvae_pms import params as P
from cvae_pms.cli import main
from cvae_pms.grid.gridfile import (GridError, GridWriter, duplicate_rows, grid_summary,
                                    open_grid, validate_grid, write_grid)


def _arrays(n: int = 500, seed: int = 1):
    rng = np.random.default_rng(seed)
    p = P.from_unit(rng.random((n, 7)))
    bp = rng.normal(size=(n, 55)) * np.logspace(4, 0, 55)
    rp = rng.normal(size=(n, 55)) * np.logspace(4, 0, 55)
    return p, bp, rp


@pytest.fixture()
def grid_path(tmp_path):
    p, bp, rp = _arrays()
    path = tmp_path / "g.h5"
    write_grid(path, p, bp, rp, meta={"source": "unit-test", "random_seed": 7,
                                      "forward_model": {"model": "test", "ridge": 0.01}})
    return path


def test_round_trip_and_layout(grid_path):
    p, bp, rp = _arrays()
    with open_grid(grid_path) as g:
        assert g.n == 500 and not g.has_sampled_flux and g.reference_distance_pc is None
        np.testing.assert_array_equal(g.params, p)
        gb, gr = g.coefficients()
        np.testing.assert_array_equal(gb, bp)
        np.testing.assert_array_equal(gr, rp)
        idx = np.array([7, 3, 3, 499])
        rp_, rb_, rr_ = g.read(idx)
        np.testing.assert_array_equal(rp_, p[idx])
        np.testing.assert_array_equal(rr_, rp[idx])
        starts = [s for s, *_ in g.iter_chunks(128)]
        assert starts == [0, 128, 256, 384]
        assert np.array_equal(np.concatenate([c[1] for c in g.iter_chunks(128)]), p)
        assert g.meta["forward_model"] == {"model": "test", "ridge": 0.01}
        assert g.meta["random_seed"] == 7 and g.meta["format_version"] == 1
        assert len(g.content_hash) == 64
    with h5py.File(grid_path) as h:
        assert list(h["params"].attrs["names"]) == list(P.NAMES)
        np.testing.assert_array_equal(h["params"].attrs["low"], P.LOW)
        assert json.loads(h["meta"].attrs["param_table"]) == P.table_dict()
        assert h["bp_coefficients"].chunks is not None
    validate_grid(grid_path)


def test_same_content_same_hash(tmp_path):
    p, bp, rp = _arrays(50)
    h1 = write_grid(tmp_path / "a.h5", p, bp, rp, meta={"source": "x"})
    h2 = write_grid(tmp_path / "b.h5", p, bp, rp, meta={"source": "x", "creator": "other"})
    h3 = write_grid(tmp_path / "c.h5", p, bp, rp, meta={"source": "y"})
    bp2 = bp.copy()
    bp2[3, 4] += 1e-9
    h4 = write_grid(tmp_path / "d.h5", p, bp2, rp, meta={"source": "x"})
    assert h1 == h2 and len({h1, h3, h4}) == 3


def test_sampled_flux_and_distance(tmp_path):
    p, bp, rp = _arrays(20)
    flux = np.abs(np.random.default_rng(0).normal(size=(20, 343))) * 1e-16
    write_grid(tmp_path / "f.h5", p, bp, rp, meta={"reference_distance_pc": 140.0},
               sampled_flux=flux)
    with open_grid(tmp_path / "f.h5") as g:
        assert g.has_sampled_flux and g.reference_distance_pc == 140.0
        np.testing.assert_array_equal(g.sampled_flux(), flux)
    validate_grid(tmp_path / "f.h5")


def test_writer_rejects_bad_chunks_and_leaves_nothing(tmp_path):
    p, bp, rp = _arrays(10)
    out = tmp_path / "g.h5"
    bad = p.copy()
    bad[[2, 5], 0] = 9000.0
    with pytest.raises(GridError, match=r"2 rows outside .*rows 12, 15.*teff"):
        with GridWriter(out, {}) as w:
            w.append(p, bp, rp)
            w.append(bad, bp, rp)
    nanbp = bp.copy()
    nanbp[4, 0] = np.nan
    with pytest.raises(GridError, match="rows 4"):
        write_grid(out, p, nanbp, rp, meta={})
    with pytest.raises(GridError, match="shape"):
        write_grid(out, p, bp[:, :54], rp, meta={})
    with pytest.raises(RuntimeError):
        with GridWriter(out, {}) as w:
            w.append(p, bp, rp)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GridError, match="does not exist"):
        GridWriter(tmp_path / "nodir" / "g.h5", {})


def test_existing_file_untouched_until_rename(tmp_path):
    p, bp, rp = _arrays(10)
    out = tmp_path / "g.h5"
    h_old = write_grid(out, p, bp, rp, meta={})
    with pytest.raises(RuntimeError):
        with GridWriter(out, {}) as w:
            w.append(p[:5], bp[:5], rp[:5])
            assert open_grid(out).content_hash == h_old
            raise RuntimeError("stop")
    assert open_grid(out).content_hash == h_old and len(list(tmp_path.iterdir())) == 1


def test_validate_catches_tampering(grid_path):
    with h5py.File(grid_path, "r+") as h:
        h["rp_coefficients"][10, 3] += 1.0
    with pytest.raises(GridError, match="content hash mismatch"):
        validate_grid(grid_path)
    validate_grid(grid_path, full=False)


def test_validate_catches_bad_values(grid_path):
    with h5py.File(grid_path, "r+") as h:
        h["params"][12] = h["params"][4]
        h["params"][20, 3] = -3.0
        h["bp_coefficients"][30, 0] = np.inf
    with pytest.raises(GridError) as err:
        validate_grid(grid_path)
    msg = str(err.value)
    assert "1 rows with NaN/inf in bp_coefficients (rows 30)" in msg
    assert "rows 20; parameters log_mdot" in msg
    assert "1 duplicate parameter rows (rows 12)" in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "text", "empty"])
def test_corrupt_or_truncated_files(grid_path, damage):
    data = grid_path.read_bytes()
    if damage == "truncate":
        grid_path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        grid_path.write_bytes(data[:512] + bytes(len(data) - 512))
    elif damage == "text":
        grid_path.write_text("teff,logg\n1,2\n")
    else:
        grid_path.write_bytes(b"")
    with pytest.raises(GridError, match=str(grid_path.name)):
        validate_grid(grid_path)
    result = CliRunner().invoke(main, ["grid", "info", str(grid_path), "--validate"])
    assert result.exit_code == 1 and grid_path.name in result.output


def test_open_grid_structure_errors(tmp_path, grid_path):
    with pytest.raises(GridError, match="not found"):
        open_grid(tmp_path / "missing.h5")
    with h5py.File(grid_path, "r+") as h:
        h["meta"].attrs["format_version"] = 2
    with pytest.raises(GridError, match="format version 2"):
        open_grid(grid_path)
    with h5py.File(grid_path, "r+") as h:
        h["meta"].attrs["format_version"] = 1
        table = P.table_dict()
        table["params"][0]["high"] = 8000.0
        h["meta"].attrs["param_table"] = json.dumps(table)
    with pytest.raises(GridError, match="bounds of teff"):
        open_grid(grid_path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h:
        h["params"] = np.zeros((3, 7))
    with pytest.raises(GridError, match="missing bp_coefficients"):
        open_grid(other)


def test_duplicate_rows_helper():
    a = np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [-0.0, 1.0], [3.0, 3.0]])
    assert duplicate_rows(a).tolist() == [2, 3]


def test_summary_and_info_cli(grid_path):
    s = grid_summary(grid_path)
    p, *_ = _arrays()
    assert s["count"] == 500 and s["format_version"] == 1
    assert s["params"]["teff"]["min"] == p[:, 0].min()
    assert s["params"]["a0"]["q50"] == pytest.approx(np.median(p[:, 6]))
    result = CliRunner().invoke(main, ["grid", "info", str(grid_path), "--validate"])
    assert result.exit_code == 0, result.output
    assert "rows 500" in result.output and s["content_hash"] in result.output
    assert "log_mdot" in result.output and "validation: OK" in result.output
