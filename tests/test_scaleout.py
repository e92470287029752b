"""Dask scale-out: one task per input file gives the single-process samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.infer import InferError, cached_model, infer
from cvae_pms.scaleout import dask_client, infer_dask, parse_dask, part_path

import helpers_infer as h

pytest.importorskip("distributed")


def test_parse_and_part_names(tmp_path):
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "somehost"):
        with pytest.raises(InferError, match="--dask"):
            parse_dask(bad)
    assert part_path(tmp_path / "post.h5", "/data/xp_0001.csv.gz").name == "post.xp_0001.h5"


def test_dask_local_2_equals_single_process(tmp_path, trained_run):
    run = trained_run
    rng = np.random.default_rng(11)
    files = []
    for k in range(4):
        u = rng.uniform(0.15, 0.85, (3, 7))
        u[:, 6] *= 0.3
        files.append(h.write_observations(
            tmp_path / f"in{k}.csv", params.from_unit(u), rng.uniform(12, 16, 3), seed=k,
            source_id=np.arange(10 * k + 1, 10 * k + 4)))
    single = tmp_path / "single.h5"
    infer(run, files, single, n_samples=40, seed=3, model=cached_model(str(run)),
          progress=False)
    ref = pf.read_posterior(single)
    loads = cached_model.loads
    # processes=False keeps the test fast; each worker thread shares this process's model cache
    with dask_client("local:2", processes=False) as client:
        table, infos = infer_dask(client, run, files, tmp_path / "dask.h5",
                                  summary=tmp_path / "dask.ecsv", n_samples=40, seed=3)
    assert cached_model.loads == loads  # threaded workers reuse this process's loaded model
    assert len(infos) == 4 and len(table) == 12
    got_ids, got_samples = [], []
    for f, info in zip(files, infos):
        assert info["part"] == str(part_path(tmp_path / "dask.h5", f).resolve())
        post = pf.read_posterior(info["part"])
        got_ids.append(post.source_id)
        got_samples.append(post.samples)
    np.testing.assert_array_equal(np.concatenate(got_ids), ref.source_id)
    np.testing.assert_array_equal(np.concatenate(got_samples), ref.samples)
    merged = pf.read_summary(tmp_path / "dask.ecsv")
    np.testing.assert_array_equal(merged["source_id"], ref.source_id)
    np.testing.assert_allclose(merged["teff_median"], np.median(ref.samples[:, :, 0], axis=1),
                               rtol=1e-5)


def test_dask_refuses_clashing_stems(tmp_path, tmp_path_factory):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        (d / "xp.csv").write_text("source_id\n1\n")
    with pytest.raises(InferError, match="same file stem"):
        infer_dask(None, tmp_path, [a / "xp.csv", b / "xp.csv"], tmp_path / "p.h5")


# ------------------------------------------------------------------------------ every option
def _non_default_args(param, tmp_path) -> list[str]:
    """Command-line words that give the click option ``param`` a value other than its default
    (a new option of a type not handled here fails the test: extend it)."""
    import click

    if param.is_flag:
        if param.secondary_opts:                      # --gof/--no-gof
            return [param.secondary_opts[0] if param.default else param.opts[0]]
        return [param.opts[0]]
    if isinstance(param.type, click.Path):
        f = tmp_path / f"{param.name}.ecsv"
        f.write_text("source_id\n1\n")
        return [param.opts[0], str(f)]
    if isinstance(param.type, click.types.IntParamType):
        return [param.opts[0], str((param.default or 0) + 3)]
    if isinstance(param.type, click.types.FloatParamType):
        return [param.opts[0], str((param.default or 0.0) + 0.25)]
    if isinstance(param.type, click.Choice):
        return [param.opts[0], next(c for c in param.type.choices if c != param.default)]
    pytest.fail(f"infer option {param.opts} of type {param.type!r}: add a test value here")


def test_every_infer_option_reaches_the_dask_tasks(tmp_path, monkeypatch):
    """Each option of `cvae-pms infer` (enumerated from the click command, so a new option is
    covered too) is accepted with --dask and arrives in infer_dask exactly as the
    single-process route passes it to infer()."""
    import click
    from click.testing import CliRunner

    import cvae_pms.infer as infer_mod
    import cvae_pms.scaleout as so
    from cvae_pms.cli import main
    from cvae_pms.cli.infer_cmd import infer as infer_command
    from cvae_pms.infer import InferResult

    got: dict = {}

    def fake_infer(run, inputs, out, **kw):
        got["single"] = kw
        got["run"] = run
        return InferResult(out=out, summary=None)

    def fake_infer_dask(client, run, inputs, out, **kw):
        got["dask"] = kw
        got["run"] = run
        return None, []

    @__import__("contextlib").contextmanager
    def fake_client(spec):
        yield None

    monkeypatch.setattr(infer_mod, "infer", fake_infer)
    monkeypatch.setattr(so, "infer_dask", fake_infer_dask)
    monkeypatch.setattr(so, "dask_client", fake_client)
    monkeypatch.setattr(so, "plan_dask", lambda inputs, out, **kw: so.infer_options() and None)

    def call(words, dask):
        got.clear()
        r = CliRunner().invoke(main, ["infer", "RUN", "in.csv", "--out", str(tmp_path / "p.h5"),
                                      *words, *(["--dask", "local:2"] if dask else [])])
        assert r.exit_code == 0, (words, r.output)
        kw = dict(got["dask" if dask else "single"])
        assert callable(kw.pop("log"))
        return kw

    base = call([], dask=False)
    assert call([], dask=True) == base
    # --model picks the model dir (the positional ``run`` of infer), not a keyword option
    from cvae_pms import models as shipped

    for dask in (False, True):
        call(["--model", str(shipped.SHIPPED_DIR / shipped.DEFAULT)], dask=dask)
        assert Path(got["run"]).resolve() == (shipped.SHIPPED_DIR / shipped.DEFAULT).resolve()
    skip = {"run", "inputs", "out", "dask_spec", "model", "args"}
    options = [p for p in infer_command.params
               if isinstance(p, click.Option) and p.name not in skip]
    assert len(options) >= 18
    for param in options:
        words = _non_default_args(param, tmp_path)
        single = call(words, dask=False)
        assert single != base, f"{param.opts}: no effect on infer()"
        assert call(words, dask=True) == single, f"{param.opts} not forwarded with --dask"
    # and infer_dask itself takes every keyword option of infer() (model excepted)
    assert set(base) <= set(so.infer_options())


def _obs_plx(path, theta, g, seed, source_id, plx, err):
    """Stand-in observations with parallax columns (archive CSV)."""
    from cvae_pms.xp.archive import read_xp, write_xp_table

    b = read_xp(h.write_observations(path, theta, g, seed=seed, source_id=source_id))
    write_xp_table(path, {"source_id": b.source_id, "bp_coefficients": b.bp_coefficients,
                          "rp_coefficients": b.rp_coefficients, "bp_covariance": b.bp_covariance,
                          "rp_covariance": b.rp_covariance,
                          "extra": {"parallax": np.asarray(plx, float),
                                    "parallax_error": np.asarray(err, float)}})
    return path


def test_dask_with_prior_and_astrometry_equals_single_process(tmp_path, trained_lum_run):
    import pickle

    from astropy.table import Table

    from cvae_pms.scaleout import merged_result, plan_dask

    run = trained_lum_run
    rng = np.random.default_rng(5)
    files = []
    for k in range(3):
        u = rng.uniform(0.15, 0.85, (3, 7))
        u[:, 6] *= 0.3
        files.append(_obs_plx(tmp_path / f"in{k}.csv", params.from_unit(u), np.full(3, 13.0),
                              seed=k, source_id=np.arange(10 * k + 1, 10 * k + 4),
                              plx=[20.0, 8.0, np.nan], err=[0.5, 0.4, np.nan]))
    # the side table gives two sources of different files their parallax (one replaces the
    # input's 8 mas), the third of file 2 a negative one; 999 is in no file
    astro = tmp_path / "astro.ecsv"
    Table({"source_id": [3, 12, 22, 999], "parallax": [15.0, 5.0, -1.0, 3.0],
           "parallax_error": [0.3, 0.2, 0.1, 0.1]}).write(astro, format="ascii.ecsv")
    prior = tmp_path / "prior.toml"
    prior.write_text('name = "narrow teff"\n[[factor]]\ntype = "normal"\nparam = "teff"\n'
                     'mean = 4000.0\nsigma = 200.0\n')
    opts = dict(n_samples=32, seed=4, astrometry=astro, prior=prior, keep_raw=True,
                min_parallax_over_error=4.0, gof=False, command_line=["test"])
    model = cached_model(str(run))
    single = tmp_path / "single.h5"
    infer(run, files, single, model=model, progress=False, **opts)
    ref = pf.read_posterior(single)
    assert ((ref.status & pf.FLAG_NO_PARALLAX) > 0).sum() >= 2   # the channel is in play
    assert not ((ref.status & pf.FLAG_NO_PARALLAX) > 0).all()
    # what is sent to the tasks pickles without cloudpickle (a real cluster's processes)
    _, task_options = plan_dask(files, tmp_path / "dask.h5", **opts)
    assert pickle.loads(pickle.dumps(task_options)) == task_options
    logs: list[str] = []
    with dask_client("local:2", processes=False) as client:
        table, infos = infer_dask(client, run, files, tmp_path / "dask.h5",
                                  summary=tmp_path / "dask.ecsv", plots=tmp_path / "plots",
                                  max_plots=4, log=logs.append, **opts)
    parts = [pf.read_posterior(info["part"]) for info in infos]
    for name in ("source_id", "samples", "samples_raw", "status", "ess"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]),
                                      getattr(ref, name), err_msg=name)
    assert sum((list(p.message) for p in parts), []) == list(ref.message)
    for key in ("prior", "astrometry", "min_parallax_over_error", "parallax_zero_point_mas",
                "model_hash", "seed"):
        assert all(p.attrs[key] == ref.attrs[key] for p in parts), key
    res = merged_result(infos, tmp_path / "dask.h5")
    assert res.n_sources == 9 and res.n_no_parallax == int(
        ((ref.status & pf.FLAG_NO_PARALLAX) > 0).sum())
    assert len(res.plots) == 4 and len(list((tmp_path / "plots").glob("*.png"))) == 4
    assert len(table) == 9 and "ess" in pf.read_summary(tmp_path / "dask.ecsv").colnames
    # --resume continues each part file (nothing left to do), --overwrite replaces them
    with dask_client("local:2", processes=False) as client:
        _, again = infer_dask(client, run, files, tmp_path / "dask.h5", resume=True, **opts)
        assert [i["result"].n_skipped for i in again] == [3, 3, 3]
        with pytest.raises(InferError, match="output exists"):
            infer_dask(client, run, files, tmp_path / "dask.h5", **opts)
        _, over = infer_dask(client, run, files, tmp_path / "dask.h5", overwrite=True, **opts)
    np.testing.assert_array_equal(
        np.concatenate([pf.read_posterior(i["part"]).samples for i in over]), ref.samples)
    with pytest.raises(InferError, match="no option"):
        infer_dask(None, run, files, tmp_path / "x.h5", n_sample=3)
