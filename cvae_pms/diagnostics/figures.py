"""Figures of the diagnostics, drawn only from numbers already computed (and saved).

Every function takes the result arrays/dataclasses of :mod:`.accuracy`, :mod:`.pp`,
:mod:`.sbc`, :mod:`.tarp`, :mod:`.divergence` or :mod:`.crosscheck` and a path, and writes
one PNG atomically (matplotlib Agg backend, no LaTeX). Labels come from
:mod:`cvae_pms.params`.
"""
from __future__ import annotations

import functools
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.table import Table  # noqa: E402

from cvae_pms import params  # noqa: E402

from .pp import PPResult  # noqa: E402
from .result_files import save_figure  # noqa: E402
from .sbc import SBCResult  # noqa: E402
from .tarp import TARPResult  # noqa: E402


def _plain_text(draw):
    """Draw under :func:`cvae_pms.plots.plain_text` (no LaTeX; see there)."""
    from cvae_pms.plots import plain_text

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plain_text():
            return draw(*args, **kwargs)

    return wrapper


def _panels(n: int, size: float = 3.0):
    ncol = min(4, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(size * ncol, size * nrow), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


@_plain_text
def accuracy_figure(truth: np.ndarray, median: np.ndarray, p16: np.ndarray, p84: np.ndarray,
                    path: str | os.PathLike, title: str = "", max_points: int = 1000) -> None:
    """Posterior median (16-84 % bars) vs truth, one panel per parameter, 1:1 line."""
    n = truth.shape[0]
    sel = np.arange(n) if n <= max_points else np.random.default_rng(0).choice(
        n, max_points, replace=False)
    fig, axes = _panels(params.N_PARAMS)
    for k, p in enumerate(params.PARAMS):
        ax = axes[k]
        t, m = truth[sel, k], median[sel, k]
        err = np.stack([m - p16[sel, k], p84[sel, k] - m]).clip(min=0)
        ax.errorbar(t, m, yerr=err, fmt=".", ms=2, lw=0.4, alpha=0.5, color="C0")
        ax.plot([p.low, p.high], [p.low, p.high], "k--", lw=0.8)
        ax.set_xlim(p.low, p.high)
        ax.set_ylim(p.low, p.high)
        ax.set_xlabel(f"true {p.label}")
        ax.set_ylabel(f"predicted {p.label}")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


@_plain_text
def residuals_figure(truth: np.ndarray, median: np.ndarray, scatter: np.ndarray,
                     path: str | os.PathLike, title: str = "") -> None:
    """Histograms of posterior median - truth per parameter, robust scatter in the title."""
    fig, axes = _panels(params.N_PARAMS)
    for k, p in enumerate(params.PARAMS):
        ax = axes[k]
        r = median[:, k] - truth[:, k]
        lim = max(5 * scatter[k], 1e-12) if np.isfinite(scatter[k]) else None
        ax.hist(r, bins=40, range=(-lim, lim) if lim else None, color="C0", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"median - truth {p.label}")
        ax.set_title(f"robust sigma {scatter[k]:.3g}", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


@_plain_text
def pp_figure(r: PPResult, path: str | os.PathLike, title: str = "") -> None:
    """1-D P-P curves of all parameters, 95 % binomial band, KS p-values in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.fill_between(r.levels, r.band_low, r.band_high, color="0.85", label="95 % band")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for k, p in enumerate(params.PARAMS[: r.ecdf.shape[1]]):
        ax.plot(r.levels, r.ecdf[:, k], lw=1.2, label=f"{p.symbol} (p = {r.pvalue[k]:.3f})")
    ax.set_xlabel("credible level")
    ax.set_ylabel("fraction of truths below it")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or f"P-P, {r.n_sources} sources")
    fig.tight_layout()
    save_figure(fig, path)


@_plain_text
def sbc_figure(r: SBCResult, path: str | os.PathLike, title: str = "") -> None:
    """SBC rank histograms per parameter with the uniform expectation and its band."""
    fig, axes = _panels(r.counts.shape[1])
    edges = r.edges
    centres = 0.5 * (edges[1:] + edges[:-1])
    for k, p in enumerate(params.PARAMS[: r.counts.shape[1]]):
        ax = axes[k]
        ax.fill_between(edges, np.append(r.band_low, r.band_low[-1]),
                        np.append(r.band_high, r.band_high[-1]), step="post", color="0.85")
        ax.bar(centres, r.counts[:, k], width=np.diff(edges), color="C0", alpha=0.8)
        ax.stairs(r.expected, edges, color="k", lw=0.8)
        ax.set_xlabel(f"rank of true {p.symbol}")
        ax.set_title(f"chi2 p = {r.pvalue[k]:.3f}", fontsize=9)
    fig.suptitle(title or f"SBC ranks ({int(r.band_confidence * 100)} % band)")
    fig.tight_layout()
    save_figure(fig, path)


@_plain_text
def tarp_figure(r: TARPResult, path: str | os.PathLike, title: str = "") -> None:
    """TARP expected coverage vs credibility level with the 95 % band of a calibrated model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.fill_between(r.alpha, r.band_low, r.band_high, color="0.85", label="95 % band")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(r.alpha, r.ecp, "C3", lw=1.5, label=f"TARP (max dev {r.max_deviation:.3f})")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(title or f"TARP, {r.f.shape[0]} sources")
    fig.tight_layout()
    save_figure(fig, path)


@_plain_text
def js_figure(js_cvae: np.ndarray, js_floor: np.ndarray, path: str | os.PathLike,
              title: str = "") -> None:
    """1-D Jensen-Shannon divergence per parameter and source (bits): CVAE vs emcee and the
    emcee-vs-emcee floor, log scale."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(js_cvae.shape[1])
    for off, vals, lab, c in ((-0.15, js_cvae, "CVAE vs emcee", "C0"),
                              (0.15, js_floor, "emcee vs emcee", "0.4")):
        for k in x:
            v = np.clip(vals[:, k], 1e-5, None)
            ax.scatter(np.full(v.size, k + off), v, s=10, color=c,
                       label=lab if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(x, [p.symbol for p in params.PARAMS[: js_cvae.shape[1]]])
    ax.set_ylabel("JS divergence [bits]")
    ax.legend(fontsize=9)
    ax.set_title(title or "1-D Jensen-Shannon divergence per source")
    fig.tight_layout()
    save_figure(fig, path)


@_plain_text
def crosscheck_figure(per_source: Table, names: tuple[str, ...], path: str | os.PathLike,
                      title: str = "") -> None:
    """Our posterior median (16-84 % bars) vs the literature value (its error bars), one
    panel per parameter present, 1:1 line."""
    fig, axes = _panels(max(len(names), 1), size=3.2)
    for ax, name in zip(axes, names):
        p = params.PARAMS[params.INDEX[name]]
        lit = np.asarray(per_source[f"{name}_lit"], dtype=float)
        med = np.asarray(per_source[f"{name}_median"], dtype=float)
        ok = np.isfinite(lit) & np.isfinite(med)
        if not ok.any():
            ax.set_title(f"{p.symbol}: no values", fontsize=9)
            continue
        lo = np.asarray(per_source[f"{name}_p16"], dtype=float)[ok]
        hi = np.asarray(per_source[f"{name}_p84"], dtype=float)[ok]
        le = np.nan_to_num(np.asarray(per_source[f"{name}_lit_err"], dtype=float)[ok])
        yerr = np.stack([med[ok] - lo, hi - med[ok]]).clip(min=0)
        ax.errorbar(lit[ok], med[ok], xerr=le, yerr=yerr, fmt="o", ms=3, lw=0.7)
        span = np.concatenate([lit[ok], lo, hi])
        a, b = np.nanmin(span), np.nanmax(span)
        pad = 0.05 * (b - a) if b > a else 1.0
        ax.plot([a - pad, b + pad], [a - pad, b + pad], "k--", lw=0.8)
        ax.set_xlabel(f"literature {p.label}")
        ax.set_ylabel(f"cvae-pms {p.label}")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
