"""GPU-only checks (marker ``gpu``: skipped unless TensorFlow sees a GPU, see conftest.py).

Mixed precision (``cvae-pms train --mixed-precision``) is meant for GPUs: the loss must stay
finite, the saved weights float32, and the trained model must sample inside the box.
"""
from __future__ import annotations

import numpy as np
import pytest

import helpers_infer as h

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_mixed_precision_training_gives_a_usable_float32_model(tmp_path):
    from cvae_pms import params as P
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.model.rundir import load_run
    from cvae_pms.training import read_history, train
    from cvae_pms.xp.noise import draw_observation
    from cvae_pms.xp.photometry import scale_to_g

    grid = h.make_grid(tmp_path / "grid.h5", n=1500)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("")
    out = tmp_path / "run"
    train(grid, cfg, out, overrides=h.TINY_OVERRIDES + ("training.epochs=3",),
          mixed_precision=True, noise_model=h.noise_model(), log=lambda s: None, ood=False)
    hist = read_history(out / "history.csv")
    assert len(hist) == 3 and all(np.isfinite(r["val_H"]) for r in hist)
    run = load_run(out)
    assert all(w.dtype == np.float32 for w in run.net.get_weights())
    with open_grid(grid) as g:
        bp, rp = g.coefficients(np.arange(5))
    bp, rp, _ = scale_to_g(bp, rp, np.full(5, 14.0))
    bp_o, rp_o, cb, cr = draw_observation(bp, rp, 40, np.random.default_rng(0), h.noise_model())
    u = P.to_unit(run.sample(bp_o, rp_o, cb, cr, n_samples=200, seed=0).reshape(-1, P.N_PARAMS))
    assert np.all(np.isfinite(u)) and np.all((u >= 0) & (u <= 1))
