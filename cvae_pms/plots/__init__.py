"""Figures drawn from numbers that exist first in files (posterior files, summary tables),
and :func:`plain_text`, the one matplotlib set-up every figure in the package draws under."""
from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator


@contextmanager
def plain_text() -> Iterator[None]:
    """Draw with the Agg backend and matplotlib's own text engine.

    gaiaxpy's plotter sets ``rcParams['text.usetex'] = True`` when it is imported, which needs
    a LaTeX installation; every figure of this package is drawn inside this context instead.
    """
    import matplotlib
    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.usetex": False}):
        yield
