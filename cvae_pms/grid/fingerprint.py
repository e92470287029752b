"""A grid's numerical fingerprint: what tells the same grid regenerated on another CPU
from a different grid, where the content hash cannot.

The same ``cvae-pms grid synth`` command with the same code and packages gives a different
content hash on an AVX2 CPU than on an AVX-512 one (measured 2026-12-07: 464d3b80... vs
7472f9f3... for ``--n 160000 --seed 0``): numpy's vectorised math differs in the last bits.
The fingerprint holds per-column float64 sums and absolute sums of every numeric dataset
and the hashed metadata less ``package_versions``; two grids match when the metadata agree
and every sum agrees to :data:`FINGERPRINT_RTOL` of its absolute sum (rounding differences
are ~1e-15; another grid, or one row changed beyond rounding, is far outside).
"""
from __future__ import annotations

import json

import numpy as np

from .format import DATASETS, UNHASHED_META, canonical_meta_json

#: Tolerance of a fingerprint sum, relative to the column's sum of absolute values.
FINGERPRINT_RTOL = 1e-9
#: Metadata left out of the fingerprint's comparison (a regeneration may use newer packages).
UNCOMPARED_META = UNHASHED_META + ("package_versions",)


def grid_fingerprint(grid, chunk_size: int = 65536) -> dict:
    """Fingerprint of an open :class:`~cvae_pms.grid.gridfile.Grid` (streamed in chunks):
    ``{"rows": n, "meta": canonical JSON, "<dataset>": {"sum": [...], "abs_sum": [...]}}``."""
    names = [n for n in DATASETS if n != "sampled_flux" or grid.has_sampled_flux]
    acc = {n: [0.0, 0.0] for n in names}
    for start in range(0, grid.n, chunk_size):
        sl = slice(start, min(start + chunk_size, grid.n))
        for name in names:
            block = np.asarray(grid._read(name, sl), dtype=np.float64)
            acc[name][0] = acc[name][0] + block.sum(axis=0)
            acc[name][1] = acc[name][1] + np.abs(block).sum(axis=0)
    meta = {k: v for k, v in grid.meta.items() if k not in UNCOMPARED_META}
    out: dict = {"rows": int(grid.n), "meta": canonical_meta_json(meta)}
    for name, (s, a) in acc.items():
        out[name] = {"sum": np.atleast_1d(s).tolist(), "abs_sum": np.atleast_1d(a).tolist()}
    return out


def fingerprint_difference(expected: dict, actual: dict) -> str:
    """'' when ``actual`` is the grid of ``expected`` (up to rounding), else what differs."""
    if expected.get("rows") != actual.get("rows"):
        return f"{actual.get('rows')} rows, not {expected.get('rows')}"
    if expected.get("meta") != actual.get("meta"):
        a, b = json.loads(expected["meta"]), json.loads(actual["meta"])
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"metadata differ ({', '.join(keys)})"
    for name in DATASETS:
        if (name in expected) != (name in actual):
            return f"dataset {name} present in only one of them"
        if name not in expected:
            continue
        s0, s1 = np.asarray(expected[name]["sum"]), np.asarray(actual[name]["sum"])
        scale = np.maximum(np.asarray(expected[name]["abs_sum"]), np.finfo(float).tiny)
        if s0.shape != s1.shape:
            return f"{name} has {s1.size} columns, not {s0.size}"
        rel = np.abs(s1 - s0) / scale
        if np.any(rel > FINGERPRINT_RTOL):
            j = int(np.argmax(rel))
            return f"{name} column {j} sums differ by {rel[j]:.2g} (relative)"
    return ""
