"""Batched, streaming posterior inference for Gaia XP sources, and its output files.

``infer(run_dir, inputs, out)`` reads every input file chunk by chunk
(:func:`cvae_pms.xp.archive.iter_xp`), computes features with each source's own covariance
(or, for sampled-spectrum input, its per-pixel flux errors; flag ``sampled_input``),
draws ``S`` posterior samples per source, flags each source (:data:`~cvae_pms.posterior_file.
STATUS_FLAGS`) and appends the chunk to the posterior file (:mod:`cvae_pms.posterior_file`).
Memory stays flat in the number of sources.

Reproducibility: the samples of a source depend only on (model, global seed, source_id, S):
each source is sampled with its own key ``splitmix64(seed, source_id)``, so chunking, ``--batch``,
``--resume`` and the Dask partitioning into files do not change them.

Files: every output is checked first (folder exists and is writable; an existing ``POST.h5``
or summary is refused without ``overwrite``), and ``POST.h5.lock`` (:class:`cvae_pms.outputs.
OutputLock`) keeps a second process from writing the same output. The output is written to
``POST.h5.tmp-<pid>`` and renamed to ``POST.h5`` at the end. On an interruption (Ctrl-C,
SIGTERM, an error) the completed rows are kept as ``POST.h5.partial`` (a temporary file
without any completed row is removed). ``--resume`` continues from the newest of
``POST.h5.partial``, the ``POST.h5.tmp-<pid>`` of killed runs and an existing ``POST.h5``
(when adding inputs) that was made with the same model, seed, S, user prior and parallax
settings (damaged ones are skipped), skipping every (input file, input row) already done, and
removes the others when it completes; it refuses when every candidate has other settings
(:mod:`cvae_pms.resume`).

Duplicated source_ids within one input file are kept (each row is its own posterior, keyed on
its row for ``--resume``), flagged ``duplicate_source_id`` and named in a warning.

Parallaxes (luminosity models only, :mod:`cvae_pms.astrometry`): ``parallax`` and
``parallax_error`` come from the input's extra columns, or, where a side table
(``astrometry``) lists the source, from that table (joined on source_id). A source whose
parallax is missing, NaN, non-positive or has parallax/error below ``min_parallax_over_error``
gets the spectrum-only posterior (luminosity channel missing) and the ``no_parallax`` flag. A
spectrum-only model ignores parallaxes (said once in the log).

User prior (``prior``): the raw samples are importance-reweighted with
:func:`cvae_pms.priors.reweight` (keyed on source_id, so chunking does not matter); the
resampled equal-weight samples are written as ``samples``, the raw ones as ``samples_raw``
with ``keep_raw``; ``ess`` per source; ``low_ess`` flag below the prior's threshold. Bound
flags are computed on the raw samples.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cvae_pms import __version__, params
from cvae_pms import posterior_file as pf
from cvae_pms import resume as resuming
from cvae_pms.ood import OODError, OODIndex, bound_flags, load_run_ood_index
from cvae_pms.errors import CvaePmsError

#: Sources per compiled call of the keyed sampler.
KEYED_BATCH = 32


class InferError(CvaePmsError):
    """Inference cannot run or an input gave nothing usable (the message names the file)."""


def source_seeds(seed: int, source_id: np.ndarray) -> np.ndarray:
    """Per-source sampler seeds (n,) int64 >= 0: splitmix64 of (seed, source_id)."""
    from cvae_pms.seeds import GAMMA, keyed_state, mix64
    with np.errstate(over="ignore"):
        x = mix64(keyed_state(seed, source_id) + GAMMA)
    return (x >> np.uint64(1)).astype(np.int64)


@dataclass
class Model:
    """A loaded model dir with everything inference needs (load once per process)."""

    run: object
    ood: OODIndex
    hash: str
    g_range: tuple[float, float] | None

    @property
    def luminosity(self) -> bool:
        """Whether the network takes the luminosity (parallax) channel."""
        return bool(self.run.spec.luminosity)

    @property
    def zero_point_mas(self) -> float:
        """The model's default parallax zero point [mas] (added to parallaxes)."""
        cfg = self.run.config.get("luminosity", {}) if isinstance(self.run.config, dict) else {}
        return float(cfg.get("zero_point_mas", 0.0))

    def predictive_check(self, n_draws: int | None = None, threshold: float | None = None):
        """``(check, note)``: the posterior predictive check of this model
        (:class:`cvae_pms.gof.PredictiveCheck`, cached per settings), or ``(None, why not)``
        for models without a built-in forward model (ingested grids)."""
        from cvae_pms.gof import N_DRAWS, PredictiveCheck
        key = (N_DRAWS if n_draws is None else int(n_draws), threshold)
        cache = self.__dict__.setdefault("_checks", {})
        if key not in cache:
            cache[key] = PredictiveCheck.for_run(self.run, key[0], threshold)
        return cache[key]

    def sampler(self, n_samples: int, batch: int = KEYED_BATCH) -> "KeyedSampler":
        """The compiled per-source-keyed sampler for ``n_samples`` (cached on the run)."""
        return keyed_sampler(self.run, n_samples, batch)


def load_model(run_dir: str | os.PathLike) -> Model:
    """Load a model dir and its OOD index ``RUN/ood.npz`` (written by ``train``).

    Raises :class:`InferError` for a missing/incompatible model dir (another parameter table
    or feature version) and for a missing, damaged or stale ``ood.npz`` (the message names
    the file and the command that rebuilds it).
    """
    from cvae_pms.model.rundir import RunDirError, load_run, model_hash

    try:
        run = load_run(run_dir)
    except RunDirError as exc:
        raise InferError(f"cannot use model: {exc}") from exc
    digest = model_hash(run_dir)
    try:
        ood = load_run_ood_index(run, digest)
    except OODError as exc:
        raise InferError(f"cannot use model: {exc}") from exc
    noise = run.config.get("noise", {}) if isinstance(run.config, dict) else {}
    g_range = ((float(noise["g_min"]), float(noise["g_max"]))
               if "g_min" in noise and "g_max" in noise else None)
    return Model(run=run, ood=ood, hash=digest, g_range=g_range)


_MODELS: dict[str, Model] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(run_dir: str) -> Model:
    """:func:`load_model` once per process and model dir (Dask workers reuse it for every
    task; thread-safe, so threaded workers load it once too). ``cached_model.loads`` counts
    the loads of this process."""
    key = str(Path(run_dir).resolve())
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(key)
            cached_model.loads += 1
        return _MODELS[key]


cached_model.loads = 0


class KeyedSampler:
    """:class:`cvae_pms.model.sampler.PosteriorSampler` with one stateless seed per source.

    Same algorithm and the same random streams as ``PosteriorSampler(net, S, batch=1)
    .sample_unit(y[i:i+1], seed=key_i)`` for every source i (a test checks this), but
    ``batch`` sources per compiled call: the per-source draws (mixture component, latent
    normal, truncated-normal uniforms) are made row by row with each row's own seed
    ``(key_i, 0)``, the networks run on the whole batch. So a source's samples depend on
    (model, key, S) only, not on its neighbours in a batch.
    """

    def __init__(self, net, n_samples: int = 1000, batch: int = KEYED_BATCH) -> None:
        import tensorflow as tf

        self.net = net
        self.n_samples = int(n_samples)
        self.batch = int(batch)
        self._fn = tf.function(self._draw_batch)

    def _draw_batch(self, y, seeds):
        import tensorflow as tf

        from cvae_pms.model.sampler import draw_samples

        def keyed_draws(logits, n_samples, latent, x_dim):
            comp, eps, uni = [], [], []
            for r in range(self.batch):                                    # unrolled
                s = tf.random.experimental.stateless_split(seeds[r], 3)
                comp.append(tf.random.stateless_categorical(logits[r:r + 1], n_samples,
                                                            seed=s[0]))
                eps.append(tf.random.stateless_normal((1, n_samples, latent), seed=s[1]))
                uni.append(tf.random.stateless_uniform((1, n_samples, x_dim), seed=s[2]))
            return tf.concat(comp, 0), tf.concat(eps, 0), tf.concat(uni, 0)

        return draw_samples(self.net, y, self.n_samples, keyed_draws)

    def sample_unit(self, y: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Unit-box samples (n, S, 7) float32 of features y (n, D), source i keyed on keys[i]."""
        import tensorflow as tf

        y = np.asarray(y, dtype=np.float32)
        keys = np.asarray(keys, dtype=np.int64)
        n = y.shape[0]
        out = np.empty((n, self.n_samples, self.net.config.x_dim), dtype=np.float32)
        for start in range(0, n, self.batch):
            block, kb = y[start:start + self.batch], keys[start:start + self.batch]
            k = block.shape[0]
            if k < self.batch:
                block = np.concatenate([block, np.repeat(block[-1:], self.batch - k, 0)])
                kb = np.concatenate([kb, np.repeat(kb[-1:], self.batch - k)])
            seeds = np.stack([kb, np.zeros_like(kb)], axis=1)
            out[start:start + k] = self._fn(tf.constant(block), tf.constant(seeds)).numpy()[:k]
        return out


def keyed_sampler(run, n_samples: int, batch: int = KEYED_BATCH) -> KeyedSampler:
    """The compiled :class:`KeyedSampler` of a loaded run for ``n_samples`` (cached on it):
    the one sampler of ``infer`` and ``evaluate``."""
    cache = run.__dict__.setdefault("_keyed_samplers", {})
    if (n_samples, batch) not in cache:
        cache[n_samples, batch] = KeyedSampler(run.net, n_samples, batch)
    return cache[n_samples, batch]


def keyed_samples(run, y: np.ndarray, source_id: np.ndarray, n_samples: int,
                  seed: int) -> np.ndarray:
    """Samples (n, S, 7) float32, physical units, of features ``y`` (n, D); source i is keyed
    on (seed, source_id[i])."""
    u = keyed_sampler(run, n_samples).sample_unit(y, source_seeds(seed, source_id))
    return params.from_unit(u).astype(np.float32)


def sample_sources(model: Model, y: np.ndarray, source_id: np.ndarray, n_samples: int,
                   seed: int) -> np.ndarray:
    """:func:`keyed_samples` of a loaded :class:`Model`."""
    return keyed_samples(model.run, y, source_id, n_samples, seed)


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


@dataclass
class InferResult:
    """What :func:`infer` did: counts per input file and the files written."""

    out: Path
    summary: Path | None
    n_sources: int = 0
    n_failed: int = 0
    n_ood: int = 0
    n_skipped: int = 0
    n_no_parallax: int = 0
    n_low_ess: int = 0
    n_poor_fit: int = 0
    gof_note: str = ""
    n_duplicates: int = 0
    seconds: float = 0.0
    per_file: dict = field(default_factory=dict)
    unusable_files: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)


def check_paths(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                summary: str | os.PathLike | None = None, *, overwrite: bool = False,
                plots: str | os.PathLike | None = None,
                truth: str | os.PathLike | None = None, out_is_stem: bool = False) -> list[Path]:
    """Fail early (before loading anything): missing inputs, unknown formats, an input given
    twice; outputs whose folder is missing or read-only, or that exist already (unless
    ``overwrite``; ``out_is_stem``: ``out`` only names the per-input files, see
    :mod:`cvae_pms.scaleout`)."""
    from cvae_pms.outputs import OutputError, check_output_dir, check_output_file
    from cvae_pms.xp.archive import XPReadError, xp_format

    out = Path(out)
    try:
        check_output_file(out, overwrite=overwrite or out_is_stem, what="output")
        if summary is not None:
            s = Path(summary)
            if s.suffix.lower() not in (".ecsv", ".csv", ".fits"):
                raise InferError(f"{s}: summary must end in .ecsv, .csv or .fits")
            check_output_file(s, overwrite=overwrite, what="summary")
        if plots is not None:
            check_output_dir(plots, what="plot directory")
    except OutputError as exc:
        raise InferError(str(exc)) from exc
    if truth is not None and not Path(truth).is_file():
        raise InferError(f"{truth}: no such truth table")
    if not inputs:
        raise InferError("no input file given")
    paths, seen = [], set()
    for p in inputs:
        p = Path(p)
        if not p.is_file():
            raise InferError(f"{p}: no such input file")
        try:
            xp_format(p)
        except XPReadError as exc:
            raise InferError(str(exc)) from exc
        if os.path.abspath(p) in seen:
            raise InferError(f"{p}: input file given twice")
        seen.add(os.path.abspath(p))
        paths.append(p)
    return paths


def _flag_duplicates(writer: "pf.PosteriorWriter", parts: list) -> tuple[int, int, str]:
    """Flag every row whose source_id occurs more than once among ``parts`` (one input file's
    rows: (source_id, output row, input row) arrays). Returns (rows, ids, an example)."""
    if not parts:
        return 0, 0, ""
    ids = np.concatenate([p[0] for p in parts])
    out_rows = np.concatenate([p[1] for p in parts])
    in_rows = np.concatenate([p[2] for p in parts])
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    same = s[1:] == s[:-1]
    mask = np.zeros(s.size, bool)
    mask[1:] |= same
    mask[:-1] |= same
    dup = order[mask]
    if not dup.size:
        return 0, 0, ""
    writer.set_flag(out_rows[dup], pf.FLAG_DUPLICATE_SOURCE_ID)
    first = s[mask][0]
    at = np.sort(in_rows[ids == first])
    example = f"source_id {first} at input rows {', '.join(str(r) for r in at[:5])}"
    return int(dup.size), int(np.unique(ids[dup]).size), example


def infer(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
          out: str | os.PathLike, *, n_samples: int = 1000, seed: int = 0, batch: int = 256,
          summary: str | os.PathLike | None = None, resume: bool = False,
          plots: str | os.PathLike | None = None, max_plots: int = 20,
          truth: str | os.PathLike | None = None, progress: bool = True,
          command_line: Sequence[str] | None = None, model: Model | None = None,
          log: Callable[[str], None] | None = None,
          astrometry: str | os.PathLike | None = None,
          parallax_zero_point: float | None = None,
          min_parallax_over_error: float = 5.0,
          prior: str | os.PathLike | object | None = None,
          keep_raw: bool = False, overwrite: bool = False, gof: bool = True,
          gof_draws: int | None = None,
          poor_fit_threshold: float | None = None) -> InferResult:
    """Posterior samples for every source of ``inputs``, written to the posterior file ``out``.

    Args:
        run_dir: trained model dir (:mod:`cvae_pms.model.rundir`).
        inputs: XP archive files (any format :func:`~cvae_pms.xp.archive.iter_xp` reads).
        out: posterior HDF5 file to write.
        n_samples: samples per source S. seed: global seed. batch: sources per chunk.
        summary: optional summary table (.ecsv/.csv/.fits). resume: continue partial results
            (the newest of ``OUT.partial``, orphaned ``OUT.tmp-<pid>`` and ``OUT`` made with the
            same model and settings; the others are removed at the end).
        plots, max_plots, truth: corner plots of the first ``max_plots`` sources (truth lines
            from a truth CSV with source_id + parameter columns).
        progress: tqdm progress bar on stderr. command_line: recorded in the file.
        model: an already loaded :class:`Model` (else loaded from ``run_dir``).
        astrometry: side table with source_id, parallax, parallax_error (CSV/ECSV/FITS/VOTable).
        parallax_zero_point: [mas] added to parallaxes (None: the model's
            ``luminosity.zero_point_mas``). min_parallax_over_error: below it, spectrum-only.
        prior: a prior TOML path or :class:`cvae_pms.priors.Prior`; keep_raw: also write
            the raw samples (``samples_raw``).
        overwrite: replace an existing ``out``/``summary`` (and start again over partial
            results); without it (and without ``resume``) they are refused.
        gof: run the posterior predictive check (:mod:`cvae_pms.gof`; ``gof_chi2_red``,
            ``gof_p``, flag ``poor_fit``); gof_draws: posterior draws re-synthesised per
            source (default :data:`cvae_pms.gof.N_DRAWS`); poor_fit_threshold: on
            ``gof_chi2_red`` (default: the shipped calibrated threshold).

    Raises:
        InferError: bad or existing paths, unusable model dir, unreadable input/astrometry/prior
            file, resuming with another prior or parallax settings, ``out`` being written by
            another process (lock file ``OUT.lock``).
    """
    from tqdm import tqdm

    from cvae_pms.outputs import output_locks
    from cvae_pms.xp.archive import XPReadError, iter_xp

    t0 = time.time()
    out = Path(out)
    paths = check_paths(inputs, out, summary, overwrite=overwrite or resume, plots=plots,
                        truth=truth)
    if n_samples < 1 or batch < 1:
        raise InferError(f"--samples ({n_samples}) and --batch ({batch}) must be >= 1")
    if keep_raw and prior is None:
        raise InferError("--keep-raw only makes sense with --prior")
    from cvae_pms.astrometry import AstrometryError, read_astrometry
    from cvae_pms.priors import Prior, PriorError, load_prior
    try:
        prior_obj = (prior if isinstance(prior, Prior) or prior is None else load_prior(prior))
        table = read_astrometry(astrometry) if astrometry is not None else None
    except (PriorError, AstrometryError) as exc:
        raise InferError(str(exc)) from exc
    with output_locks([out, summary], log=log):
        candidates = resuming.candidates(out)
        leftovers = [c for c in candidates if c != out]
        if leftovers and not (resume or overwrite):
            raise InferError(f"{leftovers[0]}: partial results of an interrupted run of {out}: "
                             f"continue it with --resume, or start again with --overwrite")
        model = model or load_model(run_dir)
        if not model.luminosity and log and (astrometry is not None
                                             or parallax_zero_point is not None):
            log(f"{run_dir}: spectrum-only model (no luminosity channel): parallaxes are ignored")
        check, gof_note = model.predictive_check(gof_draws, poor_fit_threshold) if gof else (
            None, "")
        zp = model.zero_point_mas if parallax_zero_point is None else float(parallax_zero_point)
        plx_opts = ParallaxOptions(table, zp, float(min_parallax_over_error))
        said_ignored = [not model.luminosity and (astrometry is not None
                                                  or parallax_zero_point is not None)]
        attrs = {"run_dir": str(Path(run_dir).resolve()), "model_hash": model.hash,
                 "seed": int(seed),
                 "command_line": list(command_line or sys.argv), "cvae_pms_version": __version__,
                 "ood_threshold": float(model.ood.threshold), "ood_k": int(model.ood.k),
                 "inputs": [str(p.resolve()) for p in paths],
                 "prior": _prior_json(prior_obj), "luminosity": int(model.luminosity),
                 "parallax_zero_point_mas": zp if model.luminosity else float("nan"),
                 "min_parallax_over_error": (float(min_parallax_over_error) if model.luminosity
                                             else float("nan")),
                 "astrometry": str(Path(astrometry).resolve()) if astrometry is not None else "",
                 "gof_draws": int(check.n_draws) if check is not None else 0,
                 "gof_threshold": float(check.threshold) if check is not None else float("nan"),
                 "gof_note": gof_note}
        tmp = resuming.tmp_path(out)
        partial = resuming.partial_path(out)
        expect = {"model_hash": model.hash, "seed": int(seed)}
        try:
            source = (resuming.pick_source(candidates, n_samples, expect, attrs, keep_raw, log)
                      if resume else None)
        except resuming.ResumeError as exc:
            raise InferError(str(exc)) from None
        done: dict = {}
        seen: dict = {}
        if source is not None:
            try:
                shutil.copyfile(source, tmp)
                pf.PosteriorWriter(tmp, n_samples, resume=True, expect=expect).close()
                done, seen = resuming.done_keys(tmp)
            except (OSError, pf.PosteriorFileError) as exc:
                tmp.unlink(missing_ok=True)
                raise InferError(f"cannot resume from {source}: {exc}") from exc
            if log:
                log(f"resuming from {source}: "
                    f"{sum(len(v[1]) for v in done.values())} sources already done")
        result = InferResult(out=out, summary=Path(summary) if summary else None,
                             n_skipped=0, gof_note=gof_note)
        bar = tqdm(unit="src", desc="infer", disable=not progress, file=sys.stderr)
        try:
            with pf.PosteriorWriter(tmp, n_samples, attrs=attrs, resume=source is not None,
                                    ess=prior_obj is not None, samples_raw=keep_raw,
                                    gof=gof) as w:
                for path in paths:
                    key = os.path.abspath(path)
                    kind, keys = done.get(key, ("row", None))
                    parts = seen.setdefault(key, [])
                    counts = {"sources": 0, "failed": 0, "ood": 0, "skipped": 0}
                    reasons: dict[str, int] = {}
                    row0 = 0
                    try:
                        for xb in iter_xp(path, chunk_size=batch):
                            rows = np.arange(row0, row0 + len(xb), dtype=np.int64)
                            row0 += len(xb)
                            if keys is not None:
                                skip = np.isin(xb.source_id if kind == "id" else rows, keys)
                                counts["skipped"] += int(skip.sum())
                                if skip.any():
                                    xb, rows = xb.select(~skip), rows[~skip]
                            if len(xb) == 0:
                                continue
                            if not said_ignored[0] and log and np.isfinite(
                                    np.asarray(xb.extra.get("parallax", [np.nan]), float)).any():
                                log(f"{run_dir}: spectrum-only model (no luminosity channel): "
                                    f"the inputs' parallaxes are ignored")
                                said_ignored[0] = True
                            chunk = infer_batch(model, xb, n_samples, seed, plx_opts, prior_obj,
                                                keep_raw, check, gof_note)
                            chunk.input_row = rows
                            start = w.n
                            w.append(chunk)
                            parts.append((np.asarray(chunk.source_id, np.int64),
                                          np.arange(start, w.n), rows))
                            failed = (chunk.status & pf.FLAG_FAILED) > 0
                            for m in np.asarray(chunk.message, dtype=object)[failed]:
                                reasons[m] = reasons.get(m, 0) + 1
                            counts["sources"] += len(chunk)
                            counts["failed"] += int(failed.sum())
                            counts["ood"] += int(((chunk.status & pf.FLAG_OOD) > 0).sum())
                            result.n_no_parallax += int(
                                ((chunk.status & pf.FLAG_NO_PARALLAX) > 0).sum())
                            result.n_low_ess += int(((chunk.status & pf.FLAG_LOW_ESS) > 0).sum())
                            result.n_poor_fit += int(
                                ((chunk.status & pf.FLAG_POOR_FIT) > 0).sum())
                            bar.update(len(chunk))
                    except XPReadError as exc:
                        raise InferError(str(exc)) from exc
                    n_dup, n_ids, example = _flag_duplicates(w, parts)
                    if n_dup:
                        counts["duplicates"] = n_dup
                        result.n_duplicates += n_dup
                        _warn(log, f"{path}: {n_ids} source_id(s) occur in more than one row "
                                   f"({n_dup} rows, e.g. {example}); every such row is "
                                   f"flagged duplicate_source_id")
                    result.per_file[str(path)] = counts
                    if counts["sources"] and counts["failed"] == counts["sources"]:
                        result.unusable_files[str(path)] = "; ".join(
                            f"{m} ({c})" for m, c in sorted(reasons.items(), key=lambda x: -x[1]))
                    result.n_sources += counts["sources"]
                    result.n_failed += counts["failed"]
                    result.n_ood += counts["ood"]
                    result.n_skipped += counts["skipped"]
            os.replace(tmp, out)
        except BaseException as exc:
            bar.close()
            resuming.keep_partial(tmp, partial, leftovers, exc, log)
            raise
        bar.close()
        for old in leftovers + [partial]:   # superseded partial results
            old.unlink(missing_ok=True)
        if summary is not None:
            pf.write_summary(pf.summary_table(pf.iter_posterior(out, samples=False)), summary)
    if plots is not None:
        from cvae_pms.plots.corner_plots import plot_posterior_file

        result.plots = plot_posterior_file(out, plots, max_plots=max_plots, truth=truth)
    result.seconds = time.time() - t0
    return result


class DuplicateSourceIdWarning(UserWarning):
    """An input file lists a source_id in more than one row (rows flagged, none dropped)."""


def _warn(log: Callable[[str], None] | None, text: str) -> None:
    if log:
        log(f"warning: {text}")
    else:
        import warnings
        warnings.warn(text, DuplicateSourceIdWarning, stacklevel=3)


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


def _prior_json(prior) -> str:
    import json
    return "" if prior is None else json.dumps(prior.to_dict(), sort_keys=True)
