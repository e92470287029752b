"""Recipes, priors and calibration files are package data: they resolve by name from an
installed (non-editable) wheel, not from the source tree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_and_priors_resolve_by_name_from_the_package():
    import cvae_pms
    from cvae_pms.priors import PRIOR_DIR, load_prior
    from cvae_pms.training import RECIPE_DIR, load_config
    pkg = Path(cvae_pms.__file__).parent
    assert RECIPE_DIR.parent == pkg and PRIOR_DIR.parent == RECIPE_DIR   # not the source tree
    cfg, text = load_config("cpu-quick")
    assert cfg["training"]["epochs"] == 30 and "cpu-quick" in text
    lum, _ = load_config("cpu-quick-lum")                 # base = "cpu-quick" by name
    assert lum["luminosity"]["enabled"] and lum["training"]["epochs"] == 30
    full, _ = load_config("default")
    full_lum, _ = load_config("default-lum")            # the default with the parallax channel
    assert full_lum["luminosity"]["enabled"] and not full["luminosity"]["enabled"]
    assert {k: v for k, v in full_lum.items() if k != "luminosity"} == \
        {k: v for k, v in full.items() if k != "luminosity"}
    assert "chabrier" in load_prior("chabrier-imf").to_dict()["source"]
    from cvae_pms.priors import PriorError
    with pytest.raises(PriorError, match="not found"):
        load_prior("no-such-prior")


@pytest.mark.slow
def test_the_wheel_carries_recipes_priors_and_calibration_files(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip()[-200:]}")
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("cvae_pms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("cvae_pms/recipes/cpu-quick.toml", "cvae_pms/recipes/cpu-quick-lum.toml",
              "cvae_pms/recipes/cpu-full.toml", "cvae_pms/recipes/priors/chabrier-imf.toml",
              "cvae_pms/data/gof_threshold.json", "cvae_pms/data/model_error.npz",
              "cvae_pms/data/photosphere_correction.npz", "cvae_pms/recipes/default.toml"):
        assert f in names, f
    # the shipped default model travels with every file inference reads
    from cvae_pms import models
    for f in sorted(p.name for p in (models.SHIPPED_DIR / models.DEFAULT).iterdir()):
        assert f"cvae_pms/models/default/{f}" in names, f
    # installed (not editable) into a folder of its own, it resolves everything by name
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                          "--target", str(target), str(wheel)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    probe = (
        "import json, cvae_pms\n"
        "from cvae_pms.training import load_config\n"
        "from cvae_pms.priors import load_prior\n"
        "from cvae_pms import models\n"
        "from cvae_pms.cli import main\n"
        "cfg, _ = load_config('cpu-quick')\n"
        "print(json.dumps({'file': cvae_pms.__file__, 'epochs': cfg['training']['epochs'],\n"
        "  'prior': load_prior('chabrier-imf').to_dict()['source'],\n"
        "  'default': str(models.resolve('default'))}))\n"
        "main(['train', '--help'], standalone_mode=False)\n")
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.splitlines()[0])
    assert Path(got["file"]).resolve().is_relative_to(target.resolve()), got   # not the source tree
    assert got["epochs"] == 30 and "chabrier" in got["prior"]
    assert Path(got["default"]).resolve().is_relative_to(target.resolve())
    assert "--config" in res.stdout
