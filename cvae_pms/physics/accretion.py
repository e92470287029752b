"""Magnetospheric accretion: heated photospheric spot plus hydrogen slab.

Calvet & Gullbring (1998, ApJ 509, 802); Hartmann, Herczeg & Calvet (2016, ARA&A 54, 135);
slab as in Manara et al. (2013, A&A 558, A114). SI units inside; the stellar parameters
come in the project's units (Teff [K], log g [cgs dex], Mdot [Msun/yr], M [Msun]).

- Radius R = sqrt(G M / g); L_acc = (G M Mdot / R) (1 - R / R_in), R_in = ``r_in_over_r`` R.
- Energy flux into the columns F = L_acc / (4 pi R^2 f), f floored at ``ff_floor``
  (f = 0 would make F infinite; the floor only enters F, the flux weights use f itself).
- ``heating_fraction`` (3/4) of F heats the photosphere under the column:
  sigma T_hp^4 = sigma Teff^4 + 3/4 F. The spot emits the model atmosphere at T_hp (same
  log g, [M/H]) while T_hp <= the table's top (12,000 K); above it pi B_lambda(T_hp) times
  the wavelength-dependent ratio atmosphere / pi B_lambda at the table top, so the spot
  spectrum is continuous in T_hp (``spot_model="blackbody"`` uses pi B_lambda(T_hp) at all
  T_hp, for comparison only).
- The rest, F/4, leaves as the pre-shock hydrogen slab per unit spot area:
  S_lambda = pi B_lambda(T_slab) (1 - exp(-tau_lambda)), tau from hydrogen bound-free
  (levels n = 1..12, Kramers cross-sections ~ n^-5 nu^-3 above each edge, populations
  ~ n^2 exp(-(chi_0 - chi_n)/kT)) plus free-free, times (1 - exp(-h nu / kT)), Gaunt
  factors 1, scaled to tau(300 nm) = ``tau_300``; normalised so its integral over all
  wavelengths (10 nm - 100 um plus a power-law tail) is F/4. Edges at vacuum
  lambda_n = n^2 hc/chi_0 (Balmer 364.7 nm, Paschen 820.6 nm).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from astropy import constants as const
from astropy import units as u

from cvae_pms.physics.photosphere import PhysicsError, load_table, surface_flux

G_SI = const.G.si.value
M_SUN_KG = const.M_sun.si.value
YEAR_S = u.yr.to(u.s)
SIGMA_SB = const.sigma_sb.si.value
H_SI = const.h.si.value
C_SI = const.c.si.value
K_B_SI = const.k_B.si.value
R_SUN_M = const.R_sun.si.value
CHI0_J = 13.598434 * u.eV.to(u.J)        # hydrogen ionisation energy
LAMBDA_LYMAN_NM = H_SI * C_SI / CHI0_J * 1e9  # 91.18 nm, Lyman edge (vacuum)
N_LEVELS = 12
SPOT_MODELS = ("photosphere", "blackbody")


@dataclass(frozen=True)
class AccretionSettings:
    """Accretion-model settings; every default is here and goes into grid metadata.

    Attributes:
        t_slab_k: slab temperature [K] when not drawn.
        tau_300: slab optical depth at 300 nm when not drawn.
        r_in_over_r: magnetospheric truncation radius R_in / R.
        ff_floor: floor on the filling factor inside F = L_acc / (4 pi R^2 f).
        heating_fraction: fraction of F that heats the photospheric spot (rest: slab).
        spot_model: ``"photosphere"`` (model atmosphere at T_hp) or ``"blackbody"``.
        t_slab_range: (lo, hi) [K] for per-star uniform draws of T_slab.
        tau_300_range: (lo, hi) for per-star log-uniform draws of tau_300.
        draw_nuisance: draw T_slab and tau_300 per star (needs an ``rng``).
    """

    t_slab_k: float = 9000.0
    tau_300: float = 1.0
    r_in_over_r: float = 5.0
    ff_floor: float = 1e-4
    heating_fraction: float = 0.75
    spot_model: str = "photosphere"
    t_slab_range: tuple[float, float] = field(default=(8000.0, 11000.0))
    tau_300_range: tuple[float, float] = field(default=(0.01, 5.0))
    draw_nuisance: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.spot_model not in SPOT_MODELS:
            problems.append(f"spot_model {self.spot_model!r} not in {SPOT_MODELS}")
        if not self.t_slab_k > 0 or not self.tau_300 > 0:
            problems.append(f"t_slab_k {self.t_slab_k} and tau_300 {self.tau_300} must be > 0")
        if not self.r_in_over_r > 1:
            problems.append(f"r_in_over_r {self.r_in_over_r} must be > 1")
        if not 0 < self.ff_floor < 1:
            problems.append(f"ff_floor {self.ff_floor} must be in (0, 1)")
        if not 0 <= self.heating_fraction <= 1:
            problems.append(f"heating_fraction {self.heating_fraction} must be in [0, 1]")
        for name in ("t_slab_range", "tau_300_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                problems.append(f"{name} {(lo, hi)} must satisfy 0 < lo <= hi")
        if problems:
            raise PhysicsError("AccretionSettings: " + "; ".join(problems))
        object.__setattr__(self, "t_slab_range", tuple(map(float, self.t_slab_range)))
        object.__setattr__(self, "tau_300_range", tuple(map(float, self.tau_300_range)))

    def to_dict(self) -> dict:
        """JSON-serialisable settings (plus the draw distributions) for grid metadata."""
        d = asdict(self)
        d["t_slab_range"] = list(self.t_slab_range)
        d["tau_300_range"] = list(self.tau_300_range)
        d["t_slab_draw"] = "uniform"
        d["tau_300_draw"] = "log-uniform"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AccretionSettings":
        """Inverse of :meth:`to_dict` (extra descriptive keys are ignored)."""
        keys = cls.__dataclass_fields__.keys()
        kw = {k: d[k] for k in keys if k in d}
        for k in ("t_slab_range", "tau_300_range"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def slab_parameters(self, n: int, rng: np.random.Generator | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(T_slab [K], tau_300) per star, (n,) each: fixed values, or draws when ``draw_nuisance``."""
        if not self.draw_nuisance:
            return np.full(n, self.t_slab_k), np.full(n, self.tau_300)
        if rng is None:
            raise PhysicsError("AccretionSettings.draw_nuisance needs a numpy Generator (rng)")
        t = rng.uniform(*self.t_slab_range, size=n)
        lo, hi = np.log(self.tau_300_range)
        tau = np.exp(rng.uniform(lo, hi, size=n))
        return t, tau


def stellar_radius_m(mass_msun: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """Stellar radius R = sqrt(G M / g) [m] from mass [Msun] and log g [cgs dex]."""
    g_si = 10.0 ** (np.asarray(logg, dtype=np.float64) - 2.0)
    return np.sqrt(G_SI * np.asarray(mass_msun, dtype=np.float64) * M_SUN_KG / g_si)


def accretion_luminosity_w(mass_msun: np.ndarray, logg: np.ndarray, log_mdot: np.ndarray,
                           r_in_over_r: float = 5.0) -> np.ndarray:
    """L_acc = G M Mdot / R (1 - R/R_in) [W]; Mdot as log10(Msun / yr)."""
    m_kg = np.asarray(mass_msun, dtype=np.float64) * M_SUN_KG
    mdot = 10.0 ** np.asarray(log_mdot, dtype=np.float64) * M_SUN_KG / YEAR_S
    return G_SI * m_kg * mdot / stellar_radius_m(mass_msun, logg) * (1.0 - 1.0 / r_in_over_r)


def accretion_energy_flux_w_m2(mass_msun: np.ndarray, logg: np.ndarray, log_mdot: np.ndarray,
                               ff: np.ndarray, settings: AccretionSettings = AccretionSettings()
                               ) -> np.ndarray:
    """Energy flux into the accretion columns F = L_acc / (4 pi R^2 max(f, ff_floor)) [W m^-2]."""
    r = stellar_radius_m(mass_msun, logg)
    l_acc = accretion_luminosity_w(mass_msun, logg, log_mdot, settings.r_in_over_r)
    f = np.maximum(np.asarray(ff, dtype=np.float64), settings.ff_floor)
    return l_acc / (4.0 * np.pi * r**2 * f)


def hot_spot_temperature_k(teff: np.ndarray, energy_flux_w_m2: np.ndarray,
                           heating_fraction: float = 0.75) -> np.ndarray:
    """T_hp [K] from sigma T_hp^4 = sigma Teff^4 + heating_fraction F."""
    teff = np.asarray(teff, dtype=np.float64)
    return (teff**4 + heating_fraction * np.asarray(energy_flux_w_m2) / SIGMA_SB) ** 0.25


def planck_flux(wavelength_nm: np.ndarray, t_k: np.ndarray) -> np.ndarray:
    """Black-body surface flux pi B_lambda(T) [W m^-2 nm^-1], (n, m) for T (n,) and lambda (m,)."""
    lam = np.asarray(wavelength_nm, dtype=np.float64)[None, :] * 1e-9
    t = np.asarray(t_k, dtype=np.float64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        x = H_SI * C_SI / (lam * K_B_SI * t)
        return 2.0 * np.pi * H_SI * C_SI**2 / lam**5 / np.expm1(x) * 1e-9


def spot_flux(t_hp_k: np.ndarray, logg: np.ndarray, mh: np.ndarray,
              wavelength_nm: np.ndarray | None = None, spot_model: str = "photosphere",
              correction: str | None = None) -> np.ndarray:
    """Surface flux of the heated spot [W m^-2 nm^-1], (n, m).

    ``"photosphere"``: the PHOENIX atmosphere at T_hp (same log g, [M/H]) up to the table's
    top T_top; above it pi B(T_hp) F_atm(T_top) / pi B(T_top) (continuous at T_top).
    ``"blackbody"``: pi B(T_hp). ``correction``: the photosphere's empirical correction
    (:func:`cvae_pms.physics.photosphere.surface_flux`; it fades out above ~7500 K).
    """
    tab = load_table()
    wl = tab.wavelength_nm if wavelength_nm is None else np.atleast_1d(wavelength_nm)
    t_hp = np.atleast_1d(np.asarray(t_hp_k, dtype=np.float64))
    bb = planck_flux(wl, t_hp)
    if spot_model == "blackbody":
        return bb
    if spot_model != "photosphere":
        raise PhysicsError(f"spot_model {spot_model!r} not in {SPOT_MODELS}")
    t_top = float(tab.teff_k[-1])
    logg, mh = np.atleast_1d(logg), np.atleast_1d(mh)
    out = np.empty_like(bb)
    inside = t_hp <= t_top
    if inside.any():
        out[inside] = surface_flux(t_hp[inside], logg[inside], mh[inside], wavelength_nm,
                                   correction)
    if (~inside).any():
        hot = ~inside
        top = surface_flux(np.full(hot.sum(), t_top), logg[hot], mh[hot], wavelength_nm,
                           correction)
        out[hot] = bb[hot] * top / planck_flux(wl, np.array([t_top]))
    return out


def _integration_grid_nm() -> np.ndarray:
    """10 nm - 100 um, log-spaced (dlog10 = 0.005), plus points 1e-6 either side of each edge.

    The emission is smooth between the edges, so the trapezoid rule in ln(lambda) on this
    grid matches a 0.0001-dex grid to 1.3e-4 (T_slab 8000-11000 K, tau_300 0.01-5).
    """
    base = np.logspace(1.0, 5.0, 801)
    edges = LAMBDA_LYMAN_NM * np.arange(1, N_LEVELS + 1) ** 2
    return np.unique(np.concatenate([base, edges * (1 - 1e-6), edges * (1 + 1e-6)]))


def hydrogen_opacity(wavelength_nm: np.ndarray, t_k: np.ndarray) -> np.ndarray:
    """Hydrogen bf (n = 1..12) + ff opacity per neutral atom, arbitrary units, (n_T, m).

    kappa ~ lambda^3 (1 - exp(-hc/lambda kT)) [sum_n n^-3 exp(-chi_0 (1 - 1/n^2)/kT)
    H(lambda_n - lambda) + kT/(2 chi_0) exp(-chi_0/kT)] (Kramers, Gaunt factors 1).
    """
    lam = np.asarray(wavelength_nm, dtype=np.float64)
    kt = K_B_SI * np.asarray(t_k, dtype=np.float64).reshape(-1, 1)         # (n, 1)
    n = np.arange(1, N_LEVELS + 1, dtype=np.float64)
    # Work relative to exp(-chi_0/kT) so nothing underflows: weights exp(chi_0 / (n^2 kT)).
    weights = n**-3 * np.exp(CHI0_J / (n**2 * kt))                          # (nT, levels)
    above_edge = (lam[None, :] <= LAMBDA_LYMAN_NM * n[:, None] ** 2).astype(np.float64)
    bf = weights @ above_edge                                               # (nT, m)
    ff = kt / (2.0 * CHI0_J)
    stim = -np.expm1(-H_SI * C_SI / (lam[None, :] * 1e-9 * kt))
    return lam[None, :] ** 3 * stim * (bf + ff)


def slab_profile(wavelength_nm: np.ndarray, t_slab_k: np.ndarray, tau_300: np.ndarray
                 ) -> np.ndarray:
    """Slab emission per unit emitted energy [nm^-1], (n, m): integral over all lambda is 1.

    S = pi B(T_slab) (1 - exp(-tau)), tau = tau_300 kappa(lambda) / kappa(300 nm).
    """
    t = np.atleast_1d(np.asarray(t_slab_k, dtype=np.float64))
    tau300 = np.atleast_1d(np.asarray(tau_300, dtype=np.float64)).reshape(-1, 1)
    grid = _integration_grid_nm()
    k300 = hydrogen_opacity(np.array([300.0]), t)

    def emission(lam: np.ndarray) -> np.ndarray:
        tau = tau300 * hydrogen_opacity(lam, t) / k300
        return planck_flux(lam, t) * -np.expm1(-tau)

    s_grid = emission(grid)
    total = np.trapezoid(s_grid * grid, np.log(grid), axis=1)
    slope = np.log(s_grid[:, -1] / s_grid[:, -2]) / np.log(grid[-1] / grid[-2])
    total += s_grid[:, -1] * grid[-1] / np.maximum(-slope - 1.0, 0.5)  # power-law tail
    return emission(np.asarray(wavelength_nm, dtype=np.float64)) / total[:, None]


@lru_cache(maxsize=32)
def _fixed_slab_profile(wl_key: bytes, t_slab_k: float, tau_300: float) -> np.ndarray:
    out = slab_profile(np.frombuffer(wl_key, dtype=np.float64), t_slab_k, tau_300)[0]
    out.setflags(write=False)
    return out


def slab_flux(wavelength_nm: np.ndarray, energy_flux_w_m2: np.ndarray, t_slab_k: np.ndarray,
              tau_300: np.ndarray, slab_fraction: float = 0.25) -> np.ndarray:
    """Slab surface flux per unit spot area [W m^-2 nm^-1], (n, m): emits slab_fraction F in total."""
    wl = np.ascontiguousarray(wavelength_nm, dtype=np.float64)
    t = np.atleast_1d(np.asarray(t_slab_k, dtype=np.float64))
    tau = np.atleast_1d(np.asarray(tau_300, dtype=np.float64))
    e = slab_fraction * np.atleast_1d(np.asarray(energy_flux_w_m2, dtype=np.float64))
    if np.all(t == t[0]) and np.all(tau == tau[0]):
        prof = _fixed_slab_profile(wl.tobytes(), float(t[0]), float(tau[0]))[None, :]
    else:
        prof = slab_profile(wl, t, tau)
    return e[:, None] * prof
