"""User priors applied to posterior samples by importance reweighting.

The CVAE is trained with a uniform prior on the 7-D box of :mod:`cvae_pms.params`, so its
samples theta ~ p(theta | y) under that prior. For another prior p_user the importance weight
of a sample is ``w = p_user(theta) / p_train(theta)``, which is proportional to
``p_user(theta)`` inside the box (p_train is constant there). Per source this module
normalises the weights (log-sum-exp), reports the effective sample size
``ESS = (sum w)^2 / sum w^2`` (between 1 and S), flags sources whose ESS falls below a
threshold, and resamples S equal-weight samples (systematic or multinomial).

A prior file (TOML) lists factors, multiplied together; parameters no factor names stay
uniform on their box, and every factor is truncated to the box automatically (a ``normal``
factor is thus a truncated normal)::

    name = "Chabrier IMF with Mdot ~ M^2"

    [[factor]]
    type = "chabrier_imf"          # Chabrier (2003) IMF on mass (individual stars)
    param = "mass"

    [[factor]]
    type = "relation"              # log_mdot ~ Normal(intercept + slope*log10(mass), scatter)
    x = "mass"
    y = "log_mdot"
    x_log = true
    slope = 2.0
    intercept = -8.0
    scatter = 0.8

    [settings]
    ess_min = 50                   # or ess_min_fraction = 0.05 (of S); not both
    seed = 0
    resample = "systematic"        # or "multinomial"

Factor types (keys; ``param``/``x``/``y`` are names from :data:`cvae_pms.params.NAMES`, values
in that parameter's physical unit):

- ``normal``: ``param``, ``mean``, ``sigma`` (> 0).
- ``lognormal``: ``param``, ``mu``, ``sigma`` (> 0), the mean and standard deviation of
  ``ln x``; density ``exp(-(ln x - mu)^2 / (2 sigma^2)) / (x sigma sqrt(2 pi))``, zero for x <= 0.
- ``uniform``: ``param``, ``low``, ``high``: a narrower box (must overlap the parameter's box).
- ``chabrier_imf``: ``param = "mass"`` (the default), optional ``form`` = ``"individual"``
  (default) or ``"system"``, optional overrides ``m_c`` [Msun], ``sigma`` [dex], ``x``.
  See :func:`chabrier_imf_pdf`.
- ``relation``: ``x``, ``y``, ``slope``, ``intercept``, ``scatter`` (> 0), optional ``x_log``
  (default false): ``y ~ Normal(intercept + slope * f(x), scatter)`` with ``f = log10`` when
  ``x_log`` else the identity.

:meth:`Prior.log_density` is the log of the product of the factor densities (each normalised
on its own support; the truncation to the box is not renormalised, which does not change the
weights), ``-inf`` outside the box.

Example
-------
>>> import numpy as np
>>> from cvae_pms import params
>>> from cvae_pms.priors import prior_from_dict, reweight
>>> prior = prior_from_dict({"factor": [{"type": "normal", "param": "teff",
...                                      "mean": 4000.0, "sigma": 200.0}]})
>>> rng = np.random.default_rng(1)
>>> theta = params.from_unit(rng.random((2, 1000, 7)))      # 2 sources, 1000 samples each
>>> result = reweight(theta, prior, seed=0)
>>> result.resampled.shape, bool(abs(result.resampled[..., 0].mean() - 4000) < 50)
((2, 1000, 7), True)
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvae_pms import params
from cvae_pms.errors import CvaePmsError

#: Default ESS threshold (absolute number of effective samples) below which a source is flagged.
DEFAULT_ESS_MIN = 50.0
RESAMPLERS = ("systematic", "multinomial")

#: Chabrier (2003, PASP 115, 763; Table 1 and eq. 17) log-normal parameters below 1 Msun, per
#: dN/dlog10 m: ``(m_c [Msun], sigma [dex])``; the power law above 1 Msun has slope x = 1.3.
CHABRIER_FORMS: dict[str, tuple[float, float]] = {
    "individual": (0.079, 0.69),  # single objects of the Galactic disk
    "system": (0.22, 0.57),       # unresolved systems
}
CHABRIER_X = 1.3

_BOX_TOL = 1e-6  # samples this fraction of the range outside the box count as on the edge
_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LN10 = math.log(10.0)


class PriorError(CvaePmsError, ValueError):
    """A prior file or prior dict is malformed (the message names the file and the factor/key)."""


# --------------------------------------------------------------------------------------------
# densities


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


# --------------------------------------------------------------------------------------------
# factors


@dataclass(frozen=True)
class Factor:
    """One factor of a prior: its type, the TOML keys that define it, and its log density."""

    type: str
    spec: dict[str, Any]
    log_pdf: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def log_density(self, theta: np.ndarray) -> np.ndarray:
        """Log density (...) at ``theta`` (..., 7) in physical units (box not checked here)."""
        return self.log_pdf(theta)

    def to_dict(self) -> dict[str, Any]:
        """The factor as it would appear in a ``[[factor]]`` table (defaults filled in)."""
        return {"type": self.type, **self.spec}


class _Keys:
    """Reads the keys of one ``[[factor]]`` table; errors name the file and the factor."""

    def __init__(self, table: dict[str, Any], where: str):
        self.table, self.where, self.used = table, where, {"type"}

    def fail(self, msg: str) -> PriorError:
        return PriorError(f"{self.where}: {msg}")

    def number(self, key: str, default: float | None = None, positive: bool = False) -> float:
        self.used.add(key)
        if key not in self.table:
            if default is not None:
                return default
            raise self.fail(f"missing key '{key}'")
        v = self.table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(f"key '{key}' must be a finite number, got {v!r}")
        if positive and v <= 0:
            raise self.fail(f"key '{key}' must be > 0, got {v!r}")
        return float(v)

    def param(self, key: str, default: str | None = None) -> str:
        self.used.add(key)
        v = self.table.get(key, default)
        if v is None:
            raise self.fail(f"missing key '{key}' (one of {', '.join(params.NAMES)})")
        if v not in params.INDEX:
            raise self.fail(f"key '{key}': unknown parameter {v!r}; "
                            f"expected one of {', '.join(params.NAMES)}")
        return str(v)

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        self.used.add(key)
        v = self.table.get(key, default)
        if v not in options:
            raise self.fail(f"key '{key}' must be one of {', '.join(options)}, got {v!r}")
        return str(v)

    def flag(self, key: str, default: bool) -> bool:
        self.used.add(key)
        v = self.table.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(f"key '{key}' must be true or false, got {v!r}")
        return v

    def finish(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise self.fail(f"unknown key(s) {', '.join(map(repr, extra))}")


def _positive_support(k: _Keys, name: str, what: str) -> None:
    if params.HIGH[params.INDEX[name]] <= 0.0:
        raise k.fail(f"{what} needs {name} > 0 but its box is "
                     f"[{params.LOW[params.INDEX[name]]}, {params.HIGH[params.INDEX[name]]}]")


def _normal(k: _Keys) -> Factor:
    name = k.param("param")
    mean, sigma = k.number("mean"), k.number("sigma", positive=True)
    i = params.INDEX[name]
    return Factor("normal", {"param": name, "mean": mean, "sigma": sigma},
                  lambda t: _normal_logpdf(t[..., i], mean, sigma))


def _lognormal(k: _Keys) -> Factor:
    name = k.param("param")
    mu, sigma = k.number("mu"), k.number("sigma", positive=True)
    _positive_support(k, name, "a lognormal factor")
    i = params.INDEX[name]

    def log_pdf(t: np.ndarray) -> np.ndarray:
        v = t[..., i]
        with np.errstate(divide="ignore", invalid="ignore"):
            ln = np.log(v)
            out = _normal_logpdf(ln, mu, sigma) - ln
        return np.where(v > 0.0, out, -np.inf)

    return Factor("lognormal", {"param": name, "mu": mu, "sigma": sigma}, log_pdf)


def _uniform(k: _Keys) -> Factor:
    name = k.param("param")
    low, high = k.number("low"), k.number("high")
    i = params.INDEX[name]
    if not low < high:
        raise k.fail(f"key 'low' ({low}) must be < 'high' ({high})")
    if high <= params.LOW[i] or low >= params.HIGH[i]:
        raise k.fail(f"[{low}, {high}] does not overlap the box of {name} "
                     f"[{params.LOW[i]}, {params.HIGH[i]}]")
    ln_width = math.log(high - low)
    tol = _BOX_TOL * (high - low)

    def log_pdf(t: np.ndarray) -> np.ndarray:
        v = t[..., i]
        return np.where((v >= low - tol) & (v <= high + tol), -ln_width, -np.inf)

    return Factor("uniform", {"param": name, "low": low, "high": high}, log_pdf)


def _chabrier(k: _Keys) -> Factor:
    name = k.param("param", default="mass")
    if name != "mass":
        raise k.fail(f"a chabrier_imf factor applies to 'mass', not {name!r}")
    form = k.choice("form", tuple(CHABRIER_FORMS), "individual")
    mc0, s0 = CHABRIER_FORMS[form]
    m_c = k.number("m_c", default=mc0, positive=True)
    sigma = k.number("sigma", default=s0, positive=True)
    x = k.number("x", default=CHABRIER_X, positive=True)
    i = params.INDEX[name]
    lo, hi = float(params.LOW[i]), float(params.HIGH[i])
    if lo <= 0.0:
        raise k.fail(f"the box of mass [{lo}, {hi}] must start above 0 Msun")
    spec = {"param": name, "form": form, "m_c": m_c, "sigma": sigma, "x": x}
    return Factor("chabrier_imf", spec, lambda t: _chabrier_log_pdf(
        np.clip(t[..., i], lo, hi), lo, hi, form, m_c, sigma, x))


def _relation(k: _Keys) -> Factor:
    xn, yn = k.param("x"), k.param("y")
    if xn == yn:
        raise k.fail(f"keys 'x' and 'y' name the same parameter {xn!r}")
    slope, intercept = k.number("slope"), k.number("intercept")
    scatter = k.number("scatter", positive=True)
    x_log = k.flag("x_log", False)
    if x_log:
        _positive_support(k, xn, "x_log = true")
    ix, iy = params.INDEX[xn], params.INDEX[yn]

    def log_pdf(t: np.ndarray) -> np.ndarray:
        xv = t[..., ix]
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.log10(xv) if x_log else xv
            out = _normal_logpdf(t[..., iy], intercept + slope * f, scatter)
        return np.where(np.isfinite(out), out, -np.inf)

    spec = {"x": xn, "y": yn, "slope": slope, "intercept": intercept, "scatter": scatter,
            "x_log": x_log}
    return Factor("relation", spec, log_pdf)


FACTOR_TYPES: dict[str, Callable[[_Keys], Factor]] = {
    "normal": _normal, "lognormal": _lognormal, "uniform": _uniform,
    "chabrier_imf": _chabrier, "relation": _relation,
}


# --------------------------------------------------------------------------------------------
# the prior


@dataclass(frozen=True)
class PriorSettings:
    """``[settings]`` of a prior file: ESS threshold, resampling seed and scheme."""

    ess_min: float | None = DEFAULT_ESS_MIN
    ess_min_fraction: float | None = None
    seed: int = 0
    resample: str = "systematic"

    def ess_threshold(self, n_samples: int) -> float:
        """ESS below which a source is flagged, for ``n_samples`` samples per source."""
        if self.ess_min_fraction is not None:
            return self.ess_min_fraction * n_samples
        return float(self.ess_min if self.ess_min is not None else DEFAULT_ESS_MIN)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed, "resample": self.resample}
        if self.ess_min_fraction is not None:
            out["ess_min_fraction"] = self.ess_min_fraction
        else:
            out["ess_min"] = self.ess_min
        return out


@dataclass(frozen=True)
class Prior:
    """A user prior: the product of its factors, uniform on the box elsewhere."""

    factors: tuple[Factor, ...]
    settings: PriorSettings = PriorSettings()
    name: str = ""
    description: str = ""
    source: str = ""

    def log_density(self, theta: np.ndarray) -> np.ndarray:
        """Log prior density (...) at ``theta`` (..., 7), physical units; ``-inf`` outside the box.

        Non-finite values count as outside. Values within 1e-6 of a parameter's range outside
        its box (float32 rounding at the edge) count as on the edge.
        """
        t = np.asarray(theta, dtype=np.float64)
        if t.shape[-1:] != (params.N_PARAMS,):
            raise ValueError(f"theta must have shape (..., {params.N_PARAMS}), got {t.shape}")
        tol = _BOX_TOL * (params.HIGH - params.LOW)
        with np.errstate(invalid="ignore"):
            inside = ((t >= params.LOW - tol) & (t <= params.HIGH + tol)).all(axis=-1)
        out = np.zeros(t.shape[:-1], dtype=np.float64)
        for factor in self.factors:
            out += factor.log_density(t)
        return np.where(inside & ~np.isnan(out), out, -np.inf)

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-serialisable dict (the file's content with defaults filled in).

        :func:`prior_from_dict` of it gives the same prior; store it (as JSON) in the
        posterior file's attributes.
        """
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["factor"] = [f.to_dict() for f in self.factors]
        out["settings"] = self.settings.to_dict()
        if self.source:
            out["source"] = self.source
        return out


_TOP_KEYS = {"name", "description", "factor", "settings", "source"}
_SETTINGS_KEYS = {"ess_min", "ess_min_fraction", "seed", "resample"}


def prior_from_dict(data: dict[str, Any], where: str = "prior") -> Prior:
    """Build and validate a :class:`Prior` from a dict in the TOML layout.

    ``where`` names the origin (a file path) in error messages. Raises :class:`PriorError`.
    """
    if not isinstance(data, dict):
        raise PriorError(f"{where}: expected a table, got {type(data).__name__}")
    extra = sorted(set(data) - _TOP_KEYS)
    if extra:
        raise PriorError(f"{where}: unknown top-level key(s) {', '.join(map(repr, extra))}; "
                         f"expected {', '.join(sorted(_TOP_KEYS))}")
    tables = data.get("factor")
    if not tables:
        raise PriorError(f"{where}: no [[factor]] tables (the training prior, uniform on the "
                         f"box, needs no prior file)")
    if not isinstance(tables, list):
        raise PriorError(f"{where}: 'factor' must be an array of tables ([[factor]])")
    factors = []
    for n, table in enumerate(tables, start=1):
        label = f"{where}: [[factor]] #{n}"
        if not isinstance(table, dict):
            raise PriorError(f"{label}: expected a table, got {table!r}")
        ftype = table.get("type")
        if ftype is None:
            raise PriorError(f"{label}: missing key 'type' (one of {', '.join(FACTOR_TYPES)})")
        if ftype not in FACTOR_TYPES:
            raise PriorError(f"{label}: unknown factor type {ftype!r}; "
                             f"expected one of {', '.join(FACTOR_TYPES)}")
        keys = _Keys(table, f"{label} (type '{ftype}')")
        factors.append(FACTOR_TYPES[ftype](keys))
        keys.finish()
    return Prior(factors=tuple(factors), settings=_settings(data.get("settings", {}), where),
                 name=str(data.get("name", "")), description=str(data.get("description", "")),
                 source=str(data.get("source", "")))


def _settings(table: Any, where: str) -> PriorSettings:
    where = f"{where}: [settings]"
    if not isinstance(table, dict):
        raise PriorError(f"{where}: expected a table")
    extra = sorted(set(table) - _SETTINGS_KEYS)
    if extra:
        raise PriorError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; "
                         f"expected {', '.join(sorted(_SETTINGS_KEYS))}")
    if "ess_min" in table and "ess_min_fraction" in table:
        raise PriorError(f"{where}: give 'ess_min' or 'ess_min_fraction', not both")
    k = _Keys(table, where)
    ess_min = k.number("ess_min", default=DEFAULT_ESS_MIN, positive=True)
    fraction = None
    if "ess_min_fraction" in table:
        fraction = k.number("ess_min_fraction", positive=True)
        if fraction > 1.0:
            raise PriorError(f"{where}: 'ess_min_fraction' must be in (0, 1], got {fraction}")
    seed = table.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PriorError(f"{where}: 'seed' must be an integer >= 0, got {seed!r}")
    resample = k.choice("resample", RESAMPLERS, "systematic")
    return PriorSettings(ess_min=None if fraction is not None else ess_min,
                         ess_min_fraction=fraction, seed=seed, resample=resample)


#: Shipped example priors (package data): ``--prior chabrier-imf`` finds them by name.
PRIOR_DIR = Path(__file__).resolve().parent / "recipes" / "priors"


def load_prior(path: str | os.PathLike) -> Prior:
    """Read and validate a prior file (TOML): a path, or the name of a shipped prior
    (:data:`PRIOR_DIR`, e.g. ``chabrier-imf``). Raises :class:`PriorError` naming the file."""
    p = Path(path)
    if not p.is_file() and (PRIOR_DIR / f"{p.name}.toml").is_file() and p.parent == Path("."):
        p = PRIOR_DIR / f"{p.name}.toml"
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise PriorError(f"{p}: prior file not found") from None
    except OSError as e:
        raise PriorError(f"{p}: cannot read prior file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PriorError(f"{p}: not valid TOML: {e}") from None
    data.setdefault("source", str(p.resolve()))
    return prior_from_dict(data, where=str(p))


# --------------------------------------------------------------------------------------------
# reweighting


@dataclass
class ReweightResult:
    """Importance reweighting of n sources' samples under a user prior.

    Attributes:
        weights: (n, S) float64, normalised per source (sum 1); 0 for failed sources.
        ess: (n,) effective sample size ``(sum w)^2 / sum w^2``; 0 for failed sources and
            for sources where the prior is zero at every sample.
        flag_low_ess: (n,) bool, ``ess < ess_threshold`` (never set for failed sources).
        resampled: (n, S, 7) float32 equal-weight samples; NaN for failed and zero-support
            sources.
        indices: (n, S) int64, which original sample each resampled one is (-1 where NaN).
        failed: (n,) bool, the input samples were all NaN (already failed upstream).
        zero_support: (n,) bool, not failed but the prior is zero at every sample.
        ess_threshold: the threshold used.
    """

    weights: np.ndarray
    ess: np.ndarray
    flag_low_ess: np.ndarray
    resampled: np.ndarray
    indices: np.ndarray
    failed: np.ndarray
    zero_support: np.ndarray
    ess_threshold: float


def reweight(samples: np.ndarray, prior: Prior, seed: int | None = None,
             source_id: np.ndarray | None = None) -> ReweightResult:
    """Reweight posterior samples drawn under the uniform training prior to ``prior``.

    Args:
        samples: (n, S, 7) posterior samples, physical units; a failed source is all NaN.
        prior: the user prior.
        seed: resampling seed (int >= 0); ``None`` uses ``prior.settings.seed``.
        source_id: (n,) int64 keys of the sources. The resampling random numbers of a
            source depend only on (seed, its key, S), so chunking does not change the result.
            ``None`` keys the sources by their row index.

    Returns:
        :class:`ReweightResult`. Vectorised over sources and samples; memory O(n S).
    """
    x = np.asarray(samples)
    if x.ndim != 3 or x.shape[2] != params.N_PARAMS:
        raise ValueError(f"samples must have shape (n, S, {params.N_PARAMS}), got {x.shape}")
    n, s = x.shape[:2]
    seed = prior.settings.seed if seed is None else int(seed)
    keys = np.arange(n, dtype=np.int64) if source_id is None else np.asarray(source_id, np.int64)
    if keys.shape != (n,):
        raise ValueError(f"source_id must have shape ({n},), got {keys.shape}")

    failed = ~np.isfinite(x).any(axis=2).any(axis=1) if s else np.ones(n, bool)
    log_w = prior.log_density(x)                                       # (n, S)
    log_max = log_w.max(axis=1, initial=-np.inf)
    zero_support = ~failed & ~np.isfinite(log_max)
    ok = np.isfinite(log_max)
    w = np.zeros((n, s), dtype=np.float64)
    w[ok] = np.exp(log_w[ok] - log_max[ok, None])
    w[ok] /= w[ok].sum(axis=1, keepdims=True)
    ess = np.zeros(n, dtype=np.float64)
    ess[ok] = 1.0 / np.square(w[ok]).sum(axis=1)

    threshold = prior.settings.ess_threshold(s)
    flag = ~failed & (ess < threshold)

    indices = np.full((n, s), -1, dtype=np.int64)
    resampled = np.full(x.shape, np.nan, dtype=np.float32)
    if ok.any():
        u = _resampling_uniforms(seed, keys[ok], s, prior.settings.resample)
        cdf = np.cumsum(w[ok], axis=1)
        cdf /= cdf[:, -1:]          # last entry exactly 1: trailing zero weights never drawn
        idx = _search_sorted_rows(cdf, u)
        indices[ok] = idx
        resampled[ok] = np.take_along_axis(x[ok], idx[:, :, None], axis=1)
    return ReweightResult(weights=w, ess=ess, flag_low_ess=flag, resampled=resampled,
                          indices=indices, failed=failed, zero_support=zero_support,
                          ess_threshold=threshold)


_SALT = 0x5052494F52535253  # "PRIORSRS": keeps these streams apart from infer's


def _resampling_uniforms(seed: int, keys: np.ndarray, s: int, scheme: str) -> np.ndarray:
    """Sorted points (m, S) in [0, 1) for systematic or multinomial resampling of m sources.

    Each source's numbers are the SplitMix64 stream started at ``mix(seed, key)``.
    """
    from cvae_pms.seeds import GAMMA, keyed_state, mix64
    with np.errstate(over="ignore"):
        state = mix64(keyed_state(seed, keys, _SALT))
        count = 1 if scheme == "systematic" else s
        steps = np.arange(1, count + 1, dtype=np.uint64) * GAMMA
        bits = mix64(state[:, None] + steps[None, :])
    u = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    if scheme == "systematic":
        return (u + np.arange(s)[None, :]) / s
    return np.sort(u, axis=1)


def _search_sorted_rows(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise ``searchsorted(cdf[i], u[i], side='right')`` for sorted rows, clipped to S-1.

    Merges each row's cdf and points with one stable argsort along axis 1, so no loop over
    rows and no loss of precision.
    """
    m, s = cdf.shape
    merged = np.concatenate([cdf, u], axis=1)
    order = np.argsort(merged, axis=1, kind="stable")     # ties: cdf entries come first
    is_cdf = order < s
    below = np.cumsum(is_cdf, axis=1)                      # cdf entries <= each position
    idx = below[~is_cdf].reshape(m, u.shape[1])
    return np.minimum(idx, s - 1)
