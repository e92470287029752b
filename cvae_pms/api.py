"""The Python front end: ``cvae_pms.load(run).sample(spectra)`` for notebooks and scripts.

Example (a real Gaia DR3 file, one corner plot)::

    import cvae_pms
    post = cvae_pms.load("runs/quick")
    res = post.sample("XP_CONTINUOUS_RAW.csv", n=1000, seed=0)
    res.table()["source_id", "teff_median", "teff_p16", "teff_p84", "flags"]
    res.corner(0, "star0.png")

:meth:`Posterior.sample` runs exactly what ``cvae-pms infer`` runs per chunk
(:func:`cvae_pms.infer.infer_batch`: features, keyed sampler, OOD distance, flags, optional
user prior and goodness of fit), so the samples equal those of the CLI for the same model,
source_id and seed.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.errors import CvaePmsError


class ApiError(CvaePmsError):
    """Spectra given to :meth:`Posterior.sample` in a form it cannot read."""


@dataclass
class PosteriorResult:
    """Posteriors of n sources: ``samples`` (n, S, 7) physical units (NaN for failed sources),
    ``status`` (n,) flag bits (:data:`cvae_pms.posterior_file.STATUS_FLAGS`), ``message``
    (n,), ``ood_distance``, ``gof_chi2_red``/``gof_p`` (None without the check), ``ess``
    (None without a prior)."""

    source_id: np.ndarray
    samples: np.ndarray
    status: np.ndarray
    message: list
    ood_distance: np.ndarray
    bound_params: np.ndarray
    gof_chi2_red: np.ndarray | None = None
    gof_p: np.ndarray | None = None
    ess: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.source_id.size)

    @property
    def flags(self) -> list[list[str]]:
        """Flag names per source."""
        return [pf.flag_names(int(s)) for s in self.status]

    def table(self):
        """The summary table (astropy ``Table``, the columns of ``infer --summary``)."""
        return pf.summary_table(pf.Posterior(
            source_id=self.source_id, samples=None,
            quantiles=pf.posterior_quantiles(self.samples), status=self.status,
            message=np.asarray(self.message, dtype=object), input_file=np.array(
                [""] * len(self), dtype=object), ood_distance=self.ood_distance,
            bound_params=self.bound_params, ess=self.ess, gof_chi2_red=self.gof_chi2_red,
            gof_p=self.gof_p))

    def corner(self, i: int, path: str | os.PathLike, truth=None) -> Path:
        """Corner plot of source ``i`` (index) written to ``path``; ``truth`` (7,) optional."""
        from cvae_pms.plots.corner_plots import corner_plot
        return corner_plot(self.samples[i], path, title=f"source_id {self.source_id[i]}",
                           truth=truth)


class Posterior:
    """A trained model dir, loaded once, as a conditional posterior p(theta | spectrum)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        from cvae_pms.infer import load_model
        self.run_dir = Path(run_dir)
        self.model = load_model(run_dir)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return params.NAMES

    def sample(self, spectra, n: int = 1000, seed: int = 0, parallax=None, prior=None,
               gof: bool = True, batch: int = 256) -> PosteriorResult:
        """Posterior samples for ``spectra``.

        Args:
            spectra: an XP file path (any format ``cvae-pms infer`` reads), an astropy
                ``Table`` in one of those layouts, an ``XPBatch``/``SampledBatch``, or a dict
                of arrays: ``bp``, ``rp`` (m, 55), ``bp_cov``, ``rp_cov`` (m, 55, 55) in the
                archive's units, or ``flux``, ``flux_error`` (m, 343) [W m^-2 nm^-1]; optional
                ``source_id`` (m,) (default 1..m; the samples are keyed on it).
            n: samples per source. seed: global seed.
            parallax: ``(parallax, parallax_error)`` arrays [mas] (m,) for luminosity models
                (default: the input's columns), or a :class:`cvae_pms.infer.ParallaxOptions`.
            prior: a prior TOML path or :class:`cvae_pms.priors.Prior` to reweight to.
            gof: run the posterior predictive check (``gof_chi2_red``, ``gof_p``, ``poor_fit``).
            batch: sources per chunk.
        """
        from cvae_pms.infer import ParallaxOptions, infer_batch
        from cvae_pms.priors import Prior, load_prior
        if n < 1:
            raise ApiError(f"n must be >= 1, got {n}")
        prior = prior if prior is None or isinstance(prior, Prior) else load_prior(prior)
        opts = parallax if isinstance(parallax, ParallaxOptions) else ParallaxOptions()
        check, note = self.model.predictive_check() if gof else (None, "")
        parts = []
        for b in _batches(spectra, batch):
            if parallax is not None and not isinstance(parallax, ParallaxOptions):
                b = _with_parallax(b, parallax, sum(len(p) for p in parts))
            parts.append(infer_batch(self.model, b, n, seed, opts, prior, False, check, note))
        if not parts:
            raise ApiError("no spectra given")
        cat = (lambda k: None if getattr(parts[0], k) is None
               else np.concatenate([getattr(p, k) for p in parts]))
        return PosteriorResult(
            source_id=cat("source_id"), samples=cat("samples"), status=cat("status"),
            message=[m for p in parts for m in p.message], ood_distance=cat("ood_distance"),
            bound_params=cat("bound_params"), gof_chi2_red=cat("gof_chi2_red"),
            gof_p=cat("gof_p"), ess=cat("ess"))


def load(run_dir: str | os.PathLike = "default") -> Posterior:
    """Load a model for :meth:`Posterior.sample`: a model dir (``cvae-pms train --out RUN``)
    or the name of an installed model (``"default"``, see ``cvae-pms models``)."""
    from cvae_pms.models import resolve
    return Posterior(resolve(run_dir))


def _batches(spectra, batch: int):
    """Yield XPBatch/SampledBatch chunks of at most ``batch`` sources from any accepted form."""
    from cvae_pms.xp.archive import XPBatch, iter_xp
    from cvae_pms.xp.sampled import SampledBatch
    if isinstance(spectra, (str, os.PathLike)):
        yield from iter_xp(spectra, chunk_size=batch)
        return
    if isinstance(spectra, (XPBatch, SampledBatch)):
        for lo in range(0, len(spectra), batch):
            yield spectra.select(np.arange(lo, min(lo + batch, len(spectra))))
        return
    if isinstance(spectra, dict):
        yield from _batches(_from_arrays(spectra), batch)
        return
    from astropy.table import Table
    if isinstance(spectra, Table):
        # One reader for every layout: the table goes through the ECSV reader of iter_xp.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "spectra.ecsv"
            spectra.write(path, format="ascii.ecsv")
            for b in iter_xp(path, chunk_size=batch):
                b.path = "<astropy Table>"
                yield b
        return
    raise ApiError(f"spectra of type {type(spectra).__name__}: give a path, an astropy Table, "
                   f"an XPBatch/SampledBatch or a dict of arrays")


def _from_arrays(d: dict):
    from cvae_pms.xp.archive import XPBatch
    from cvae_pms.xp.sampled import SampledBatch
    keys = set(d)
    if {"bp", "rp", "bp_cov", "rp_cov"} <= keys:
        bp, rp = (np.atleast_2d(np.asarray(d[k], np.float64)) for k in ("bp", "rp"))
        bc, rc = (np.asarray(d[k], np.float64).reshape(-1, 55, 55) for k in ("bp_cov", "rp_cov"))
        m = bp.shape[0]
        if bp.shape != (m, 55) or rp.shape != (m, 55) or len(bc) != m or len(rc) != m:
            raise ApiError(f"bp/rp must be (m, 55) and bp_cov/rp_cov (m, 55, 55); got "
                           f"{bp.shape}, {rp.shape}, {bc.shape}, {rc.shape}")
        sid = _source_id(d, m)
        return XPBatch(sid, bp, rp, bc, rc, np.full(m, 55), np.full(m, 55), np.ones(m, bool),
                       np.array([""] * m, dtype=object), {}, "<arrays>")
    if {"flux", "flux_error"} <= keys:
        f, e = (np.atleast_2d(np.asarray(d[k], np.float64)) for k in ("flux", "flux_error"))
        if f.shape != e.shape or f.shape[1] != 343:
            raise ApiError(f"flux and flux_error must both be (m, 343); got {f.shape}, {e.shape}")
        m = f.shape[0]
        err = np.array(["" if np.isfinite(f[i]).all() and (e[i] > 0).all()
                        else "non-finite flux or flux_error <= 0" for i in range(m)], dtype=object)
        return SampledBatch(_source_id(d, m), f, e, err, {}, "<arrays>")
    raise ApiError(f"a dict of arrays needs bp, rp, bp_cov, rp_cov or flux, flux_error; got "
                   f"{sorted(keys)}")


def _source_id(d: dict, m: int) -> np.ndarray:
    sid = np.asarray(d.get("source_id", np.arange(1, m + 1)), np.int64).reshape(-1)
    if sid.size != m:
        raise ApiError(f"source_id has {sid.size} values for {m} spectra")
    return sid


def _with_parallax(b, parallax, offset: int):
    plx, err = (np.asarray(v, np.float64).reshape(-1) for v in parallax)
    sl = slice(offset, offset + len(b))
    if plx[sl].size != len(b) or err[sl].size != len(b):
        raise ApiError("parallax and parallax_error need one value per spectrum")
    b.extra = {**b.extra, "parallax": plx[sl], "parallax_error": err[sl]}
    return b
