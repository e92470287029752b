#!/usr/bin/env python
"""Download Gaia DR3 XP continuous mean spectra for a list of source_ids into one archive CSV.

The output is the Gaia archive ``XP_CONTINUOUS`` / ``COMBINED`` CSV layout (``source_id``,
``bp_coefficients``, ``bp_coefficient_errors``, ``bp_coefficient_correlations``, ... as
bracketed arrays) plus ``parallax``, ``parallax_error``, ``ra``, ``dec``,
``phot_g_mean_mag`` from ``gaiadr3.gaia_source``: the file ``cvae-pms infer`` reads.

How it works: ids are split into batches of at most 5000 (the DataLink limit); each batch is
fetched with astroquery (``Gaia.load_data(..., retrieval_type='XP_CONTINUOUS',
data_structure='COMBINED', format='csv')`` for the spectra, an uploaded-table ADQL join on
``gaiadr3.gaia_source`` for the astrometry), retried with exponential backoff, and cached as
``<cache>/batch_<k>_<hash>.csv``; a rerun reuses finished batches. The batches are then
concatenated into the output atomically. Ids without an XP spectrum are listed in
``<out>.missing.txt``.

Usage::

    python scripts/download_xp.py ids.txt --out xp.csv [--batch 5000] [--cache DIR]
        [--retries 5] [--backoff 2]

``ids.txt``: one source_id per line (``#`` comments allowed), or a CSV/ECSV table with a
``source_id`` column.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from astropy.table import Table

BATCH_MAX = 5000
ASTROMETRY_COLUMNS = ("parallax", "parallax_error", "ra", "dec", "phot_g_mean_mag")


class DownloadError(Exception):
    """A batch could not be fetched after all retries, or the id list is unusable."""


class ArchiveClient(Protocol):
    """What the downloader needs from the archive (real: :class:`AstroqueryClient`)."""

    def xp_table(self, ids: Sequence[int]) -> Table:
        """XP continuous spectra (archive CSV layout) of these ids; missing ids are absent."""

    def astrometry_table(self, ids: Sequence[int]) -> Table:
        """``source_id`` + :data:`ASTROMETRY_COLUMNS` from ``gaiadr3.gaia_source``."""


class AstroqueryClient:
    """The Gaia archive through ``astroquery.gaia`` (imported lazily: needs network)."""

    def __init__(self) -> None:
        from astroquery.gaia import Gaia

        self._gaia = Gaia

    def xp_table(self, ids: Sequence[int]) -> Table:
        files = self._gaia.load_data(ids=[int(i) for i in ids], data_release="Gaia DR3",
                                     retrieval_type="XP_CONTINUOUS",
                                     data_structure="COMBINED", format="csv")
        tables = [t for group in files.values() for t in group]
        if not tables:
            return Table()
        if len(tables) > 1:
            from astropy.table import vstack

            return vstack(tables)
        return tables[0]

    def astrometry_table(self, ids: Sequence[int]) -> Table:
        cols = ", ".join(f"g.{c}" for c in ASTROMETRY_COLUMNS)
        query = (f"SELECT g.source_id, {cols} FROM gaiadr3.gaia_source AS g "
                 f"JOIN tap_upload.ids AS u ON g.source_id = u.source_id")
        with tempfile.TemporaryDirectory() as tmp:
            upload = Path(tmp) / "ids.xml"
            Table({"source_id": np.asarray(ids, dtype=np.int64)}).write(
                upload, format="votable")
            job = self._gaia.launch_job_async(query, upload_resource=str(upload),
                                              upload_table_name="ids")
            return job.get_results()


def read_source_ids(path: str | os.PathLike) -> np.ndarray:
    """Unique source_ids (int64, first-seen order) from a text list or a table with source_id."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{path}: no such id list")
    if path.suffix.lower() in (".csv", ".ecsv"):
        t = Table.read(path, format="ascii.ecsv" if path.suffix.lower() == ".ecsv" else "ascii.csv")
        if "source_id" not in t.colnames:
            raise DownloadError(f"{path}: table has no source_id column")
        ids = np.asarray(t["source_id"], dtype=np.int64)
    else:
        values = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                values.append(int(line))
            except ValueError:
                raise DownloadError(f"{path}, line {lineno}: {line!r} is not a source_id") from None
        ids = np.asarray(values, dtype=np.int64)
    if ids.size == 0:
        raise DownloadError(f"{path}: no source_id")
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def with_retries(fn: Callable[[], Table], what: str, retries: int = 5, backoff_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> Table:
    """Call ``fn``; on an exception wait ``backoff_s * 2**attempt`` and retry (``retries`` times)."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # network stacks raise many exception types
            if attempt == retries:
                raise DownloadError(f"{what}: failed after {retries + 1} attempts: {exc}") from exc
            wait = backoff_s * 2 ** attempt
            print(f"{what}: {type(exc).__name__}: {exc}; retrying in {wait:g} s", file=sys.stderr)
            sleep(wait)
    raise AssertionError("unreachable")


def _add_astrometry(xp: Table, astro: Table) -> Table:
    """Append ASTROMETRY_COLUMNS to ``xp`` by source_id (NaN where the archive has none)."""
    sid = np.asarray(xp["source_id"], dtype=np.int64)
    a_sid = np.asarray(astro["source_id"], dtype=np.int64) if len(astro) else np.zeros(0, np.int64)
    order = np.argsort(a_sid)
    pos = np.searchsorted(a_sid[order], sid)
    pos = np.clip(pos, 0, max(a_sid.size - 1, 0))
    found = a_sid.size > 0
    hit = (a_sid[order][pos] == sid) if found else np.zeros(sid.size, bool)
    for col in ASTROMETRY_COLUMNS:
        values = np.full(sid.size, np.nan)
        if found and col in astro.colnames:
            src = np.ma.filled(np.ma.asarray(astro[col], dtype=float), np.nan)[order]
            values[hit] = src[pos[hit]]
        if col in xp.colnames:
            xp.remove_column(col)
        xp[col] = values
    return xp


def _atomic_write(table: Table, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        table.write(tmp, format="ascii.csv", overwrite=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch_batch(client: ArchiveClient, ids: np.ndarray, cache_file: Path, retries: int = 5,
                backoff_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch one batch (spectra + astrometry) into ``cache_file`` unless it is already there."""
    if cache_file.exists():
        return cache_file
    xp = with_retries(lambda: client.xp_table(ids), f"{cache_file.name} XP spectra",
                      retries, backoff_s, sleep)
    if len(xp) and "source_id" not in xp.colnames:
        raise DownloadError(f"{cache_file.name}: archive answer has no source_id column")
    if len(xp):
        astro = with_retries(lambda: client.astrometry_table(ids),
                             f"{cache_file.name} astrometry", retries, backoff_s, sleep)
        _atomic_write(_add_astrometry(xp, astro), cache_file)
    else:
        cache_file.with_suffix(".empty").touch()
        return cache_file.with_suffix(".empty")
    return cache_file


def _concat_csv(parts: list[Path], out: Path) -> int:
    """Concatenate CSV files with identical headers into ``out`` atomically; returns rows."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    header = None
    rows = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as dst:
            for part in parts:
                with open(part, encoding="utf-8", newline="") as src:
                    head = src.readline()
                    if header is None:
                        header = head
                        dst.write(head)
                    elif head != header:
                        raise DownloadError(f"{part}: columns differ from the first batch's")
                    for line in src:
                        dst.write(line)
                        rows += 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows


def download_xp(ids: np.ndarray, out: str | os.PathLike, client: ArchiveClient | None = None,
                batch: int = BATCH_MAX, cache_dir: str | os.PathLike | None = None,
                retries: int = 5, backoff_s: float = 2.0,
                sleep: Callable[[float], None] = time.sleep) -> dict:
    """Download XP spectra of ``ids`` to the archive CSV ``out``; returns counts and paths.

    ``batch`` ids per archive call (1..5000); ``cache_dir`` holds one CSV per finished batch
    (default ``<out>.cache/``). Raises :class:`DownloadError` when no id has a spectrum.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise DownloadError(f"{out}: directory {out.parent} does not exist")
    if not 1 <= batch <= BATCH_MAX:
        raise DownloadError(f"batch size {batch} outside 1..{BATCH_MAX}")
    ids = np.asarray(ids, dtype=np.int64)
    cache = Path(cache_dir) if cache_dir else out.with_name(out.name + ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    client = client or AstroqueryClient()
    parts = []
    for k, start in enumerate(range(0, ids.size, batch)):
        chunk = ids[start:start + batch]
        digest = hashlib.sha1(chunk.tobytes()).hexdigest()[:12]
        empty = cache / f"batch_{k:05d}_{digest}.empty"
        part = empty if empty.exists() else fetch_batch(
            client, chunk, cache / f"batch_{k:05d}_{digest}.csv", retries, backoff_s, sleep)
        print(f"batch {k + 1}/{-(-ids.size // batch)}: {part.name}", file=sys.stderr)
        if part.suffix == ".csv":
            parts.append(part)
    if not parts:
        raise DownloadError(f"none of the {ids.size} source_ids has an XP spectrum")
    rows = _concat_csv(parts, out)
    got = np.concatenate([np.asarray(Table.read(p, format="ascii.csv", include_names=["source_id"])
                                     ["source_id"], dtype=np.int64) for p in parts])
    missing = np.setdiff1d(ids, got)
    missing_file = out.with_name(out.name + ".missing.txt")
    if missing.size:
        missing_file.write_text("".join(f"{i}\n" for i in missing))
    elif missing_file.exists():
        missing_file.unlink()
    return {"out": out, "rows": rows, "requested": int(ids.size), "missing": int(missing.size),
            "batches": -(-ids.size // batch), "cache": cache}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", help="text file with one source_id per line, or CSV/ECSV with source_id")
    ap.add_argument("--out", required=True, help="output archive CSV")
    ap.add_argument("--batch", type=int, default=BATCH_MAX, help="ids per archive call (<= 5000)")
    ap.add_argument("--cache", default=None, help="batch cache folder (default <out>.cache)")
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--backoff", type=float, default=2.0, help="first retry wait, s (doubles)")
    a = ap.parse_args(argv)
    try:
        result = download_xp(read_source_ids(a.ids), a.out, batch=a.batch, cache_dir=a.cache,
                             retries=a.retries, backoff_s=a.backoff)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result['rows']} spectra to {result['out']} "
          f"({result['missing']} of {result['requested']} ids without XP spectrum)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
