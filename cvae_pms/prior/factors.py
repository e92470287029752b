"""The factor types a prior file may list (:data:`FACTOR_TYPES`: ``normal``, ``lognormal``,
``uniform``, ``chabrier_imf``, ``relation``): how each ``[[factor]]`` table is read and checked,
and the :class:`Factor` (log density) it becomes; :class:`PriorError`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cvae_pms import params
from cvae_pms.errors import CvaePmsError
from cvae_pms.prior.densities import CHABRIER_FORMS, CHABRIER_X, _chabrier_log_pdf, _normal_logpdf

_BOX_TOL = 1e-6  # samples this fraction of the range outside the box count as on the edge


class PriorError(CvaePmsError, ValueError):
    """A prior file or prior dict is malformed (the message names the file and the factor/key)."""


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
