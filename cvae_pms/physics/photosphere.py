"""PHOENIX-ACES photospheric surface flux (Husser et al. 2013), interpolated in (Teff, log g, [M/H]).

The package reads only the derived table ``cvae_pms/data/phoenix_aces.npz`` built by
``scripts/build_phoenix_table.py`` (see ``cvae_pms/data/PHOENIX_README.md``): log10 of the
surface flux F_lambda [W m^-2 nm^-1] on 196 PHOENIX bins (289-1113 nm, R ~ 145), Teff
2900-12000 K (100 K steps to 7000 K, 200 K above), log g 2.0-5.5 (0.5), [M/H] -1..+1 (0.5).

Example
-------
>>> import numpy as np
>>> from cvae_pms.physics.photosphere import surface_flux
>>> f = surface_flux(np.array([5800.0]), np.array([4.44]), np.array([0.0]), np.array([550.0]))
>>> f.shape
(1, 1)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from cvae_pms.errors import CvaePmsError

TABLE_FILE = "phoenix_aces.npz"
#: Empirical photosphere corrections shipped as package data: name -> file.
CORRECTIONS = {"apogee-dr17-v1": "photosphere_correction.npz"}
#: The correction every forward-model call applies unless told otherwise (None: plain PHOENIX).
DEFAULT_CORRECTION: str | None = "apogee-dr17-v1"


class PhysicsError(CvaePmsError, ValueError):
    """A forward-model input the physics cannot handle (the message names the star and value)."""


class OutsideTableError(PhysicsError):
    """A parameter vector or wavelength lies outside the photosphere table."""


@dataclass(frozen=True)
class PhotosphereTable:
    """The shipped PHOENIX table: nodes, wavelengths and log10 surface flux [W m^-2 nm^-1]."""

    teff_k: np.ndarray          # (nT,)
    logg: np.ndarray            # (nG,)
    mh: np.ndarray              # (nM,)
    wavelength_nm: np.ndarray   # (nL,)
    log_flux: np.ndarray        # (nT, nG, nM, nL) float32
    bolometric_ratio: np.ndarray  # (nT, nG, nM): full-range integral / sigma T^4
    outside_flux_w_m2: np.ndarray  # (nT, nG, nM): integral outside the wavelength range
    filled: np.ndarray          # (nT, nG, nM) bool: node copied from the nearest log g
    meta: dict

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Node range per axis: ``{"teff": (lo, hi), "logg": ..., "mh": ...}``."""
        return {"teff": (float(self.teff_k[0]), float(self.teff_k[-1])),
                "logg": (float(self.logg[0]), float(self.logg[-1])),
                "mh": (float(self.mh[0]), float(self.mh[-1]))}


def check_correction(correction: str | None) -> str | None:
    """Validate a correction name ("none"/None: plain PHOENIX); returns the canonical value."""
    if correction is None or str(correction).lower() == "none":
        return None
    if correction not in CORRECTIONS:
        raise PhysicsError(f"photosphere correction {correction!r} not in "
                           f"{sorted(CORRECTIONS) + ['none']}")
    return correction


@lru_cache(maxsize=4)
def load_correction(correction: str) -> dict:
    """The arrays of a shipped photosphere correction (see ``cvae_pms/realdata/correction.py``):
    ``log10_correction`` (nT, nG, nM, nL) on the table nodes, ``support`` (nT, nG, nM) and
    ``meta`` (provenance, JSON)."""
    ref = resources.files("cvae_pms").joinpath("data", CORRECTIONS[correction])
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise PhysicsError(f"{path}: photosphere correction {correction!r} missing; rebuild "
                               "it with scripts/calibrate_forward_model.py")
        with np.load(path, allow_pickle=False) as d:
            out = {k: d[k] for k in d.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


@lru_cache(maxsize=4)
def load_table(correction: str | None = None) -> PhotosphereTable:
    """Read the package's photosphere table once (cached), with an empirical correction
    (log10 flux added node by node) when ``correction`` names one; None: plain PHOENIX."""
    correction = check_correction(correction)
    if correction is not None:
        base = load_table(None)
        corr = load_correction(correction)
        log_flux = (base.log_flux + corr["log10_correction"]).astype(np.float32)
        log_flux.setflags(write=False)
        meta = {**base.meta, "correction": {"name": correction, **corr["meta"]}}
        return PhotosphereTable(base.teff_k, base.logg, base.mh, base.wavelength_nm, log_flux,
                                base.bolometric_ratio, base.outside_flux_w_m2, base.filled, meta)
    ref = resources.files("cvae_pms").joinpath("data", TABLE_FILE)
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise PhysicsError(f"{path}: photosphere table missing; rebuild it with "
                               "scripts/build_phoenix_table.py")
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    for v in arrays.values():
        v.setflags(write=False)
    return PhotosphereTable(
        teff_k=arrays["teff_k"], logg=arrays["logg"], mh=arrays["mh"],
        wavelength_nm=arrays["wavelength_nm"], log_flux=arrays["log_flux"],
        bolometric_ratio=arrays["bolometric_ratio"],
        outside_flux_w_m2=arrays["outside_flux_w_m2"], filled=arrays["filled"],
        meta=json.loads(str(arrays["meta"])),
    )


def table_wavelength_nm() -> np.ndarray:
    """The table's native wavelength bins (centres) [nm], 289-1113 nm; read-only."""
    return load_table().wavelength_nm


def in_table(teff: np.ndarray, logg: np.ndarray, mh: np.ndarray) -> np.ndarray:
    """Boolean mask (n,): True where (Teff [K], log g [dex], [M/H] [dex]) lies inside the table."""
    b = load_table().bounds
    teff, logg, mh = (np.asarray(a, dtype=np.float64) for a in (teff, logg, mh))
    with np.errstate(invalid="ignore"):
        return ((teff >= b["teff"][0]) & (teff <= b["teff"][1])
                & (logg >= b["logg"][0]) & (logg <= b["logg"][1])
                & (mh >= b["mh"][0]) & (mh <= b["mh"][1]))


def _axis_weights(nodes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and fractional weight of the upper node for values inside ``nodes``."""
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
    w = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
    return i, w


@lru_cache(maxsize=16)
def _wavelength_weights(wl_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    wl = np.frombuffer(wl_key, dtype=np.float64)
    return _axis_weights(table_wavelength_nm(), wl)


def check_in_table(teff: np.ndarray, logg: np.ndarray, mh: np.ndarray, what: str = "star") -> None:
    """Raise :class:`OutsideTableError` naming the first star (row) outside the table."""
    ok = in_table(teff, logg, mh)
    if not ok.all():
        b = load_table().bounds
        j = int(np.flatnonzero(~ok)[0])
        raise OutsideTableError(
            f"{what} {j}: (teff={float(np.ravel(teff)[j])!r} K, logg={float(np.ravel(logg)[j])!r}, "
            f"mh={float(np.ravel(mh)[j])!r}) outside the PHOENIX table "
            f"(teff {b['teff'][0]:.0f}-{b['teff'][1]:.0f} K, logg {b['logg'][0]}-{b['logg'][1]}, "
            f"mh {b['mh'][0]}-{b['mh'][1]}); {int((~ok).sum())} of {ok.size} outside")


def interpolate_nodes(values: np.ndarray, teff: np.ndarray, logg: np.ndarray,
                      mh: np.ndarray) -> np.ndarray:
    """Multilinear interpolation of node values (nT, nG, nM, m) at (n,) stars -> (n, m) float64.

    The stars must lie inside the table (:func:`check_in_table`); ``values`` is indexed like
    :attr:`PhotosphereTable.log_flux` (e.g. the log flux or an empirical correction).
    """
    tab = load_table()
    it, wt = _axis_weights(tab.teff_k, teff)
    ig, wg = _axis_weights(tab.logg, logg)
    im, wm = _axis_weights(tab.mh, mh)
    out = np.zeros((np.size(teff), values.shape[-1]), dtype=np.float64)
    for dt, ft in ((0, 1.0 - wt), (1, wt)):
        for dg, fg in ((0, 1.0 - wg), (1, wg)):
            for dm, fm in ((0, 1.0 - wm), (1, wm)):
                out += (ft * fg * fm)[:, None] * values[it + dt, ig + dg, im + dm]
    return out


def log_surface_flux(teff: np.ndarray, logg: np.ndarray, mh: np.ndarray,
                     wavelength_nm: np.ndarray | None = None,
                     correction: str | None = DEFAULT_CORRECTION) -> np.ndarray:
    """log10 surface flux [W m^-2 nm^-1], (n, m); see :func:`surface_flux`."""
    tab = load_table(correction)
    teff, logg, mh = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (teff, logg, mh))
    if not (teff.shape == logg.shape == mh.shape) or teff.ndim != 1:
        raise PhysicsError(f"teff, logg, mh must be 1-d of equal length, got shapes "
                           f"{teff.shape}, {logg.shape}, {mh.shape}")
    check_in_table(teff, logg, mh)
    out = interpolate_nodes(tab.log_flux, teff, logg, mh)
    if wavelength_nm is None:
        return out
    wl = np.ascontiguousarray(np.atleast_1d(wavelength_nm), dtype=np.float64)
    lo, hi = float(tab.wavelength_nm[0]), float(tab.wavelength_nm[-1])
    if wl.ndim != 1 or wl.min() < lo or wl.max() > hi:
        raise OutsideTableError(f"wavelengths {wl.min():.2f}-{wl.max():.2f} nm outside the "
                                f"photosphere table {lo:.2f}-{hi:.2f} nm")
    iw, ww = _wavelength_weights(wl.tobytes())
    return out[:, iw] * (1.0 - ww) + out[:, iw + 1] * ww


def surface_flux(teff: np.ndarray, logg: np.ndarray, mh: np.ndarray,
                 wavelength_nm: np.ndarray | None = None,
                 correction: str | None = DEFAULT_CORRECTION) -> np.ndarray:
    """PHOENIX-ACES surface flux F_lambda [W m^-2 nm^-1] at the stellar surface.

    Multilinear interpolation of log10 F_lambda in (Teff, log g, [M/H]) on the table's
    rectilinear grid, vectorised over stars; then linear in wavelength (of log flux) if
    ``wavelength_nm`` is given.

    Args:
        teff (ndarray): (n,) effective temperatures [K], 2900-12000.
        logg (ndarray): (n,) surface gravities log10(g / cm s^-2), 2.0-5.5.
        mh (ndarray): (n,) metallicities [M/H] [dex], -1.0..+1.0.
        wavelength_nm (ndarray | None): (m,) wavelengths [nm] inside the table range
            (289-1113 nm); None for the native bins :func:`table_wavelength_nm`.
        correction (str | None): empirical correction learned from real stars
            (:data:`DEFAULT_CORRECTION`; it fades to zero outside the calibration stars'
            coverage), or None for the plain PHOENIX table.

    Returns:
        ndarray: (n, m) surface flux [W m^-2 nm^-1] (float64).

    Raises:
        OutsideTableError: a star or wavelength outside the table (the message names the
            first offending row).
    """
    return 10.0 ** log_surface_flux(teff, logg, mh, wavelength_nm, correction)
