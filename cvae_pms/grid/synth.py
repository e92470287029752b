"""The built-in grid generator: sample the 7-D parameter box, run physics + XP, write a grid.

Parameters are drawn in the unit cube (scrambled Sobol by default, or uniform random), mapped to
physical units with :func:`cvae_pms.params.from_unit`, turned into SEDs at ``distance_pc`` by
:func:`cvae_pms.physics.sed.simulate_sed` on the PHOENIX table wavelengths, projected on the 55
BP + 55 RP coefficients by :func:`cvae_pms.xp.instrument.sed_to_coefficients` (noise free) and
streamed chunk by chunk into a grid file with :class:`cvae_pms.grid.gridfile.GridWriter`.

Example:
    >>> from cvae_pms.grid.synth import synth_grid
    >>> report = synth_grid("grid.h5", n=1000, seed=1)        # doctest: +SKIP
    >>> report.content_hash                                     # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy.stats import qmc

from cvae_pms import params as P
from cvae_pms.grid.gridfile import GridError, GridWriter
from cvae_pms.physics.accretion import AccretionSettings
from cvae_pms.physics.photosphere import (DEFAULT_CORRECTION, PhysicsError, check_correction,
                                          table_wavelength_nm)
from cvae_pms.physics.extinction import check_r_v_range
from cvae_pms.physics.sed import forward_model_meta, simulate_sed
from cvae_pms.xp.instrument import SETTINGS as OPERATOR_SETTINGS
from cvae_pms.xp.instrument import sed_to_coefficients
from cvae_pms.xp.noise import NoiseModel
from cvae_pms.errors import CvaePmsError

DESIGNS = ("sobol", "random")
EXTINCTION_LAWS = ("G23", "F19")
DEFAULT_N = 160_000
DEFAULT_CHUNK = 5000
_PACKAGES = ("cvae-pms", "numpy", "scipy", "gaiaxpy", "dust_extinction", "h5py", "astropy")


class SynthError(CvaePmsError, ValueError):
    """Bad option for grid synthesis (names the option and the value)."""


@dataclass
class SynthReport:
    """What :func:`synth_grid` did: rows, hash and time per stage (s)."""

    path: Path
    n: int
    content_hash: str
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def spectra_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def lines(self) -> list[str]:
        shares = ", ".join(f"{k} {100 * v / max(self.seconds, 1e-12):.0f} %"
                           for k, v in self.stage_seconds.items())
        return [f"wrote {self.path}: {self.n} spectra in {self.seconds:.1f} s "
                f"({self.spectra_per_s:.0f} spectra/s; {shares})",
                f"content hash {self.content_hash}"]


def check_options(n: int, seed: int, design: str, distance_pc: float, chunk: int,
                  extinction_law: str) -> None:
    """Raise :class:`SynthError` on any bad option."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SynthError(f"--n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"--seed must be a non-negative integer, got {seed!r}")
    if design not in DESIGNS:
        raise SynthError(f"--design must be one of {', '.join(DESIGNS)}, got {design!r}")
    if not (isinstance(distance_pc, (int, float)) and math.isfinite(distance_pc) and distance_pc > 0):
        raise SynthError(f"--distance-pc must be a positive number, got {distance_pc!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise SynthError(f"--chunk must be a positive integer, got {chunk!r}")
    if extinction_law not in EXTINCTION_LAWS:
        raise SynthError(f"--extinction-law must be one of {', '.join(EXTINCTION_LAWS)}, "
                         f"got {extinction_law!r}")


def sample_unit(n: int, seed: int, design: str = "sobol") -> np.ndarray:
    """(n, 7) points in [0, 1): scrambled Sobol (seeded) or uniform random."""
    if design == "sobol":
        with warnings.catch_warnings():  # balance properties need n = 2^m; any n is usable
            warnings.simplefilter("ignore", UserWarning)
            return qmc.Sobol(d=P.N_PARAMS, scramble=True, seed=seed).random(n)
    if design == "random":
        return np.random.default_rng(seed).uniform(size=(n, P.N_PARAMS))
    raise SynthError(f"unknown design {design!r} (choose from {', '.join(DESIGNS)})")


def sample_box(n: int, seed: int, design: str = "sobol") -> np.ndarray:
    """(n, 7) parameter vectors in physical units inside the box of :mod:`cvae_pms.params`."""
    return P.from_unit(sample_unit(n, seed, design))


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a synthesised grid's content."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def synth_meta(n: int, seed: int, design: str, distance_pc: float, chunk: int,
               settings: AccretionSettings, extinction_law: str,
               photosphere_correction: str | None = DEFAULT_CORRECTION,
               r_v_range: tuple[float, float] | None = None) -> dict:
    """Grid metadata of a synthesised grid (everything needed to rebuild it)."""
    wl = table_wavelength_nm()
    noise = NoiseModel.default().to_dict()
    noise.pop("fit", None)
    return {
        "source": "cvae-pms grid synth",
        "random_seed": int(seed),
        "reference_distance_pc": float(distance_pc),
        "forward_model": forward_model_meta(settings, extinction_law, 3.1, distance_pc,
                                            photosphere_correction, r_v_range),
        "design": design,
        "extinction_law": extinction_law,
        "synth": {"n": int(n), "chunk": int(chunk), "draw_nuisance": bool(settings.draw_nuisance),
                  "r_v_range": list(r_v_range) if r_v_range else None,
                  "sed_wavelength_nm": [float(wl[0]), float(wl[-1]), int(wl.size)],
                  "nuisance_seed": "numpy default_rng([seed, 1, chunk_start]) per chunk"},
        "instrument_operator": OPERATOR_SETTINGS.to_dict(),
        "noise_model_reference": noise,
        "package_versions": package_versions(),
    }


def synth_grid(out: str | Path, n: int = DEFAULT_N, seed: int = 0, design: str = "sobol",
               distance_pc: float = 10.0, chunk: int = DEFAULT_CHUNK, draw_nuisance: bool = False,
               extinction_law: str = "G23", progress: bool = True,
               photosphere_correction: str | None = DEFAULT_CORRECTION,
               r_v_range: tuple[float, float] | None = None) -> SynthReport:
    """Synthesise a grid of noise-free XP coefficients and write it to ``out``.

    Args:
        out: output grid file (.h5); written atomically (no file on failure).
        n: number of parameter vectors.
        seed: random seed (Sobol scrambling / uniform draws / nuisance draws).
        design: ``"sobol"`` (scrambled) or ``"random"``.
        distance_pc: reference distance of the absolute fluxes, pc.
        chunk: rows per SED/projection/write chunk (memory ~ chunk x 200 x 8 B x a few).
        draw_nuisance: draw the slab temperature and optical depth per star.
        r_v_range: draw R_V per star uniformly in (low, high) (else R_V = 3.1); the draws
            are nuisance parameters, not stored per row (reproducible from ``seed``).
        extinction_law: ``"G23"`` or ``"F19"`` (R_V = 3.1).
        progress: show a tqdm progress bar.
        photosphere_correction: empirical photosphere correction from real stars (default),
            or None / "none" for the plain PHOENIX table.

    Returns:
        :class:`SynthReport`.

    Raises:
        SynthError: a bad option. GridError / PhysicsError: writing or physics failed.
    """
    from tqdm import tqdm

    check_options(n, seed, design, distance_pc, chunk, extinction_law)
    try:
        photosphere_correction = check_correction(photosphere_correction)
    except PhysicsError as exc:
        raise SynthError(f"--photosphere-correction: {exc}") from exc
    settings = AccretionSettings(draw_nuisance=draw_nuisance)
    wl = table_wavelength_nm()
    t0 = time.perf_counter()
    theta = sample_box(n, seed, design)
    stages = {"sampling": time.perf_counter() - t0, "sed": 0.0, "projection": 0.0, "writing": 0.0}
    if r_v_range is not None:
        try:
            r_v_range = check_r_v_range(r_v_range)
        except PhysicsError as exc:
            raise SynthError(f"--r-v-range: {exc}") from exc
    drawn = draw_nuisance or r_v_range is not None
    meta = synth_meta(n, seed, design, distance_pc, chunk, settings, extinction_law,
                      photosphere_correction, r_v_range)
    with GridWriter(out, meta, expected_rows=n) as writer:
        nuisance: dict[str, list[np.ndarray]] = {
            k: [] for k in ("t_slab_k", "tau_300") * draw_nuisance
            + ("r_v",) * (r_v_range is not None)}
        for start in tqdm(range(0, n, chunk), desc="grid synth", unit="chunk",
                          total=math.ceil(n / chunk), disable=not progress):
            block = theta[start:start + chunk]
            t = time.perf_counter()
            rng = np.random.default_rng([seed, 1, start]) if drawn else None
            sed = simulate_sed(block, wl, distance_pc, settings, rng, extinction_law,
                               photosphere_correction=photosphere_correction,
                               r_v_range=r_v_range)
            t2 = time.perf_counter()
            bp, rp = sed_to_coefficients(sed.flux_w_m2_nm, wl)
            t3 = time.perf_counter()
            writer.append(block, bp, rp)
            t4 = time.perf_counter()
            stages["sed"] += t2 - t
            stages["projection"] += t3 - t2
            stages["writing"] += t4 - t3
            for k, v in nuisance.items():
                v.append(getattr(sed, k))
        if drawn:
            writer.meta["synth"]["nuisance_summary"] = {
                k: [float(np.min(np.concatenate(v))), float(np.max(np.concatenate(v)))]
                for k, v in nuisance.items()}
        t = time.perf_counter()
    stages["writing"] += time.perf_counter() - t
    return SynthReport(Path(out), n, writer.content_hash, time.perf_counter() - t0, stages)


__all__ = ["DESIGNS", "EXTINCTION_LAWS", "SynthError", "SynthReport", "check_options", "sample_box",
           "sample_unit", "synth_grid", "synth_meta", "GridError", "PhysicsError"]
