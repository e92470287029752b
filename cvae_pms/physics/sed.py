"""The composed SED of an accreting young star at the Earth.

F_lambda = [(1 - f) F_phot + f (F_hp + F_slab)] (R / d)^2 10^(-0.4 A_0 k(lambda)),
with F_phot the PHOENIX photosphere, F_hp the heated spot and F_slab the hydrogen slab
(:mod:`cvae_pms.physics.accretion`), R = sqrt(G M / g), k from
:mod:`cvae_pms.physics.extinction`. ``theta`` is (n, 7) in physical units in
``cvae_pms.params.NAMES`` order: teff [K], logg [dex], mh [dex], log_mdot [log Msun/yr],
ff, mass [Msun], a0 [mag]. Stars are processed in chunks, so memory stays flat.

Example
-------
>>> import numpy as np
>>> from cvae_pms.physics.sed import sed_flux
>>> theta = np.array([[4000.0, 4.0, 0.0, -8.0, 0.01, 0.6, 1.0]])
>>> sed_flux(theta, np.array([400.0, 550.0, 800.0])).shape
(1, 3)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae_pms import params
from cvae_pms.physics.accretion import (
    AccretionSettings,
    accretion_energy_flux_w_m2,
    hot_spot_temperature_k,
    slab_flux,
    spot_flux,
    stellar_radius_m,
)
from cvae_pms.physics.extinction import (apply_extinction, check_r_v_range, extinction_curve,
                                         extinction_curves)
from cvae_pms.physics.photosphere import (
    DEFAULT_CORRECTION,
    PhysicsError,
    check_correction,
    check_in_table,
    load_correction,
    load_table,
    surface_flux,
    table_wavelength_nm,
)

#: Version of the forward model; bump when the physics changes results.
#: 2: the photosphere carries the empirical correction learned from real stars by default.
FORWARD_MODEL_VERSION = 2
PC_M = 3.0856775814913673e16
DEFAULT_CHUNK = 4096
_I = params.INDEX


@dataclass
class SEDComponents:
    """Surface fluxes [W m^-2 nm^-1], each (n, m), before dilution and extinction.

    ``photosphere`` = (1 - f) F_phot, ``spot`` = f F_hp, ``slab`` = f F_slab;
    ``unveiled`` = F_phot (the star with no accretion). Per star (n,): ``t_hp_k`` [K],
    ``energy_flux_w_m2`` F into the columns, ``t_slab_k`` [K], ``tau_300``, ``radius_m``.
    """

    wavelength_nm: np.ndarray
    photosphere: np.ndarray
    spot: np.ndarray
    slab: np.ndarray
    unveiled: np.ndarray
    t_hp_k: np.ndarray
    energy_flux_w_m2: np.ndarray
    t_slab_k: np.ndarray
    tau_300: np.ndarray
    radius_m: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Total surface flux (1 - f) F_phot + f (F_hp + F_slab)."""
        return self.photosphere + self.spot + self.slab

    @property
    def veiling(self) -> np.ndarray:
        """Excess over the unveiled photosphere / unveiled photosphere, (n, m)."""
        return (self.total - self.unveiled) / self.unveiled


@dataclass
class SEDResult:
    """Fluxes at the Earth [W m^-2 nm^-1] (n, m), the per-star slab draws and R_V (n,)."""

    wavelength_nm: np.ndarray
    flux_w_m2_nm: np.ndarray
    t_slab_k: np.ndarray
    tau_300: np.ndarray
    r_v: np.ndarray | None = None


def _check_theta(theta: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim == 1:
        theta = theta[None, :]
    if theta.ndim != 2 or theta.shape[1] != params.N_PARAMS:
        raise PhysicsError(f"theta must be (n, {params.N_PARAMS}) in order {params.NAMES}, "
                           f"got shape {theta.shape}")
    bad = ~np.isfinite(theta).all(axis=1)
    bad |= theta[:, _I["mass"]] <= 0
    bad |= (theta[:, _I["ff"]] < 0) | (theta[:, _I["ff"]] >= 1)
    bad |= theta[:, _I["a0"]] < 0
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise PhysicsError(f"star {j}: theta {dict(zip(params.NAMES, theta[j].tolist()))} "
                           "is not physical (needs finite values, mass > 0, 0 <= ff < 1, a0 >= 0)")
    check_in_table(theta[:, _I["teff"]], theta[:, _I["logg"]], theta[:, _I["mh"]])
    return theta


def _wavelengths(wavelength_nm: np.ndarray | None) -> np.ndarray:
    return table_wavelength_nm() if wavelength_nm is None else np.ascontiguousarray(
        np.atleast_1d(wavelength_nm), dtype=np.float64)


def _components(theta: np.ndarray, wl: np.ndarray | None, settings: AccretionSettings,
                t_slab: np.ndarray, tau_300: np.ndarray,
                correction: str | None = DEFAULT_CORRECTION) -> SEDComponents:
    """Components for one chunk of already checked ``theta``."""
    teff, logg, mh, log_mdot, ff, mass = (theta[:, _I[k]] for k in
                                          ("teff", "logg", "mh", "log_mdot", "ff", "mass"))
    wl_out = table_wavelength_nm() if wl is None else wl
    f_phot = surface_flux(teff, logg, mh, wl, correction)
    energy = accretion_energy_flux_w_m2(mass, logg, log_mdot, ff, settings)
    t_hp = hot_spot_temperature_k(teff, energy, settings.heating_fraction)
    f_hp = spot_flux(t_hp, logg, mh, wl, settings.spot_model, correction)
    f_slab = slab_flux(wl_out, energy, t_slab, tau_300, 1.0 - settings.heating_fraction)
    f = ff[:, None]
    return SEDComponents(
        wavelength_nm=wl_out, photosphere=(1.0 - f) * f_phot, spot=f * f_hp, slab=f * f_slab,
        unveiled=f_phot, t_hp_k=t_hp, energy_flux_w_m2=energy, t_slab_k=t_slab,
        tau_300=tau_300, radius_m=stellar_radius_m(mass, logg))


def components(theta: np.ndarray, wavelength_nm: np.ndarray | None = None,
               settings: AccretionSettings = AccretionSettings(),
               rng: np.random.Generator | None = None,
               photosphere_correction: str | None = DEFAULT_CORRECTION) -> SEDComponents:
    """Photosphere, spot and slab surface fluxes separately (for plots and tests).

    Args:
        theta (ndarray): (n, 7) physical parameters in ``params.NAMES`` order.
        wavelength_nm (ndarray | None): (m,) [nm] within 289-1113 nm; None: table bins.
        settings (AccretionSettings): accretion model settings.
        rng (Generator | None): needed when ``settings.draw_nuisance``.
        photosphere_correction (str | None): empirical photosphere correction (default
            :data:`~cvae_pms.physics.photosphere.DEFAULT_CORRECTION`; None: plain PHOENIX).

    Returns:
        SEDComponents: surface fluxes [W m^-2 nm^-1] before dilution and extinction.
    """
    theta = _check_theta(theta)
    wl = None if wavelength_nm is None else _wavelengths(wavelength_nm)
    t_slab, tau_300 = settings.slab_parameters(theta.shape[0], rng)
    return _components(theta, wl, settings, t_slab, tau_300,
                       check_correction(photosphere_correction))


def simulate_sed(theta: np.ndarray, wavelength_nm: np.ndarray | None = None,
                 distance_pc: float = 10.0, settings: AccretionSettings = AccretionSettings(),
                 rng: np.random.Generator | None = None, extinction_law: str = "G23",
                 r_v: float = 3.1, chunk_size: int = DEFAULT_CHUNK,
                 photosphere_correction: str | None = DEFAULT_CORRECTION,
                 r_v_range: tuple[float, float] | None = None) -> SEDResult:
    """SED at the Earth plus the slab parameters and R_V used per star; see :func:`sed_flux`.

    ``r_v_range``: draw R_V per star uniformly in (low, high) from ``rng`` (after the slab
    draws) instead of the fixed ``r_v``.
    """
    theta = _check_theta(theta)
    correction = check_correction(photosphere_correction)
    if not distance_pc > 0:
        raise PhysicsError(f"distance_pc must be > 0, got {distance_pc}")
    wl = None if wavelength_nm is None else _wavelengths(wavelength_nm)
    wl_out = _wavelengths(wl)
    n = theta.shape[0]
    t_slab, tau_300 = settings.slab_parameters(n, rng)  # drawn up front: chunk-independent
    if r_v_range is not None:
        lo, hi = check_r_v_range(r_v_range)
        if rng is None:
            raise PhysicsError("per-star R_V draws (r_v_range) need a numpy Generator (rng)")
        r_v_star = rng.uniform(lo, hi, n)
        k = extinction_curves(wl_out, extinction_law, r_v_star)
    else:
        r_v_star = None
        k = extinction_curve(wl_out, extinction_law, r_v)
    out = np.empty((n, wl_out.size), dtype=np.float64)
    d_m = distance_pc * PC_M
    for s in range(0, n, chunk_size):
        c = slice(s, min(s + chunk_size, n))
        comp = _components(theta[c], wl, settings, t_slab[c], tau_300[c], correction)
        dilution = (comp.radius_m / d_m) ** 2
        out[c] = apply_extinction(comp.total * dilution[:, None], theta[c, _I["a0"]],
                                  k if k.ndim == 1 else k[c])
    return SEDResult(wavelength_nm=wl_out, flux_w_m2_nm=out, t_slab_k=t_slab, tau_300=tau_300,
                     r_v=r_v_star)


def sed_flux(theta: np.ndarray, wavelength_nm: np.ndarray | None = None,
             distance_pc: float = 10.0, settings: AccretionSettings = AccretionSettings(),
             rng: np.random.Generator | None = None, extinction_law: str = "G23",
             r_v: float = 3.1, chunk_size: int = DEFAULT_CHUNK,
             photosphere_correction: str | None = DEFAULT_CORRECTION) -> np.ndarray:
    """Flux of accreting stars at the Earth, F_lambda [W m^-2 nm^-1], (n, m).

    Args:
        theta (ndarray): (n, 7) teff [K], logg [dex], mh [dex], log_mdot [log10 Msun/yr],
            ff, mass [Msun], a0 [mag] (``params.NAMES`` order).
        wavelength_nm (ndarray | None): (m,) wavelengths [nm] within 289-1113 nm; None for
            the PHOENIX table bins (:func:`table_wavelength_nm`).
        distance_pc (float): distance [pc].
        settings (AccretionSettings): accretion model; with ``draw_nuisance`` T_slab and
            tau_300 are drawn per star from ``rng`` (use :func:`simulate_sed` to get them).
        rng (Generator | None): random generator for the nuisance draws.
        extinction_law (str): ``"G23"`` or ``"F19"``; r_v (float): R_V.
        chunk_size (int): stars per chunk.
        photosphere_correction (str | None): empirical photosphere correction learned from
            real stars (default; fades out beyond the calibration stars), None: plain PHOENIX.

    Returns:
        ndarray: (n, m) flux at the Earth [W m^-2 nm^-1].

    Raises:
        PhysicsError: unphysical theta, or (OutsideTableError) outside the PHOENIX table;
            the message names the first offending row.
    """
    return simulate_sed(theta, wavelength_nm, distance_pc, settings, rng, extinction_law,
                        r_v, chunk_size, photosphere_correction).flux_w_m2_nm


def veiling(theta: np.ndarray, wavelength_nm: np.ndarray | None = None,
            settings: AccretionSettings = AccretionSettings(),
            rng: np.random.Generator | None = None,
            photosphere_correction: str | None = DEFAULT_CORRECTION) -> np.ndarray:
    """Veiling r(lambda) = accretion excess / photospheric flux, (n, m), at the surface.

    r = [(1 - f) F_phot + f (F_hp + F_slab) - F_phot] / F_phot = f (F_hp + F_slab - F_phot)
    / F_phot: the flux added by accretion over the flux of the same star without it
    (so r = 0 without accretion at any filling factor). Extinction does not enter.
    """
    return components(theta, wavelength_nm, settings, rng, photosphere_correction).veiling


def forward_model_meta(settings: AccretionSettings = AccretionSettings(),
                       extinction_law: str = "G23", r_v: float = 3.1,
                       distance_pc: float = 10.0,
                       photosphere_correction: str | None = DEFAULT_CORRECTION,
                       r_v_range: tuple[float, float] | None = None) -> dict:
    """JSON-serialisable description of the forward model, for grid metadata.

    ``photosphere_correction`` is recorded as its name (or None); a grid without the key was
    made before the correction existed and uses the plain table
    (:func:`correction_from_meta`).
    """
    tab = load_table()
    correction = check_correction(photosphere_correction)
    corr_meta = None
    if correction is not None:
        cm = load_correction(correction)["meta"]
        corr_meta = {k: cm.get(k) for k in ("library", "parts", "code_commit", "date",
                                            "n_stars")}
    return {
        "forward_model_version": FORWARD_MODEL_VERSION,
        "photosphere_correction": correction,
        "photosphere_correction_provenance": corr_meta,
        "photosphere": {"table": "phoenix_aces.npz", "source_sha256": tab.meta["source_sha256"],
                        "citation": tab.meta["citation"], "bounds": tab.bounds},
        "accretion": settings.to_dict(),
        "extinction": {"law": extinction_law, "r_v": r_v, "a0_wavelength_nm": 541.4,
                       **({"r_v_range": [float(v) for v in r_v_range]} if r_v_range else {})},
        "distance_pc": distance_pc,
    }


def correction_from_meta(forward_model: dict | None) -> str | None:
    """The photosphere correction a grid was made with, from its ``forward_model`` metadata
    (None for grids written before forward-model version 2, or ingested grids)."""
    fm = forward_model if isinstance(forward_model, dict) else {}
    return check_correction(fm.get("photosphere_correction"))


class ForwardModelUnavailable(PhysicsError):
    """A grid's metadata does not describe a built-in forward model (e.g. an ingested grid)."""


def recorded_forward_model(meta: dict) -> dict | None:
    """A grid meta's ``forward_model`` settings as a dict (stored as a dict or a JSON string),
    or None when absent or unreadable. ``{}`` (ingested grids' default) is returned as is."""
    import json
    fm = meta.get("forward_model") if isinstance(meta, dict) else None
    if isinstance(fm, str):
        try:
            fm = json.loads(fm)
        except ValueError:
            return None
    return fm if isinstance(fm, dict) else None


def sed_function(meta: dict, nuisance: str = "refuse"):
    """The built-in forward model a grid was made with: ``theta (n, 7) -> F_lambda (n, m)``
    [W m^-2 nm^-1] on the PHOENIX table wavelengths (:func:`table_wavelength_nm`).

    Reads the accretion settings, extinction law/R_V, distance and photosphere correction that
    ``grid synth`` stores in the grid meta (``forward_model`` = :func:`forward_model_meta`).
    ``nuisance``: for grids with per-star slab or R_V draws (``draw_nuisance``,
    ``extinction.r_v_range``), ``"refuse"`` raises
    :class:`ForwardModelUnavailable`, ``"fixed"`` uses the slab at its fixed values
    (``t_slab_k``, ``tau_300``) and R_V = ``r_v`` (3.1). A grid without ``forward_model`` (ingested, or written by
    another tool) raises :class:`ForwardModelUnavailable`.
    """
    from dataclasses import replace
    fm = recorded_forward_model(meta)
    if fm is None:
        raise ForwardModelUnavailable("the training grid records no built-in forward model "
                                      "(ingested grid?)")
    try:
        settings = AccretionSettings.from_dict(fm.get("accretion", {}))
    except (PhysicsError, TypeError) as exc:
        raise ForwardModelUnavailable(f"grid accretion settings unusable: {exc}") from exc
    if settings.draw_nuisance:
        if nuisance != "fixed":
            raise ForwardModelUnavailable("the grid draws slab nuisance parameters per star: "
                                          "no single forward model")
        settings = replace(settings, draw_nuisance=False)
    ext = fm.get("extinction", {}) if isinstance(fm.get("extinction"), dict) else {}
    if ext.get("r_v_range") and nuisance != "fixed":
        raise ForwardModelUnavailable("the grid draws R_V per star: no single forward model")
    law = str(ext.get("law", meta.get("extinction_law", "G23")))
    r_v = float(ext.get("r_v", 3.1))
    distance = fm.get("distance_pc", meta.get("reference_distance_pc"))
    try:
        distance = float(distance)
    except (TypeError, ValueError):
        distance = 10.0
    if not np.isfinite(distance) or distance <= 0:
        distance = 10.0   # normalised grids: the flux scale is fitted anyway
    correction = correction_from_meta(fm)

    def sed(theta: np.ndarray) -> np.ndarray:
        return sed_flux(theta, None, distance_pc=distance, settings=settings,
                        extinction_law=law, r_v=r_v, photosphere_correction=correction)

    return sed
