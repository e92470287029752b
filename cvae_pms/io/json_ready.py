"""numpy/Path values -> plain JSON values: the one conversion every JSON writer uses.

Non-finite floats become ``None`` (JSON ``null``; written with ``allow_nan=False`` so no
invalid ``NaN`` token reaches a file), except where a format fixes another rule: grid meta
keeps the string ``"NaN"`` and infinities as they are (``nan="NaN", keep_inf=True``) because
its canonical JSON enters the grid's content hash.

>>> json_ready({"a": np.float32(1.5), "b": [np.nan, np.int64(2)], "c": Path("x")})
{'a': 1.5, 'b': [None, 2], 'c': 'x'}
>>> json_ready([float("nan"), float("inf")], nan="NaN", keep_inf=True)
['NaN', inf]
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def json_ready(value: Any, nan: Any = None, keep_inf: bool = False) -> Any:
    """Copy of ``value`` with dicts (str keys), lists, Python numbers, str and None only.

    numpy arrays and scalars become lists / int / float / bool, tuples and sets lists, bytes
    and paths str; NaN (and +-inf unless ``keep_inf``) become ``nan`` (default None).
    """
    if isinstance(value, dict):
        return {str(k): json_ready(v, nan, keep_inf) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_ready(v, nan, keep_inf) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist(), nan, keep_inf)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not keep_inf):
            return nan
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, Path):
        return str(value)
    return value
