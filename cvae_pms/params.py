"""The seven physical parameters: the single definition of names, units and bounds.

Every file format, plot label and CLI option reads the parameter table from here.
Bounds follow ``shared/design/ARCHITECTURE.md``.

Example
-------
>>> import numpy as np
>>> from cvae_pms import params
>>> x = np.array([[4000.0, 4.0, 0.0, -8.0, 0.01, 0.6, 1.0]])
>>> u = params.to_unit(x)
>>> bool(np.allclose(params.from_unit(u), x))
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae_pms.errors import CvaePmsError

#: Version of the parameter table; bump when names, order or bounds change.
PARAMS_VERSION = 1


@dataclass(frozen=True)
class Param:
    """One inferred parameter: machine name, display symbol, unit and box bounds."""

    name: str
    symbol: str
    unit: str
    low: float
    high: float
    description: str

    @property
    def label(self) -> str:
        """Plot label, e.g. ``T_eff [K]``."""
        return f"{self.symbol} [{self.unit}]" if self.unit else self.symbol


PARAMS: tuple[Param, ...] = (
    Param("teff", r"$T_\mathrm{eff}$", "K", 3000.0, 7000.0, "effective temperature"),
    Param("logg", r"$\log g$", "dex", 2.5, 5.0, "surface gravity, log10(g / cm s^-2)"),
    Param("mh", "[M/H]", "dex", -0.5, 1.0, "metallicity"),
    Param("log_mdot", r"$\log \dot M$", "dex", -11.0, -4.52,
          "mass accretion rate, log10(Mdot / Msun yr^-1)"),
    Param("ff", "$f$", "", 0.0, 0.3, "filling factor of accretion spots (fraction of surface)"),
    Param("mass", "$M$", "Msun", 0.25, 1.3, "stellar mass"),
    Param("a0", "$A_0$", "mag", 0.0, 10.0, "monochromatic extinction at 541.4 nm (Gaia DR3)"),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
N_PARAMS = len(PARAMS)
LOW = np.array([p.low for p in PARAMS], dtype=np.float64)
HIGH = np.array([p.high for p in PARAMS], dtype=np.float64)
BOUNDS = np.stack([LOW, HIGH], axis=1)  # (7, 2)
INDEX = {n: i for i, n in enumerate(NAMES)}


def to_unit(x: np.ndarray) -> np.ndarray:
    """Scale physical parameters (..., 7) to the unit box [0, 1] by the bounds."""
    x = np.asarray(x, dtype=np.float64)
    return (x - LOW) / (HIGH - LOW)


def from_unit(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_unit`: unit-box values (..., 7) to physical units."""
    u = np.asarray(u, dtype=np.float64)
    return LOW + u * (HIGH - LOW)


def outside_bounds(x: np.ndarray) -> np.ndarray:
    """Boolean mask (..., 7): True where a value lies outside its bounds or is not finite."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(x) | (x < LOW) | (x > HIGH)


def table_dict() -> dict:
    """The parameter table as a JSON-serialisable dict, stored with grids and models."""
    return {
        "version": PARAMS_VERSION,
        "params": [
            {"name": p.name, "unit": p.unit, "low": p.low, "high": p.high} for p in PARAMS
        ],
    }


class ParameterTableMismatch(CvaePmsError, ValueError):
    """A grid or model was made with another parameter table."""


def check_table(stored: dict, what: str) -> None:
    """Raise :class:`ParameterTableMismatch` if ``stored`` (from :func:`table_dict`) differs.

    ``what`` names the file or directory, for the message.
    """
    mine = table_dict()
    if stored.get("version") != mine["version"]:
        raise ParameterTableMismatch(
            f"{what}: parameter table version {stored.get('version')!r} "
            f"!= this cvae-pms's version {mine['version']}"
        )
    theirs = stored.get("params", [])
    if [p.get("name") for p in theirs] != list(NAMES):
        raise ParameterTableMismatch(
            f"{what}: parameters {[p.get('name') for p in theirs]} != {list(NAMES)}"
        )
    for p, q in zip(theirs, mine["params"]):
        if not (np.isclose(p["low"], q["low"]) and np.isclose(p["high"], q["high"])):
            raise ParameterTableMismatch(
                f"{what}: bounds of {p['name']} are [{p['low']}, {p['high']}], "
                f"expected [{q['low']}, {q['high']}]"
            )
