"""``--resume`` of ``cvae-pms infer``: which partial results can be continued, and keeping them.

An interrupted run leaves ``OUT.partial`` (completed rows kept by :func:`keep_partial`), or,
when killed, ``OUT.tmp-<pid>``; an existing ``OUT`` can be extended with more inputs.
:func:`candidates` lists them newest first, :func:`pick_source` takes the newest made with the
same model, seed, S, prior, parallax and goodness-of-fit settings (damaged files are skipped)
and :func:`done_keys` says which (input file, input row) pairs it already holds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from cvae_pms import posterior_file as pf
from cvae_pms.errors import CvaePmsError


class ResumeError(CvaePmsError):
    """Every readable resume candidate was made with other settings."""


def partial_path(out: str | os.PathLike) -> Path:
    """``OUT.partial``: the completed rows of an interrupted run of ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def tmp_path(out: str | os.PathLike, pid: int | None = None) -> Path:
    """``OUT.tmp-<pid>``: the file process ``pid`` (default: this one) writes ``out`` to."""
    out = Path(out)
    return out.with_name(f"{out.name}.tmp-{os.getpid() if pid is None else pid}")


def candidates(out: str | os.PathLike) -> list[Path]:
    """Files an ``--resume`` of ``out`` may continue, newest first: ``OUT.partial``, the
    ``OUT.tmp-<pid>`` of killed processes, and ``OUT`` itself."""
    from cvae_pms.outputs import pid_alive

    out = Path(out)
    found = []
    partial = partial_path(out)
    if partial.is_file():
        found.append(partial)
    for tmp in out.parent.glob(out.name + ".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid) and tmp.is_file():
            found.append(tmp)
    if out.is_file():
        found.append(out)
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _check_resume_file(path: Path, n_samples: int, expect: dict, attrs: dict,
                       keep_raw: bool) -> int:
    """Completed rows of a resume candidate; :class:`PosteriorFileError` when it was made with
    other settings, any other exception when it is damaged."""
    import h5py
    with h5py.File(path, "r") as f:
        pf.check_compatible(f, path, n_samples=n_samples, expect=expect)
        n = int(f.attrs["n_complete"])
        for name in ("source_id", "status", "input_file", "samples"):
            if f[name].shape[0] < n:
                raise ValueError(f"{name} has {f[name].shape[0]} rows < n_complete {n}")
        if n:
            f["source_id"][n - 1], f["samples"][n - 1]  # readable to the last complete row
    _check_resume_settings(path, attrs, keep_raw)
    return n


def pick_source(candidates: list[Path], n_samples: int, expect: dict, attrs: dict,
                keep_raw: bool, log: Callable[[str], None] | None) -> Path | None:
    """The newest candidate made with the same model and settings; damaged ones are skipped
    (said in the log). Raises :class:`ResumeError` when every readable one has other settings."""
    mismatch = None
    for c in candidates:
        try:
            _check_resume_file(c, n_samples, expect, attrs, keep_raw)
            return c
        except pf.PosteriorFileError as exc:
            mismatch = mismatch or (c, exc)
            if log:
                log(f"{c}: not resumable with these settings ({exc})")
        except Exception as exc:  # noqa: BLE001 - any failure to read it means damage
            if log:
                log(f"{c}: damaged, not used ({type(exc).__name__}: {exc})")
    if mismatch is not None:
        raise ResumeError(f"cannot resume from {mismatch[0]}: {mismatch[1]}")
    if candidates and log:
        log("no usable partial results: starting from the beginning")
    return None


def complete_rows(path: Path) -> int:
    """``n_complete`` of a posterior file; -1 when it cannot be read."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("n_complete", 0))
    except Exception:  # noqa: BLE001
        return -1


def done_keys(tmp: Path) -> tuple[dict, dict]:
    """From a resumed file: per input file the keys already done (``("row", sorted input
    rows)``, or ``("id", sorted source_ids)`` for files written before ``input_row``) and the
    (source_id, output row, input row) arrays of its rows (for the duplicate flags)."""
    files, ids, rows = pf.completed_rows(tmp)
    done, seen = {}, {}
    if not files.size:
        return done, seen
    names, inv = np.unique(files, return_inverse=True)
    for k, name in enumerate(names):
        out_rows = np.flatnonzero(inv == k)
        f_ids = ids[out_rows]
        f_rows = rows[out_rows] if rows is not None else np.full(out_rows.size, -1, np.int64)
        legacy = rows is None or (f_rows < 0).any()
        done[str(name)] = ("id", np.sort(f_ids)) if legacy else ("row", np.sort(f_rows))
        seen[str(name)] = [(f_ids, out_rows, f_rows)]
    return done, seen


def keep_partial(tmp: Path, partial: Path, leftovers: list[Path], exc: BaseException,
                  log: Callable[[str], None] | None) -> None:
    """After an interruption or error: keep completed rows as ``OUT.partial`` (superseding
    older partial results), or remove a temporary file without any."""
    if not tmp.exists():
        return
    if complete_rows(tmp) == 0:
        tmp.unlink()
        return
    os.replace(tmp, partial)
    for old in leftovers:
        if old != partial:
            old.unlink(missing_ok=True)
    if log and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
        log(f"completed sources kept in {partial}: fix the problem and rerun with --resume")


def _check_resume_settings(path: Path, attrs: dict, keep_raw: bool) -> None:
    """Refuse to resume a posterior file made with another prior or parallax settings."""
    import h5py
    with h5py.File(path, "r") as f:
        for key in ("prior", "parallax_zero_point_mas", "min_parallax_over_error",
                    "astrometry", "gof_draws", "gof_threshold"):
            have = f.attrs.get(key, "" if key in ("prior", "astrometry")
                               else 0 if key == "gof_draws" else float("nan"))
            have = have.decode() if isinstance(have, bytes) else have
            want = attrs[key]
            same = (str(have) == str(want) if isinstance(want, str)
                    else (np.isnan(float(have)) and np.isnan(want)) or float(have) == want)
            if not same:
                hint = (" (rerun with the same --gof/--no-gof, --gof-draws and "
                        "--poor-fit-threshold)" if key.startswith("gof_") else "")
                raise pf.PosteriorFileError(f"made with {key} = {have!r}, this run uses "
                                            f"{want!r}; use another --out{hint}")
        has_raw = "samples_raw" in f
    if has_raw != bool(keep_raw):
        raise pf.PosteriorFileError(f"made {'with' if has_raw else 'without'} --keep-raw; "
                                    f"rerun the same way or use another --out")
