"""Figures of a grid: calibrated XP flux vs wavelength as one parameter varies.

The other six parameters sit at a reference point (:data:`REFERENCE`). For a grid made by
``grid synth`` the curves come from the forward model with the grid's stored settings (accretion
settings, extinction law, distance); for any other grid they are the nearest grid rows (in the
[0, 1]-scaled parameter space) and the legend gives the values those rows really have. The curves
are written first as numbers (an ECSV table beside the figure), then drawn.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvae_pms import params as P
from cvae_pms.atomic import atomic_path
from cvae_pms.grid.gridfile import GridError, open_grid
from cvae_pms.xp.sampling import SAMPLING_NM, sampled_flux
from cvae_pms.errors import CvaePmsError

#: Reference point for the sweeps (physical units, params.NAMES order).
REFERENCE = {"teff": 4000.0, "logg": 4.0, "mh": 0.0, "log_mdot": -8.0, "ff": 0.05, "mass": 0.6, "a0": 1.0}
BALMER_NM = 364.6
PASCHEN_NM = 820.4
SYNTH_SOURCE = "cvae-pms grid synth"


class PlotError(CvaePmsError, ValueError):
    """Bad plot request (unknown parameter, unusable grid or output path)."""


@dataclass
class Sweep:
    """Curves of one sweep: ``flux`` (k, 343) W m^-2 nm^-1 on ``wavelength_nm``; ``theta`` (k, 7)."""

    name: str
    theta: np.ndarray
    flux: np.ndarray
    method: str
    wavelength_nm: np.ndarray = field(default_factory=lambda: SAMPLING_NM.copy())

    def to_table(self):
        """Astropy table: wavelength_nm plus one flux column per curve, the values in meta."""
        from astropy.table import Table

        t = Table()
        t["wavelength_nm"] = self.wavelength_nm
        for j, row in enumerate(self.theta):
            t[f"flux_{j}"] = self.flux[j]
            t[f"flux_{j}"].unit = "W m-2 nm-1"
            t[f"flux_{j}"].description = ", ".join(f"{n}={v:.6g}" for n, v in zip(P.NAMES, row))
        t.meta.update({"vary": self.name, "method": self.method,
                       "theta": self.theta.tolist(), "names": list(P.NAMES)})
        return t


def sweep_values(name: str, k: int = 6) -> np.ndarray:
    """``k`` values evenly across the bounds of parameter ``name``."""
    if name not in P.NAMES:
        raise PlotError(f"unknown parameter {name!r}; choose from {', '.join(P.NAMES)}")
    j = P.NAMES.index(name)
    return np.linspace(P.LOW[j], P.HIGH[j], k)


def sweep_theta(name: str, k: int = 6) -> np.ndarray:
    """(k, 7): the reference point with ``name`` stepped across its range."""
    theta = np.tile([REFERENCE[n] for n in P.NAMES], (k, 1)).astype(float)
    theta[:, P.NAMES.index(name)] = sweep_values(name, k)
    return theta


def _forward_sweep(meta: dict, theta: np.ndarray) -> np.ndarray:
    from cvae_pms.physics.accretion import AccretionSettings
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import sed_flux
    from cvae_pms.xp.instrument import sed_to_coefficients

    fm = meta.get("forward_model") or {}
    acc = dict(fm.get("accretion") or {})
    acc["draw_nuisance"] = False  # the sweep uses the fixed slab values
    settings = AccretionSettings.from_dict(acc)
    law = (fm.get("extinction") or {}).get("law", meta.get("extinction_law", "G23"))
    distance = float(meta.get("reference_distance_pc", 10.0))
    wl = table_wavelength_nm()
    from cvae_pms.physics.sed import correction_from_meta
    bp, rp = sed_to_coefficients(sed_flux(theta, wl, distance, settings, extinction_law=law,
                                          photosphere_correction=correction_from_meta(fm)), wl)
    return sampled_flux(bp, rp)


def parameter_sweep(grid_path: str | os.PathLike, name: str, k: int = 6) -> Sweep:
    """Flux curves of grid ``grid_path`` as ``name`` varies (see module doc)."""
    theta = sweep_theta(name, k)
    with open_grid(grid_path) as grid:
        meta = grid.meta
        if meta.get("source") == SYNTH_SOURCE:
            return Sweep(name, theta, _forward_sweep(meta, theta), "forward model (grid settings)")
        unit = P.to_unit(grid.params)
        target = P.to_unit(theta)
        rows = np.array([int(np.argmin(((unit - t) ** 2).sum(axis=1))) for t in target])
        rows = np.unique(rows)  # a coarse grid may map several targets to one row
        p, bp, rp = grid.read(rows)
        if grid.has_sampled_flux:
            flux = grid.sampled_flux(rows)
        else:
            flux = sampled_flux(bp, rp)
    order = np.argsort(p[:, P.NAMES.index(name)])
    return Sweep(name, p[order], flux[order], "nearest grid rows")


def draw_sweep(sweep: Sweep, out_png: str | os.PathLike) -> None:
    """Draw a sweep to ``out_png`` (Agg backend), Balmer and Paschen jumps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cvae_pms.plots import plain_text
    with plain_text():
        _draw(plt, sweep, Path(out_png))


def _draw(plt, sweep: Sweep, out_png: Path) -> None:
    par = P.PARAMS[P.NAMES.index(sweep.name)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(sweep.theta)))
    j = P.NAMES.index(sweep.name)
    for row, flux, colour in zip(sweep.theta, sweep.flux, colours):
        ax.plot(sweep.wavelength_nm, flux, color=colour, lw=1.2,
                label=f"{sweep.name} = {row[j]:.4g}{' ' + par.unit if par.unit else ''}")
    for wl, label in ((BALMER_NM, "Balmer 364.6 nm"), (PASCHEN_NM, "Paschen 820.4 nm")):
        ax.axvline(wl, color="0.4", ls="--", lw=0.8)
        ax.text(wl, 0.98, f" {label}", transform=ax.get_xaxis_transform(), va="top", fontsize=7,
                color="0.3")
    others = ", ".join(f"{n} {REFERENCE[n]:g}" for n in P.NAMES if n != sweep.name)
    ax.set_title(f"XP flux vs {sweep.name} ({sweep.method})\nothers: {others}", fontsize=9)
    # flux spans decades across a sweep: log scale (non-positive calibrated flux, possible at
    # 336-360 nm for cool or reddened stars, is left out of the drawing, not of the .ecsv)
    if np.any(sweep.flux > 0):
        ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("calibrated XP flux (W m$^{-2}$ nm$^{-1}$)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def plot_parameter(grid_path: str | os.PathLike, name: str, out_png: str | os.PathLike,
                   k: int = 6) -> Path:
    """Sweep ``name`` on ``grid_path``; write ``out_png`` and its numbers ``<stem>.ecsv``."""
    out_png = Path(out_png)
    if not out_png.parent.is_dir():
        raise PlotError(f"{out_png}: output directory {out_png.parent} does not exist")
    sweep = parameter_sweep(grid_path, name, k)
    table_path = out_png.with_suffix(".ecsv")
    with atomic_path(table_path) as tmp:
        sweep.to_table().write(tmp, format="ascii.ecsv", overwrite=True)
    draw_sweep(sweep, out_png)
    return out_png


def plot_all(grid_path: str | os.PathLike, out_dir: str | os.PathLike, k: int = 6) -> list[Path]:
    """One figure per parameter, ``<out_dir>/sweep_<name>.png`` (+ .ecsv)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_parameter(grid_path, name, out_dir / f"sweep_{name}.png", k) for name in P.NAMES]


__all__ = ["REFERENCE", "BALMER_NM", "PASCHEN_NM", "PlotError", "Sweep", "sweep_values",
           "sweep_theta", "parameter_sweep", "draw_sweep", "plot_parameter", "plot_all", "GridError"]
