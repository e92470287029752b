"""scripts/ship_model.py: a warm-started model's provenance lists every training stage."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py"


@pytest.fixture(scope="module")
def ship():
    spec = importlib.util.spec_from_file_location("ship_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(path: Path, init_from: str, rows: list[tuple[int, float]]) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"training": {"init_from": init_from}}))
    head = "epoch,beta,H,KL,L,val_H,val_KL,lr,time_s,samples_per_s\n"
    (path / "history.csv").write_text(head + "".join(
        f"{e},1,-12.7,5.4,-7.3,-12.7,5.4,1e-5,{t},2000\n" for e, t in rows))
    return path


def test_warm_started_run_carries_the_earlier_stage(ship, tmp_path):
    init = tmp_path / "stage1"
    init.mkdir()
    (init / "provenance.json").write_text(json.dumps({
        "recipe": "default", "code_commit": "c2d800b",
        "training": {"epochs": 60, "seconds": 4060, "samples_per_s": 4643,
                     "hardware": "AVX-512 CPU"}}))
    run = _run(tmp_path / "ft", str(init), [(0, 130.0), (1, 261.0), (2, 390.4)])
    this = ship._training(run, "AVX2 CPU")
    assert (this["epochs"], this["seconds"]) == (3, 390)
    out = ship._stages(run, this, "default-finetune")
    assert (out["epochs"], out["seconds"]) == (63, 4450)
    assert [s["recipe"] for s in out["stages"]] == ["default", "default-finetune"]
    assert out["stages"][0]["hardware"] == "AVX-512 CPU" and out["stages"][1]["init_from"] == str(init)
    # a third stage keeps both earlier ones
    (run / "provenance.json").write_text(json.dumps({"recipe": "default", "training": out}))
    run3 = _run(tmp_path / "ft2", str(run), [(0, 100.0)])
    out3 = ship._stages(run3, ship._training(run3, "x"), "default-finetune")
    assert len(out3["stages"]) == 3 and out3["seconds"] == 4550


def test_cold_run_has_one_stage(ship, tmp_path):
    run = _run(tmp_path / "cold", "", [(0, 50.0)])
    this = ship._training(run, "x")
    assert ship._stages(run, this, None) == this and "stages" not in this
