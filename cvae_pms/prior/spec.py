"""A user prior as a whole: :class:`Prior` (the product of its factors, ``-inf`` outside the
box) and its ``[settings]``, built from a dict in the TOML layout (:func:`prior_from_dict`) or
read from a prior file or a shipped prior's name (:func:`load_prior`, :data:`PRIOR_DIR`)."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvae_pms import params
from cvae_pms.prior.factors import _BOX_TOL, FACTOR_TYPES, Factor, PriorError, _Keys

#: Default ESS threshold (absolute number of effective samples) below which a source is flagged.
DEFAULT_ESS_MIN = 50.0
RESAMPLERS = ("systematic", "multinomial")


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
PRIOR_DIR = Path(__file__).resolve().parents[1] / "recipes" / "priors"


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
