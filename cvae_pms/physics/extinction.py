"""Interstellar extinction k(lambda) = A_lambda / A_0 from ``dust_extinction``.

A_0 is the monochromatic extinction at 541.4 nm (the Gaia DR3 convention, about 2 % from
550 nm). Laws: ``"G23"`` (Gordon et al. 2023, ApJ 950, 86; default; 91.2 nm - 32 um) and
``"F19"`` (Fitzpatrick et al. 2019, ApJ 886, 108; used by Gaia DR3 GSP-Phot;
115 nm - 3.3 um), both with R_V = 3.1 by default.

Example
-------
>>> import numpy as np
>>> k = extinction_curve(np.array([336.0, 541.4, 1020.0]))
>>> bool(abs(k[1] - 1.0) < 1e-12 and k[0] > 1.5 and k[2] < 0.45)
True
"""
from __future__ import annotations

from functools import lru_cache

import astropy.units as u
import numpy as np
from dust_extinction.parameter_averages import F19, G23

from cvae_pms.physics.photosphere import PhysicsError

A0_WAVELENGTH_NM = 541.4
LAWS = {"G23": G23, "F19": F19}


@lru_cache(maxsize=32)
def _curve(law: str, r_v: float, wl_key: bytes) -> np.ndarray:
    wl = np.frombuffer(wl_key, dtype=np.float64)
    model = LAWS[law](Rv=r_v)
    lo_nm, hi_nm = 1e3 / model.x_range[1], 1e3 / model.x_range[0]
    if wl.min() < lo_nm or wl.max() > hi_nm:
        raise PhysicsError(f"extinction law {law}: wavelengths {wl.min():.1f}-{wl.max():.1f} nm "
                           f"outside its range {lo_nm:.1f}-{hi_nm:.1f} nm")
    a = model(np.append(wl, A0_WAVELENGTH_NM) * u.nm)
    k = np.asarray(a[:-1] / a[-1], dtype=np.float64)
    k.setflags(write=False)
    return k


def extinction_curve(wavelength_nm: np.ndarray, law: str = "G23", r_v: float = 3.1) -> np.ndarray:
    """k(lambda) = A_lambda / A_0 with A_0 at 541.4 nm, tabulated once per grid (cached).

    Args:
        wavelength_nm (ndarray): (m,) wavelengths [nm].
        law (str): ``"G23"`` or ``"F19"``.
        r_v (float): R_V = A_V / E(B-V).

    Returns:
        ndarray: (m,) read-only k values (1 at 541.4 nm).
    """
    if law not in LAWS:
        raise PhysicsError(f"extinction law {law!r} not in {sorted(LAWS)}")
    wl = np.ascontiguousarray(np.atleast_1d(wavelength_nm), dtype=np.float64)
    return _curve(law, float(r_v), wl.tobytes())


#: Spacing [R_V] of the curves that per-star R_V values are interpolated between.
R_V_STEP = 0.05
#: R_V values per-star draws may take (inside the validity range of G23 and F19).
R_V_LIMITS = (1.5, 6.5)


def check_r_v_range(r_v_range) -> tuple[float, float]:
    """``(low, high)`` as floats; :class:`PhysicsError` unless it lies in :data:`R_V_LIMITS`
    with low <= high."""
    lo, hi = (float(v) for v in r_v_range)
    if not R_V_LIMITS[0] <= lo <= hi <= R_V_LIMITS[1]:
        raise PhysicsError(f"R_V range {lo:g}..{hi:g} outside {R_V_LIMITS[0]:g}.."
                           f"{R_V_LIMITS[1]:g} (the laws' range) or low > high")
    return lo, hi


def extinction_curves(wavelength_nm: np.ndarray, law: str, r_v: np.ndarray) -> np.ndarray:
    """k(lambda) (n, m) for per-star R_V (n,): linear interpolation in R_V between curves
    tabulated every :data:`R_V_STEP` (the laws are smooth in R_V: interpolation error
    < 1e-4 in k over 336-1020 nm)."""
    r_v = np.asarray(r_v, dtype=np.float64)
    if r_v.size == 0:
        return np.zeros((0, np.size(wavelength_nm)))
    lo = np.floor(r_v.min() / R_V_STEP) * R_V_STEP
    nodes = np.round(lo + R_V_STEP * np.arange(int(np.ceil((r_v.max() - lo) / R_V_STEP)) + 2), 6)
    curves = np.stack([extinction_curve(wavelength_nm, law, float(v)) for v in nodes])
    j = np.clip(((r_v - nodes[0]) / R_V_STEP).astype(int), 0, nodes.size - 2)
    w = ((r_v - nodes[j]) / R_V_STEP)[:, None]
    return (1.0 - w) * curves[j] + w * curves[j + 1]


def apply_extinction(flux: np.ndarray, a0: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Extinguished flux: flux (n, m) times 10^(-0.4 A_0 k), A_0 (n,) [mag], k (m,) or per
    star (n, m)."""
    a0 = np.asarray(a0, dtype=np.float64).reshape(-1, 1)
    k = np.asarray(k)
    return np.asarray(flux) * 10.0 ** (-0.4 * a0 * (k[None, :] if k.ndim == 1 else k))
