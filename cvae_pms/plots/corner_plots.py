"""Per-source corner plots of posterior samples (the ``corner`` package).

Example
-------
>>> from cvae_pms.plots.corner_plots import plot_posterior_file   # doctest: +SKIP
>>> plot_posterior_file("post.h5", "plots/", max_plots=5, truth="obs_truth.csv")  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
from cvae_pms.errors import CvaePmsError

matplotlib.use("Agg")
import corner  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.table import Table  # noqa: E402

from cvae_pms import params  # noqa: E402
from cvae_pms.atomic import atomic_path  # noqa: E402
from cvae_pms.plots import plain_text  # noqa: E402
from cvae_pms.io.tables import TEXT_SUFFIXES, table_format  # noqa: E402
from cvae_pms.posterior_file import FLAG_FAILED, flag_names, iter_posterior  # noqa: E402


class TruthTableError(CvaePmsError):
    """A truth table is unreadable or lacks ``source_id`` or a parameter column."""


def read_truth(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Read a truth table (CSV/ECSV with ``source_id`` and one column per parameter name).

    Returns ``{source_id: (7,) physical values}`` (NaN where a column value is masked).
    """
    path = Path(path)
    try:
        t = Table.read(path, format=table_format(path, TEXT_SUFFIXES) or "ascii.csv")
    except Exception as exc:  # astropy raises many types for unreadable text tables
        raise TruthTableError(f"{path}: cannot read truth table ({exc})") from exc
    missing = [c for c in ("source_id", *params.NAMES) if c not in t.colnames]
    if missing:
        raise TruthTableError(f"{path}: truth table lacks column(s) {', '.join(missing)}")
    values = np.stack([np.ma.filled(np.ma.asarray(t[n], dtype=float), np.nan)
                       for n in params.NAMES], axis=1)
    return {int(s): v for s, v in zip(np.asarray(t["source_id"], dtype=np.int64), values)}


def _ranges(samples: np.ndarray) -> list[tuple[float, float]]:
    """Plot range per parameter: the sample range, widened where it is (nearly) degenerate."""
    lo, hi = samples.min(axis=0).astype(float), samples.max(axis=0).astype(float)
    pad = 1e-3 * (params.HIGH - params.LOW)
    small = (hi - lo) < pad
    lo[small] -= pad[small]
    hi[small] += pad[small]
    return list(zip(lo, hi))


def corner_plot(samples: np.ndarray, path: str | os.PathLike, title: str = "",
                truth: np.ndarray | None = None) -> Path:
    """Draw one source's posterior samples (S, 7) as a corner plot and save it to ``path``.

    Labels come from :data:`cvae_pms.params.PARAMS`; ``truth`` (7,) draws truth lines.
    Dashed lines in the 1-D panels mark the 16/50/84 percentiles. Written atomically.
    """
    samples = np.asarray(samples, dtype=np.float64)
    truths = None if truth is None else [None if not np.isfinite(v) else float(v) for v in truth]
    path = Path(path)
    with plain_text():
        fig = corner.corner(samples, labels=[p.label for p in params.PARAMS],
                            range=_ranges(samples), truths=truths, truth_color="tab:red",
                            quantiles=[0.16, 0.5, 0.84], show_titles=True, title_fmt=".3g",
                            title_kwargs={"fontsize": 9}, label_kwargs={"fontsize": 10})
        if title:
            fig.suptitle(title, fontsize=12, y=1.02)
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=80, bbox_inches="tight")
        finally:
            plt.close(fig)
    return path


def plot_posterior_file(posterior_path: str | os.PathLike, out_dir: str | os.PathLike,
                        max_plots: int = 20,
                        truth: str | os.PathLike | dict[int, np.ndarray] | None = None) -> list[Path]:
    """Corner plots ``<out_dir>/<source_id>.png`` for the first ``max_plots`` sources with samples.

    Failed sources are skipped. ``truth`` is a truth table path or a dict from
    :func:`read_truth`. Returns the written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truths = read_truth(truth) if isinstance(truth, (str, os.PathLike)) else (truth or {})
    written: list[Path] = []
    if max_plots <= 0:
        return written
    for chunk in iter_posterior(posterior_path, chunk_size=256):
        for i in np.flatnonzero((chunk.status & FLAG_FAILED) == 0):
            sid = int(chunk.source_id[i])
            flags = ",".join(flag_names(chunk.status[i]))
            title = f"Gaia DR3 {sid}" + (f"  [{flags}]" if flags else "")
            written.append(corner_plot(chunk.samples[i], out_dir / f"{sid}.png", title=title,
                                       truth=truths.get(sid)))
            if len(written) >= max_plots:
                return written
    return written
