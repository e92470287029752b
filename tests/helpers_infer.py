"""Test-only stand-ins for the inference tests: a smooth analytic grid and a tiny trained run.

The grid is a blackbody SED with a power-law extinction, an accretion-like blue excess and
weak gravity/metallicity features, projected with the XP instrument operator: learnable in
seconds, not physics. Never used by the package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cvae_pms import params

WL_NM = np.linspace(320.0, 1090.0, 386)


def standin_sed(theta: np.ndarray) -> np.ndarray:
    """SED (n, 386) [W m^-2 nm^-1] of physical parameter vectors (n, 7); G ~ 12-14."""
    teff, logg, mh, lmdot, ff, mass, a0 = np.asarray(theta, dtype=float).T
    lam_m = WL_NM[None, :] * 1e-9
    x = 1.438777e-2 / (lam_m * teff[:, None])
    planck = 1.0 / (lam_m ** 5 * np.expm1(x))
    planck /= planck[:, 180:200].mean(axis=1, keepdims=True)
    ext = 10 ** (-0.4 * a0[:, None] * (541.4 / WL_NM[None, :]) ** 1.3)
    excess = 1 + 0.5 * ff[:, None] * 10 ** (0.3 * (lmdot[:, None] + 7.0)) * (400.0 / WL_NM[None, :]) ** 3
    lines = 1 - 0.05 * (mh[:, None] + 0.6) * np.exp(-0.5 * ((WL_NM[None, :] - 850.0) / 8.0) ** 2)
    grav = 1 + 0.03 * (logg[:, None] - 4.0) * ((WL_NM[None, :] - 700.0) / 400.0)
    return 1e-16 * planck * ext * excess * lines * grav * (mass[:, None] ** 0.0)


def make_grid(path: Path, n: int = 1500, seed: int = 0) -> Path:
    """Write a stand-in grid of ``n`` rows uniform in the box (A0 kept below 3 mag)."""
    from cvae_pms.grid.gridfile import write_grid
    from cvae_pms.xp.instrument import sed_to_coefficients

    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(n, params.N_PARAMS))
    u[:, 6] *= 0.3
    theta = params.from_unit(u)
    bp, rp = sed_to_coefficients(standin_sed(theta), WL_NM)
    write_grid(path, theta, bp, rp, meta={"source": "tests/helpers_infer.py stand-in",
                                           "random_seed": seed})
    return path


def noise_model():
    """The shipped XP noise model, or its constructor defaults while the fitted file is absent."""
    from cvae_pms.xp.noise import NoiseModel, NoiseModelError

    try:
        return NoiseModel.default()
    except NoiseModelError:
        return NoiseModel()


TINY_OVERRIDES = (
    "model.trunk=[64, 64]", "model.r1_hidden=[32]", "model.q_hidden=[32]",
    "model.r2_hidden=[64, 64]", "model.components=4", "model.latent=4",
    "annealing.start=1", "annealing.end=3", "training.batch_size=128",
    "training.learning_rate=0.003", "training.standardisation_rows=1024",
    "training.early_stopping_patience=100", "noise.g_min=11.0", "noise.g_max=17.5",
)


def make_run(tmp: Path, epochs: int = 4, n: int = 1500, ood: bool = True) -> Path:
    """Train a tiny CVAE on a stand-in grid into ``tmp/run`` (and build its OOD index)."""
    from cvae_pms.training import train

    tmp.mkdir(parents=True, exist_ok=True)
    grid = make_grid(tmp / "grid.h5", n=n)
    cfg = tmp / "tiny.toml"
    cfg.write_text("# tiny test recipe (everything else: cvae_pms.training.config.DEFAULT_CONFIG)\n")
    run = tmp / "run"
    train(grid, cfg, run, overrides=TINY_OVERRIDES + (f"training.epochs={epochs}",),
          noise_model=noise_model(), log=lambda s: None,
          ood=dict(n_ref=600, n_cal=150, k=10, seed=0) if ood else False)
    return run


def write_observations(path: Path, theta: np.ndarray, g_mag: np.ndarray, seed: int,
                       source_id: np.ndarray | None = None, n_transits: int = 40) -> Path:
    """Noisy XP observations of stand-in stars at magnitudes ``g_mag``, as an archive CSV."""
    from cvae_pms.xp.archive import write_xp_table
    from cvae_pms.xp.instrument import sed_to_coefficients
    from cvae_pms.xp.noise import draw_observation
    from cvae_pms.xp.photometry import scale_to_g

    theta = np.atleast_2d(theta)
    bp, rp = sed_to_coefficients(standin_sed(theta), WL_NM)
    bp, rp, _ = scale_to_g(bp, rp, np.asarray(g_mag, dtype=float))
    bp_o, rp_o, bp_cov, rp_cov = draw_observation(bp, rp, n_transits, np.random.default_rng(seed),
                                                  noise_model())
    sid = np.arange(1, len(theta) + 1, dtype=np.int64) if source_id is None else source_id
    write_xp_table(path, {"source_id": sid, "bp_coefficients": bp_o, "rp_coefficients": rp_o,
                          "bp_covariance": bp_cov, "rp_covariance": rp_cov})
    return path


def shared_run(tmp_path_factory) -> Path:
    """One tiny trained run (3 epochs, OOD index built) per pytest session, shared by files."""
    base = tmp_path_factory.getbasetemp() / "infer_shared"
    run = base / "run"
    if not (run / "ood.npz").is_file():
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        make_run(base, epochs=3, n=1500)
    return run


def write_grid_observations(path: Path, grid_path: str | Path, rows: np.ndarray, g_mag: float,
                            seed: int, n_transits: int = 40) -> Path:
    """Noisy observations (archive CSV, source_id = row + 1) of grid rows at magnitude G."""
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.xp.archive import write_xp_table
    from cvae_pms.xp.noise import draw_observation
    from cvae_pms.xp.photometry import scale_to_g

    rows = np.sort(np.asarray(rows))
    with open_grid(grid_path) as grid:
        bp, rp = grid.coefficients(rows)
    bp, rp, _ = scale_to_g(bp, rp, np.full(rows.size, float(g_mag)))
    bp_o, rp_o, bp_cov, rp_cov = draw_observation(bp, rp, n_transits,
                                                  np.random.default_rng(seed), noise_model())
    write_xp_table(path, {"source_id": rows.astype(np.int64) + 1, "bp_coefficients": bp_o,
                          "rp_coefficients": rp_o, "bp_covariance": bp_cov,
                          "rp_covariance": rp_cov})
    return path


def make_lum_grid(path: Path, n: int = 1000, seed: int = 0, d_ref_pc: float = 10.0) -> Path:
    """The stand-in grid with absolute fluxes at ``d_ref_pc`` (reference_distance_pc in the
    meta), as luminosity (parallax-channel) models need."""
    from cvae_pms.grid.gridfile import write_grid
    from cvae_pms.xp.instrument import sed_to_coefficients

    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(n, params.N_PARAMS))
    u[:, 6] *= 0.3
    theta = params.from_unit(u)
    bp, rp = sed_to_coefficients(standin_sed(theta), WL_NM)
    write_grid(path, theta, bp, rp, meta={"source": "tests/helpers_infer.py lum stand-in",
                                           "random_seed": seed,
                                           "reference_distance_pc": d_ref_pc})
    return path


def shared_lum_run(tmp_path_factory, epochs: int = 3) -> Path:
    """One tiny luminosity-channel run (stand-in grid at 10 pc, OOD index built) per session."""
    base = tmp_path_factory.getbasetemp() / f"lum_shared_{epochs}"
    run = base / "run"
    if not (run / "ood.npz").is_file():
        import shutil

        from cvae_pms.training import train

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        grid = make_lum_grid(base / "grid.h5")
        cfg = base / "tiny.toml"
        cfg.write_text("[luminosity]\nenabled = true\n")
        train(grid, cfg, run, overrides=TINY_OVERRIDES + (f"training.epochs={epochs}",),
              noise_model=noise_model(), log=lambda s: None,
              ood=dict(n_ref=400, n_cal=100, k=10, seed=0))
    return run
