"""Write the calibrated sampled flux of any XP file to HDF5 (``cvae-pms xp sample``).

Kept apart from :mod:`cvae_pms.xp.sampling` (pure numpy, no file reading) so the readers in
:mod:`cvae_pms.xp.archive` can use the sampling matrices without an import cycle.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from cvae_pms.atomic import atomic_path

from .archive import XPReadError, iter_xp
from .sampling import SAMPLING_NM, sampled_flux, sampled_flux_error


def write_sampled_flux(xp_path: str | os.PathLike, out_path: str | os.PathLike,
                       chunk_size: int = 10000) -> dict[str, object]:
    """Stream an XP archive file into an HDF5 file of sampled flux, atomically.

    Datasets: ``source_id`` (n,) int64, ``wavelength_nm`` (343,), ``flux`` and ``flux_error``
    (n, 343) float64 in W m^-2 nm^-1 (NaN rows for flagged sources), ``error`` (n,) str
    ('' when usable). Root attributes: ``flux_unit``, ``wavelength_unit``, ``input_file``,
    ``n_sources``, ``n_ok``, ``passed_through`` (1 when the input was already sampled: its flux
    and flux_error are copied, in W m^-2 nm^-1). Written to a temporary sibling and renamed
    when complete.

    Raises:
        XPReadError: the input is not a readable XP file, or the output folder does not exist.
    """
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise XPReadError(f"{out_path}: output directory {out_path.parent} does not exist")
    n = n_ok = 0
    passed = False
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            m = len(SAMPLING_NM)
            h5.create_dataset("wavelength_nm", data=np.asarray(SAMPLING_NM))
            h5["wavelength_nm"].attrs["unit"] = "nm"
            sid = h5.create_dataset("source_id", shape=(0,), maxshape=(None,), dtype=np.int64,
                                    chunks=(4096,))
            flux = h5.create_dataset("flux", shape=(0, m), maxshape=(None, m), dtype=np.float64,
                                     chunks=(256, m))
            err = h5.create_dataset("flux_error", shape=(0, m), maxshape=(None, m),
                                    dtype=np.float64, chunks=(256, m))
            msg = h5.create_dataset("error", shape=(0,), maxshape=(None,),
                                    dtype=h5py.string_dtype(), chunks=(4096,))
            for batch in iter_xp(xp_path, chunk_size=chunk_size):
                k = len(batch)
                for ds in (sid, flux, err, msg):
                    ds.resize(n + k, axis=0)
                sid[n:n + k] = batch.source_id
                passed = batch.sampled
                if batch.sampled:
                    flux[n:n + k] = batch.flux
                    err[n:n + k] = batch.flux_error
                else:
                    flux[n:n + k] = sampled_flux(batch.bp_coefficients, batch.rp_coefficients)
                    err[n:n + k] = sampled_flux_error(batch.bp_covariance, batch.rp_covariance)
                msg[n:n + k] = [str(e) for e in batch.error]
                n += k
                n_ok += int(batch.ok.sum())
            for ds in (flux, err):
                ds.attrs["unit"] = "W m^-2 nm^-1"
            h5.attrs.update({"flux_unit": "W m^-2 nm^-1", "wavelength_unit": "nm",
                             "input_file": os.path.abspath(os.fspath(xp_path)),
                             "n_sources": n, "n_ok": n_ok, "passed_through": int(passed),
                             "description": (
                                 "Gaia XP sampled flux passed through from a sampled input"
                                 if passed else "Gaia XP calibrated sampled flux (gaiaxpy "
                                 "default sampling, numpy port of gaiaxpy.calibrate)")})
    return {"path": str(out_path), "n_sources": n, "n_ok": n_ok, "passed_through": passed}
