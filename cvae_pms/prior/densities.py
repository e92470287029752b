"""The closed-form densities behind the prior factors of :mod:`cvae_pms.priors`: the
Chabrier (2003) IMF (its parameters and :func:`chabrier_imf_pdf`) and the normal log density."""
from __future__ import annotations

import math

import numpy as np

#: Chabrier (2003, PASP 115, 763; Table 1 and eq. 17) log-normal parameters below 1 Msun, per
#: dN/dlog10 m: ``(m_c [Msun], sigma [dex])``; the power law above 1 Msun has slope x = 1.3.
CHABRIER_FORMS: dict[str, tuple[float, float]] = {
    "individual": (0.079, 0.69),  # single objects of the Galactic disk
    "system": (0.22, 0.57),       # unresolved systems
}
CHABRIER_X = 1.3

_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LN10 = math.log(10.0)


def chabrier_imf_pdf(mass_msun: np.ndarray, m_low: float, m_high: float,
                     form: str = "individual", m_c: float | None = None,
                     sigma: float | None = None, x: float = CHABRIER_X) -> np.ndarray:
    """Chabrier (2003) IMF as a probability density dN/dm [1/Msun], normalised on [m_low, m_high].

    Per unit log10 mass the IMF is (Chabrier 2003, PASP 115, 763, eq. 17 and Table 1)::

        xi(log10 m) = A exp(-(log10 m - log10 m_c)^2 / (2 sigma^2))   m <= 1 Msun
        xi(log10 m) = B m^(-x)                                          m >  1 Msun

    with ``(m_c, sigma) = (0.079 Msun, 0.69)`` for individual objects, ``(0.22, 0.57)`` for
    systems, and x = 1.3. B is fixed by continuity at 1 Msun (which reproduces the published
    ratio B/A = 0.0443/0.158 within 1 %), and ``dN/dm = xi / (m ln 10)``. The normalisation
    over ``[m_low, m_high]`` is analytic.

    Args:
        mass_msun: masses [Msun], any shape.
        m_low, m_high: support [Msun], 0 < m_low < m_high.
        form: ``"individual"`` or ``"system"`` (sets the defaults of ``m_c`` and ``sigma``).
        m_c, sigma: characteristic mass [Msun] and width [dex] overriding the form's values.
        x: power-law slope above 1 Msun in dN/dlog10 m (Salpeter: 1.35).

    Returns:
        The density [1/Msun], same shape as ``mass_msun``; 0 outside the support.
    """
    return np.exp(_chabrier_log_pdf(mass_msun, m_low, m_high, form, m_c, sigma, x))


def _chabrier_log_pdf(mass_msun: np.ndarray, m_low: float, m_high: float, form: str,
                      m_c: float | None, sigma: float | None, x: float) -> np.ndarray:
    """Log of :func:`chabrier_imf_pdf` (``-inf`` outside the support)."""
    mc0, s0 = CHABRIER_FORMS[form]
    mc = mc0 if m_c is None else float(m_c)
    s = s0 if sigma is None else float(sigma)
    lc = math.log10(mc)
    # xi(l) with A = 1: log-normal for l <= 0, b * 10^(-x l) above, b = exp(-lc^2 / 2 s^2)
    log_b = -lc * lc / (2.0 * s * s)
    l1, l2 = math.log10(m_low), math.log10(m_high)
    norm = 0.0
    if l1 < 0.0:  # log-normal part over [l1, min(l2, 0)]
        hi = min(l2, 0.0)
        norm += s * math.sqrt(math.pi / 2.0) * (
            math.erf((hi - lc) / (s * math.sqrt(2.0))) - math.erf((l1 - lc) / (s * math.sqrt(2.0))))
    if l2 > 0.0:  # power-law part over [max(l1, 0), l2]
        lo = max(l1, 0.0)
        norm += math.exp(log_b) * (10.0 ** (-x * lo) - 10.0 ** (-x * l2)) / (x * _LN10)
    m = np.asarray(mass_msun, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm = np.log10(m)
        log_xi = np.where(lm <= 0.0, -(lm - lc) ** 2 / (2.0 * s * s), log_b - x * _LN10 * lm)
        out = log_xi - np.log(m * _LN10) - math.log(norm)
    inside = (m >= m_low) & (m <= m_high)
    return np.where(inside, out, -np.inf)


def _normal_logpdf(x: np.ndarray, mean: np.ndarray | float, sigma: float) -> np.ndarray:
    z = (x - mean) / sigma
    return -0.5 * z * z - math.log(sigma) - _LN_SQRT_2PI
