"""The held-out sources ``evaluate`` scores and their simulated observations: the row
selection, the seeded G/transit/noise draws per G setting, and the run's network input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cvae_pms import params
from cvae_pms.simulator import draw_g_transits

from .config import EvaluationError, GSetting


def _simulate(bp0: np.ndarray, rp0: np.ndarray, g: np.ndarray, n_transits: np.ndarray,
              rng: np.random.Generator, errors_from: str = "observed", teff=None,
              model_error=None):
    """:class:`cvae_pms.simulator.Observations` at G ``g`` (n,); the model error drawn at
    ``teff`` (n,) [K] from ``model_error`` (default: the shipped term)."""
    from cvae_pms.simulator import SimulateError, simulate_observations
    try:
        return simulate_observations(bp0, rp0, g, n_transits, rng, errors_from=errors_from,
                                     teff=teff, model_error_term=model_error)
    except SimulateError as exc:
        raise EvaluationError(f"simulating observations: {exc}") from exc


def network_input(run, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray, rp_cov: np.ndarray,
                  flux_factor: np.ndarray, reference_distance_pc: float | None,
                  parallax_error_frac: float, rng: np.random.Generator) -> np.ndarray:
    """The run's network input (n, y_dim) for simulated observations.

    A luminosity model also gets parallaxes, drawn as ``simulate`` draws them
    (:func:`cvae_pms.astrometry.draw_parallax`: the grid's ``reference_distance_pc`` and the
    observations' ``flux_factor`` (n,), Gaussian error ``parallax_error_frac`` x parallax from
    ``rng``), so it is scored on what it was trained for, not its spectrum-only fallback.
    """
    if not run.spec.luminosity:
        return run.features(bp, rp, bp_cov, rp_cov)[0]
    from cvae_pms.astrometry import draw_parallax
    if reference_distance_pc is None:
        raise EvaluationError("the run has a luminosity channel but the grid has no reference "
                              "distance (normalised fluxes): no parallaxes can be simulated")
    _, plx, err = draw_parallax(flux_factor, reference_distance_pc, parallax_error_frac, rng)
    return run.featuriser.numpy_with_luminosity(bp, rp, bp_cov, rp_cov, plx, err)[0]


@dataclass(frozen=True)
class HeldOutObservations:
    """Simulated observations of n held-out sources: G [mag] (n,), integer transits (n,),
    noisy coefficients ``bp``/``rp`` (n, 55) and their covariances (n, 55, 55), archive units,
    and the factor (n,) each grid flux was scaled by to reach its G."""

    g: np.ndarray
    n_transits: np.ndarray
    bp: np.ndarray
    rp: np.ndarray
    bp_cov: np.ndarray
    rp_cov: np.ndarray
    flux_factor: np.ndarray


def select_rows(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The grid rows ``evaluate`` scores: ``min(n, rows.size)`` of ``rows`` drawn without
    replacement by numpy stream ``[seed, 1]`` (``seed`` = ``--seed``), sorted."""
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(rows, size=min(n, rows.size), replace=False))


def draw_observations(bp0: np.ndarray, rp0: np.ndarray, setting: GSetting,
                      transits: tuple[int, int], seed: int, index: int = 0,
                      errors_from: str = "observed", teff=None,
                      model_error=None) -> HeldOutObservations:
    """Observe noise-free coefficients ``bp0, rp0`` (n, 55) as ``evaluate`` does for its
    ``index``-th G setting: numpy stream ``[seed, 100 + index]`` (``seed`` = ``--seed``) draws
    G [mag] (``setting.low``, or uniform in the range), integer transits uniform in
    ``transits`` (inclusive), then the noise and model error of
    :func:`cvae_pms.simulator.simulate_observations` (``errors_from``, ``teff`` [K] (n,) and
    the ``model_error`` term as there)."""
    n = len(bp0)
    rng = np.random.default_rng([seed, 100 + index])
    g, nt = draw_g_transits(rng, n, (setting.low, setting.high), transits)
    o = _simulate(bp0, rp0, g, nt, rng, errors_from, teff, model_error)
    return HeldOutObservations(g, nt, o.bp, o.rp, o.bp_cov, o.rp_cov, o.flux_factor)


def evaluated_observations(bp0: np.ndarray, rp0: np.ndarray, theta: np.ndarray,
                           g_settings: Sequence[GSetting], setting: GSetting,
                           transits: tuple[int, int], seed: int,
                           model_error=None) -> HeldOutObservations:
    """The observations ``evaluate --g-mag G1,G2,... --seed SEED`` makes of the rows with true
    parameters ``theta`` (n, 7) and noise-free coefficients ``bp0, rp0`` for ``setting``: the
    :func:`draw_observations` stream of ``setting``'s position in ``g_settings`` (the
    de-duplicated ``--g-mag`` list), the model error drawn at the true T_eff from
    ``model_error`` (:func:`run_model_error` of the run). Used by ``evaluate`` itself and by
    ``benchmarks/bench_information_limit.py``, so both see the same noise draws."""
    settings = list(dict.fromkeys(g_settings))
    if setting not in settings:
        raise EvaluationError(f"G setting {setting.label} is not among --g-mag "
                              f"{','.join(s.label for s in settings)}")
    return draw_observations(bp0, rp0, setting, transits, seed, settings.index(setting),
                             teff=np.asarray(theta)[:, params.INDEX["teff"]],
                             model_error=model_error)
