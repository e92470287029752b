"""The shipped default model: lookup by name, provenance, `cvae-pms infer FILES` without a model."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_pms import models, params
from cvae_pms import posterior_file as pf
from cvae_pms.cli import main
from cvae_pms.features import FEATURE_VERSION
from cvae_pms.physics.sed import FORWARD_MODEL_VERSION

SCO18_ID = 4345775217221821312  # solar twin: Teff 5810 K, log g 4.44, [M/H] +0.03


def test_resolve_paths_names_and_unknown(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in ("network.json", "model.weights.h5"):
        (run / f).write_text("x")
    assert models.is_model_dir(run) and not models.is_model_dir(tmp_path)
    assert models.resolve(run) == run                      # a path wins
    assert models.resolve(None) == models.SHIPPED_DIR / models.DEFAULT
    assert models.resolve("default") == models.SHIPPED_DIR / "default"
    with pytest.raises(models.ModelNotFoundError, match=r"'nope'.*installed: .*default"):
        models.resolve("nope")


def test_default_model_is_installed_with_its_provenance():
    path = models.installed()["default"]
    assert models.usable(path) == "ok"
    prov = models.provenance(path)
    assert prov["recipe"] == "default"
    assert prov["grid"]["n"] == 160_000
    assert prov["grid"]["forward_model_version"] == FORWARD_MODEL_VERSION
    assert prov["grid"]["photosphere_correction"] == "apogee-dr17-v1"
    assert len(prov["grid"]["content_hash"]) == 64 and prov["code_commit"]
    assert prov["training"]["epochs"] > 0 and prov["training"]["seconds"] > 0
    assert set(prov["evaluation"]["metrics"])                # the evaluation table travels along
    assert json.loads((path / "features.json").read_text())["version"] == FEATURE_VERSION
    assert not (path / "checkpoints").exists()   # size: test_shipped_models_fit_the_package_size_budget


def test_shipped_models_fit_the_package_size_budget():
    """Issue 17: default + default-lum <= 25 MB of package data, so each model <= 12.5 MB;
    the OOD index is the compressed float16 format and the split int32."""
    from cvae_pms import ood
    for name, path in models.installed().items():
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        assert size <= 12.5e6, (name, size)
        with np.load(path / ood.OOD_FILE) as z:
            assert int(z["version"]) == ood.OOD_VERSION, name
        with np.load(path / "split.npz") as z:
            assert all(z[k].dtype == np.int32 for k in z.files), name


def test_models_command_lists_default_and_refuses_an_old_feature_version(tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    assert "default (default):" in r.output and "status: ok" in r.output
    # a copy of the model made by an older feature version is listed as refused, and infer
    # refuses it with a message that says to retrain
    fake = tmp_path / "shipped"
    old = fake / "old"
    shutil.copytree(models.installed()["default"], old)
    meta = json.loads((old / "features.json").read_text())
    meta["version"] = FEATURE_VERSION - 1
    (old / "features.json").write_text(json.dumps(meta))
    monkeypatch.setattr(models, "SHIPPED_DIR", fake)
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "old:" in r.output and "status: refused" in r.output
    assert "retrain" in r.output
    x = tmp_path / "x.csv"
    x.write_text("source_id\n1\n")
    r = CliRunner().invoke(main, ["infer", "--model", "old", str(x), "--out",
                                  str(tmp_path / "p.h5")])
    assert r.exit_code == 1 and "feature version" in r.output and "retrain" in r.output
    assert not (tmp_path / "p.h5").exists()


def test_unknown_model_name_is_one_error_line(tmp_path):
    r = CliRunner().invoke(main, ["infer", "--model", "nope", "x.csv", "--out",
                                  str(tmp_path / "p.h5")])
    assert r.exit_code == 1 and "Error: model 'nope'" in r.output and "Traceback" not in r.output


def test_infer_without_a_model_uses_the_default_on_real_spectra(tmp_path, real_xp, monkeypatch):
    """`cvae-pms infer FILES`: the shipped model, real archive files, 18 Sco where it should be."""
    monkeypatch.chdir(tmp_path)
    files = [real_xp / "gaiaxpy_samples" / f for f in ("XP_CONTINUOUS_RAW.csv",
                                                       "18Sco-XP-spectra.csv")]
    r = CliRunner().invoke(main, ["infer", *map(str, files), "--samples", "400", "--quiet",
                                  "--summary", "s.ecsv"])
    assert r.exit_code == 0, r.output
    post = pf.read_posterior(tmp_path / "posteriors.h5")      # the default OUT
    import h5py
    with h5py.File(tmp_path / "posteriors.h5") as f:
        assert f.attrs["run_dir"] == str(models.installed()["default"].resolve())
    assert len(post.source_id) == 3
    sco = post.samples[list(post.source_id).index(SCO18_ID)]
    names = list(params.NAMES)
    for name, truth in (("teff", 5810.0), ("logg", 4.44), ("mh", 0.03)):
        lo, hi = np.percentile(sco[:, names.index(name)], [2.5, 97.5])
        assert lo < truth < hi, (name, lo, hi)
    # the first positional argument is still read as the model when it is a model dir
    r = CliRunner().invoke(main, ["infer", str(models.installed()["default"]), str(files[1]),
                                  "--samples", "50", "--quiet", "--out", "b.h5"])
    assert r.exit_code == 0, r.output
    assert list(pf.read_posterior(tmp_path / "b.h5").source_id) == [SCO18_ID]
