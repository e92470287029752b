"""What ``evaluate`` is asked to do: :class:`EvaluateConfig`, the G settings and the parsing
of the ``--g-mag``/``--transits`` style options; :class:`EvaluationError`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cvae_pms import ranges
from cvae_pms.errors import CvaePmsError


class EvaluationError(CvaePmsError):
    """Evaluation cannot run: bad option, incompatible run/grid (message says which)."""


@dataclass(frozen=True)
class GSetting:
    """One brightness setting: a fixed G (``low == high``) or a range drawn uniformly."""

    low: float
    high: float

    @property
    def is_range(self) -> bool:
        return self.high > self.low

    @property
    def label(self) -> str:
        """File-name safe label: ``15`` or ``12-17``."""
        return f"{self.low:g}-{self.high:g}" if self.is_range else f"{self.low:g}"


def parse_range(text: str, what: str, integer: bool = False) -> tuple[float, float]:
    """``'15'`` -> (15, 15); ``'12:17'`` -> (12, 17) (:func:`cvae_pms.ranges.parse_range`);
    raises :class:`EvaluationError`."""
    return ranges.parse_range(text, what, integer, EvaluationError)


def parse_g_mags(values: Sequence[str]) -> list[GSetting]:
    """G settings from repeated/comma-separated options: ``['12,15', '13:17']``."""
    out: list[GSetting] = []
    for v in values:
        for item in str(v).split(","):
            if item.strip():
                lo, hi = parse_range(item.strip(), "--g-mag")
                if not 3.0 <= lo <= hi <= 21.0:
                    raise EvaluationError(f"--g-mag {item!r}: G must lie within 3..21 mag")
                out.append(GSetting(lo, hi))
    if not out:
        raise EvaluationError("--g-mag: give at least one G magnitude")
    return list(dict.fromkeys(out))


@dataclass
class EvaluateConfig:
    """Everything ``evaluate`` needs; every default visible here."""

    run_dir: Path
    grid: Path
    out: Path
    g_settings: list[GSetting]
    rows: str = "test"                 # "test": the run's held-out rows; "all": every row
    n: int = 500                       # sources (random subset of the rows, seeded)
    transits: tuple[int, int] = (15, 80)
    samples: int = 1000
    seed: int = 0
    batch: int = 64
    parallax_error_frac: float = 0.05  # luminosity models: fractional error of the parallaxes
    reference: int = 0                 # sources with exact-likelihood reference posteriors
    reference_sampler: str = "dynesty"  # "dynesty" (nested sampling, calibrated) or "emcee"
    emcee_max_steps: int = 30000
    nlive: int = 250                   # dynesty live points
    fisher: bool = True                # Fisher (Cramer-Rao) forecast of the accuracy limit
    baseline: bool = True
    baseline_rows: int = 20000         # noisy training rows for the baseline
    baseline_max_iter: int = 300
    sbc_bins: int = 20
    magnitude_bin_width: float = 1.0
    extra: dict = field(default_factory=dict)
