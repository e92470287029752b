"""The grid file format (version 1, spec in ``grids/README.md``): constants, meta and hash.

What both :mod:`cvae_pms.grid.grid_writer` and the reader in :mod:`cvae_pms.grid.gridfile`
share: dataset names and widths, :class:`GridError`, how ``meta`` attributes are normalised,
stored and read back (JSON for nested values), and the streaming content hash
(:class:`ContentHasher`, SHA-256 over the numeric datasets and the hashed meta).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

import h5py
import numpy as np

from cvae_pms import params as P
from cvae_pms.errors import CvaePmsError
from cvae_pms.io.json_ready import json_ready

FORMAT_VERSION = 1
N_COEFF = 55
N_FLUX = 343
#: Wavelengths of ``sampled_flux`` [nm].
FLUX_WAVELENGTH_NM = np.arange(336.0, 1020.0 + 1.0, 2.0)
#: Numeric datasets, in the order they enter the content hash.
DATASETS = ("params", "bp_coefficients", "rp_coefficients", "sampled_flux")
WIDTHS = {"params": P.N_PARAMS, "bp_coefficients": N_COEFF, "rp_coefficients": N_COEFF,
          "sampled_flux": N_FLUX}
#: Meta attributes that are left out of the content hash.
UNHASHED_META = ("created_utc", "creator", "content_hash", "json_keys")
#: Meta attributes always stored as JSON strings.
JSON_META = ("param_table", "forward_model", "ingest")
CHUNK_ROWS = 4096
MAX_REPORTED_ROWS = 5


class GridError(CvaePmsError):
    """A grid file is missing, unreadable or inconsistent (the message names the file/rows)."""


def package_version() -> str:
    """The installed cvae-pms version (a fallback string when run from a bare source tree)."""
    try:
        from importlib.metadata import version
        return version("cvae-pms")
    except Exception:  # package metadata absent (source tree without install)
        return "unknown"


def _plain(value: Any) -> Any:
    """JSON-ready meta value; NaN as the string "NaN", infinities kept (the hashed rule)."""
    return json_ready(value, nan="NaN", keep_inf=True)


def canonical_meta_json(meta: dict) -> str:
    """Canonical JSON of the meta that enters the content hash (sorted keys, no timestamps)."""
    kept = {k: v for k, v in meta.items() if k not in UNHASHED_META}
    return json.dumps(_plain(kept), sort_keys=True, separators=(",", ":"))


class ContentHasher:
    """sha256 over each numeric dataset's little-endian float64 bytes (streamed), then meta."""

    def __init__(self) -> None:
        self._parts = {name: hashlib.sha256() for name in DATASETS}
        self._rows = dict.fromkeys(DATASETS, 0)

    def update(self, name: str, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype="<f8")
        self._parts[name].update(block.tobytes())
        self._rows[name] += block.shape[0]

    def hexdigest(self, meta: dict, present: tuple[str, ...]) -> str:
        total = hashlib.sha256()
        for name in DATASETS:
            if name in present:
                total.update(f"{name}:{self._rows[name]}x{WIDTHS[name]}:".encode())
                total.update(self._parts[name].digest())
        total.update(canonical_meta_json(meta).encode())
        return total.hexdigest()


def rows_text(rows: np.ndarray, offset: int = 0) -> str:
    rows = np.asarray(rows) + offset
    shown = ", ".join(str(int(r)) for r in rows[:MAX_REPORTED_ROWS])
    return shown + (", ..." if rows.size > MAX_REPORTED_ROWS else "")


def default_meta() -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "creator": f"cvae-pms {package_version()}",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "param_table": P.table_dict(),
        "forward_model": {},
        "random_seed": -1,
        "reference_distance_pc": float("nan"),
        "source": "",
    }


def normalise_meta(meta: dict) -> dict:
    """Defaults + user meta, with dict/list values normalised through JSON (as stored)."""
    out = default_meta()
    out.update(meta)
    out["format_version"] = FORMAT_VERSION
    for key, value in list(out.items()):
        if isinstance(value, (dict, list, tuple)):
            out[key] = json.loads(json.dumps(_plain(value)))
        elif value is None:
            out[key] = ""
    return out


def write_meta_attrs(group: h5py.Group, meta: dict) -> None:
    json_keys = sorted(k for k, v in meta.items() if isinstance(v, (dict, list)) or k in JSON_META)
    for key, value in meta.items():
        if key in json_keys:
            group.attrs[key] = json.dumps(_plain(value), sort_keys=True)
        elif isinstance(value, bool):
            group.attrs[key] = np.bool_(value)
        elif isinstance(value, (int, np.integer)):
            group.attrs[key] = np.int64(value)
        elif isinstance(value, (float, np.floating)):
            group.attrs[key] = np.float64(value)
        else:
            group.attrs[key] = str(value)
    group.attrs["json_keys"] = json.dumps(json_keys)


def read_meta_attrs(group: h5py.Group) -> dict:
    json_keys = set(json.loads(group.attrs.get("json_keys", "[]"))) | set(JSON_META)
    meta: dict = {}
    for key, value in group.attrs.items():
        if key == "json_keys":
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and key in json_keys:
            value = json.loads(value)
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        elif isinstance(value, np.bool_):
            value = bool(value)
        meta[key] = value
    return meta
