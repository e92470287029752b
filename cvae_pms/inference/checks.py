"""The checks of infer's inputs and outputs: :func:`check_paths` (before anything is loaded)
and the flagging of source_ids that occur in more than one row of an input file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cvae_pms import posterior_file as pf
from cvae_pms.inference.model import InferError


def check_paths(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                summary: str | os.PathLike | None = None, *, overwrite: bool = False,
                plots: str | os.PathLike | None = None,
                truth: str | os.PathLike | None = None, out_is_stem: bool = False) -> list[Path]:
    """Fail early (before loading anything): missing inputs, unknown formats, an input given
    twice; outputs whose folder is missing or read-only, or that exist already (unless
    ``overwrite``; ``out_is_stem``: ``out`` only names the per-input files, see
    :mod:`cvae_pms.scaleout`)."""
    from cvae_pms.outputs import OutputError, check_output_dir, check_output_file
    from cvae_pms.xp.archive import XPReadError, xp_format

    out = Path(out)
    try:
        check_output_file(out, overwrite=overwrite or out_is_stem, what="output")
        if summary is not None:
            s = Path(summary)
            if s.suffix.lower() not in (".ecsv", ".csv", ".fits"):
                raise InferError(f"{s}: summary must end in .ecsv, .csv or .fits")
            check_output_file(s, overwrite=overwrite, what="summary")
        if plots is not None:
            check_output_dir(plots, what="plot directory")
    except OutputError as exc:
        raise InferError(str(exc)) from exc
    if truth is not None and not Path(truth).is_file():
        raise InferError(f"{truth}: no such truth table")
    if not inputs:
        raise InferError("no input file given")
    paths, seen = [], set()
    for p in inputs:
        p = Path(p)
        if not p.is_file():
            raise InferError(f"{p}: no such input file")
        try:
            xp_format(p)
        except XPReadError as exc:
            raise InferError(str(exc)) from exc
        if os.path.abspath(p) in seen:
            raise InferError(f"{p}: input file given twice")
        seen.add(os.path.abspath(p))
        paths.append(p)
    return paths


def _flag_duplicates(writer: "pf.PosteriorWriter", parts: list) -> tuple[int, int, str]:
    """Flag every row whose source_id occurs more than once among ``parts`` (one input file's
    rows: (source_id, output row, input row) arrays). Returns (rows, ids, an example)."""
    if not parts:
        return 0, 0, ""
    ids = np.concatenate([p[0] for p in parts])
    out_rows = np.concatenate([p[1] for p in parts])
    in_rows = np.concatenate([p[2] for p in parts])
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    same = s[1:] == s[:-1]
    mask = np.zeros(s.size, bool)
    mask[1:] |= same
    mask[:-1] |= same
    dup = order[mask]
    if not dup.size:
        return 0, 0, ""
    writer.set_flag(out_rows[dup], pf.FLAG_DUPLICATE_SOURCE_ID)
    first = s[mask][0]
    at = np.sort(in_rows[ids == first])
    example = f"source_id {first} at input rows {', '.join(str(r) for r in at[:5])}"
    return int(dup.size), int(np.unique(ids[dup]).size), example


class DuplicateSourceIdWarning(UserWarning):
    """An input file lists a source_id in more than one row (rows flagged, none dropped)."""


def _warn(log: Callable[[str], None] | None, text: str) -> None:
    if log:
        log(f"warning: {text}")
    else:
        import warnings
        warnings.warn(text, DuplicateSourceIdWarning, stacklevel=3)
