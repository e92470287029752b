"""Parse ``LOW:HIGH`` option values (``--g-mag 12:17``, ``--transits 15:80``): one definition."""
from __future__ import annotations

import math

from cvae_pms.errors import CvaePmsError


class RangeError(CvaePmsError, ValueError):
    """An option value is not a number or a LOW:HIGH range."""


def parse_range(text: str, what: str, integer: bool = False,
                error: type[Exception] = RangeError) -> tuple[float, float]:
    """``'15'`` -> (15, 15); ``'12:17'`` -> (12, 17).

    Checks that both ends are finite with LOW <= HIGH (and, with ``integer``, integers >= 1);
    otherwise raises ``error`` with a message naming the option ``what`` and the text.
    """
    parts = str(text).split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise error(f"{what} {text!r}: expected a number or LOW:HIGH") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] > values[1]:
        raise error(f"{what} {text!r}: expected a number or LOW:HIGH with LOW <= HIGH")
    lo, hi = values
    if integer and (lo != int(lo) or hi != int(hi) or lo < 1):
        raise error(f"{what} {text!r}: expected integers >= 1")
    return lo, hi
