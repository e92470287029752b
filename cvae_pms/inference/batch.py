"""Posterior rows of one batch of sources: :func:`infer_batch` (features, keyed samples, OOD
distance, status flags, parallaxes, user-prior reweighting, predictive check) and
:class:`ParallaxOptions` (how parallaxes are used); the behaviour is described in
:mod:`cvae_pms.infer`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.inference.model import Model, sample_sources
from cvae_pms.ood import bound_flags


@dataclass
class ParallaxOptions:
    """How inference uses parallaxes (luminosity models only).

    ``astrometry``: side table (overrides the input's columns for the sources it lists);
    ``zero_point_mas``: added to every parallax (None: the model's config value);
    ``min_over_error``: minimum parallax / parallax_error.
    """

    astrometry: object | None = None
    zero_point_mas: float | None = None
    min_over_error: float = 5.0

    def parallaxes(self, batch) -> tuple[np.ndarray, np.ndarray]:
        """(parallax, parallax_error) [mas] (n,) of a batch; NaN where unknown."""
        n = len(batch)
        plx = np.asarray(batch.extra.get("parallax", np.full(n, np.nan)), dtype=np.float64)
        err = np.asarray(batch.extra.get("parallax_error", np.full(n, np.nan)), dtype=np.float64)
        if self.astrometry is not None:
            t_plx, t_err, found = self.astrometry.lookup(batch.source_id)
            plx, err = np.where(found, t_plx, plx), np.where(found, t_err, err)
        return plx, err


def infer_batch(model: Model, batch, n_samples: int, seed: int,
                parallax: ParallaxOptions | None = None, prior=None,
                keep_raw: bool = False, gof=None, gof_note: str = "") -> pf.PosteriorChunk:
    """Posterior rows for one :class:`~cvae_pms.xp.archive.XPBatch` or
    :class:`~cvae_pms.xp.sampled.SampledBatch` (bad sources flagged).

    ``parallax``: :class:`ParallaxOptions` (default: input columns, model zero point, 5);
    ``prior``: a :class:`cvae_pms.priors.Prior` to reweight to (adds ``ess``);
    ``keep_raw``: also return the raw samples (with ``prior``);
    ``gof``: a :class:`cvae_pms.gof.PredictiveCheck` run on the (final) samples: adds
    ``gof_chi2_red``/``gof_p`` and flags ``poor_fit``; ``gof_note`` (with ``gof=None``): the
    check was asked for but cannot run (NaN columns, the note appended to each usable row's
    message).

    Sampled input (``batch.sampled``): features from the flux and its per-pixel error
    (:meth:`~cvae_pms.features.Featuriser.numpy_sampled`), G from the flux, every row flagged
    ``sampled_input`` and never ``diagonal_covariance`` (that flag is about coefficient
    correlations); rows with an ``apogee_id`` (the APOGEE library) get ``apogee_id=...`` at
    the end of their message.
    """
    from cvae_pms.features import N_FEATURES
    from cvae_pms.xp.photometry import g_mag, g_mag_from_flux

    sampled = bool(getattr(batch, "sampled", False))
    n = len(batch)
    samples = np.full((n, n_samples, params.N_PARAMS), np.nan, dtype=np.float32)
    status = np.zeros(n, np.uint16)
    message = np.array([str(e) for e in batch.error], dtype=object)
    ood = np.full(n, np.nan)
    ok = np.array([not e for e in message], dtype=bool)
    no_plx = np.zeros(n, bool)
    if ok.any():
        idx = np.flatnonzero(ok)
        opts = parallax or ParallaxOptions()
        plx, err = opts.parallaxes(batch)
        zp = model.zero_point_mas if opts.zero_point_mas is None else opts.zero_point_mas
        if sampled:
            y, _, present = model.run.featuriser.numpy_sampled_with_luminosity(
                batch.flux[idx], batch.flux_error[idx], plx[idx], err[idx], zp,
                opts.min_over_error)
        else:
            y, _, present = model.run.featuriser.numpy_with_luminosity(
                batch.bp_coefficients[idx], batch.rp_coefficients[idx], batch.bp_covariance[idx],
                batch.rp_covariance[idx], plx[idx], err[idx], zp, opts.min_over_error)
        if model.luminosity:
            no_plx[idx[~present]] = True
            for j, why in zip(idx[~present], _parallax_problem(plx[idx[~present]] + zp,
                                                              err[idx[~present]],
                                                              opts.min_over_error)):
                message[j] = f"no usable parallax ({why}): spectrum-only posterior"
        finite = np.isfinite(y).all(axis=1)
        for j in idx[~finite]:
            message[j] = "non-finite features (zero or negative total flux?)"
        no_plx[idx[~finite]] = False
        ok[idx[~finite]] = False
        idx, y = idx[finite], y[finite]
        if idx.size:
            samples[idx] = sample_sources(model, y, batch.source_id[idx], n_samples, seed)
            ood[idx] = model.ood.distance(y[:, :N_FEATURES])   # spectral part only
    status[~ok] |= pf.FLAG_FAILED
    status[ok & model.ood.is_ood(ood)] |= pf.FLAG_OOD
    bounds = np.zeros(n, np.uint8)
    bounds[ok] = bound_flags(samples[ok], model.ood.prior_edge_fraction)
    status[bounds > 0] |= pf.FLAG_AT_BOUND
    if sampled:
        status |= pf.FLAG_SAMPLED_INPUT
    else:
        status[ok & ~np.asarray(batch.correlations_present, bool)] |= pf.FLAG_DIAGONAL_COV
    status[ok & no_plx] |= pf.FLAG_NO_PARALLAX
    if model.g_range is not None and ok.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            g = np.asarray(g_mag_from_flux(batch.flux) if sampled
                           else g_mag(batch.bp_coefficients, batch.rp_coefficients), dtype=float)
        outside = ok & ((g < model.g_range[0]) | (g > model.g_range[1]))
        status[outside] |= pf.FLAG_G_OUTSIDE_TRAINING
    ess = raw = None
    if prior is not None:
        from cvae_pms.priors import reweight
        rw = reweight(samples, prior, source_id=batch.source_id)
        raw, samples, ess = samples, rw.resampled, rw.ess.astype(np.float32)
        status[ok & rw.flag_low_ess] |= pf.FLAG_LOW_ESS
        for j in np.flatnonzero(ok & rw.zero_support):
            message[j] = "user prior is zero at every posterior sample (no resampled samples)"
    gof_chi2 = gof_p = None
    if gof is not None or gof_note:
        gof_chi2, gof_p = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    if gof is not None and ok.any():
        idx = np.flatnonzero(ok)
        if sampled:
            res = gof.sampled(samples[idx], batch.flux[idx], batch.flux_error[idx])
        else:
            res = gof.coefficients(samples[idx], batch.bp_coefficients[idx],
                                   batch.rp_coefficients[idx], batch.bp_covariance[idx],
                                   batch.rp_covariance[idx])
        gof_chi2[idx], gof_p[idx] = res.chi2_red, res.p_value
        status[idx[gof.poor_fit(res)]] |= pf.FLAG_POOR_FIT
    elif gof_note:
        for j in np.flatnonzero(ok):
            message[j] = "; ".join(x for x in (message[j], gof_note) if x)
    if "apogee_id" in batch.extra:
        for j, name in enumerate(batch.extra["apogee_id"]):
            message[j] = "; ".join(x for x in (message[j], f"apogee_id={name}") if x)
    return pf.PosteriorChunk(source_id=batch.source_id, samples=samples, status=status,
                             message=message.tolist(),
                             input_file=[os.path.abspath(batch.path)] * n,
                             ood_distance=ood, bound_params=bounds, ess=ess,
                             samples_raw=raw if keep_raw else None,
                             gof_chi2_red=gof_chi2, gof_p=gof_p)


def _parallax_problem(plx: np.ndarray, err: np.ndarray, min_over_error: float) -> list[str]:
    """Why each (zero-point corrected) parallax is unusable, in words."""
    out = []
    for p, e in zip(plx, err):
        if not np.isfinite(p):
            out.append("parallax missing or NaN")
        elif p <= 0:
            out.append(f"parallax {p:.4g} mas <= 0")
        elif not (np.isfinite(e) and e > 0):
            out.append("parallax_error missing, NaN or <= 0")
        else:
            out.append(f"parallax/error {p / e:.3g} < {min_over_error:g}")
    return out
