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

The pieces: :mod:`cvae_pms.inference.sampling` (the per-source keyed sampler),
:mod:`cvae_pms.inference.model` (:class:`Model`, :func:`load_model`, :func:`cached_model`,
:class:`InferError`), :mod:`cvae_pms.inference.batch` (:func:`infer_batch`: one batch of sources to
posterior rows), :mod:`cvae_pms.inference.checks` (:func:`check_paths`, duplicated source_ids);
this module holds the pipeline :func:`infer` (paths, locks, resume, the posterior file,
summary, plots) and re-exports the public names, so
``from cvae_pms.infer import infer_batch, load_model`` keeps working.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from cvae_pms import __version__, backend

if TYPE_CHECKING:
    from cvae_pms.model.sampler import KeyedSampler
from cvae_pms import posterior_file as pf
from cvae_pms import resume as resuming
from cvae_pms.inference.batch import ParallaxOptions, infer_batch
from cvae_pms.inference.checks import DuplicateSourceIdWarning, _flag_duplicates, _warn, check_paths
from cvae_pms.inference.model import InferError, Model, cached_model, load_model, sample_sources
from cvae_pms.inference.sampling import KEYED_BATCH, keyed_sampler, keyed_samples, source_seeds

__all__ = ["KEYED_BATCH", "DuplicateSourceIdWarning", "InferError", "InferResult",
           "KeyedSampler", "Model", "ParallaxOptions", "cached_model", "check_paths", "infer",
           "infer_batch", "keyed_sampler", "keyed_samples", "load_model", "sample_sources",
           "source_seeds"]


def __getattr__(name):   # lazy: importing this module must not import Keras (backend choice)
    if name == "KeyedSampler":
        from cvae_pms.model.sampler import KeyedSampler
        return KeyedSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
                 "backend": backend.name(), "ood_threshold": float(model.ood.threshold), "ood_k": int(model.ood.k),
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


def _prior_json(prior) -> str:
    import json
    return "" if prior is None else json.dumps(prior.to_dict(), sort_keys=True)
