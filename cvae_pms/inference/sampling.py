"""Per-source keyed posterior sampling: the one sampler of ``infer``, the Python API and ``evaluate``.

The samples of a source depend only on (model, global seed, source_id, S): each source is
sampled with its own key (:func:`cvae_pms.seeds.source_seeds`);
:class:`cvae_pms.model.sampler.KeyedSampler` draws them, ``batch`` sources per compiled call.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cvae_pms import params

if TYPE_CHECKING:
    from cvae_pms.model.sampler import KeyedSampler
from cvae_pms.seeds import source_seeds

__all__ = ["KEYED_BATCH", "KeyedSampler", "keyed_sampler", "keyed_samples", "source_seeds"]

#: Sources per compiled call of the keyed sampler.
KEYED_BATCH = 32


def __getattr__(name):   # lazy: importing this module must not import Keras (backend choice)
    if name == "KeyedSampler":
        from cvae_pms.model.sampler import KeyedSampler
        return KeyedSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def keyed_sampler(run, n_samples: int, batch: int = KEYED_BATCH):
    """The compiled :class:`cvae_pms.model.sampler.KeyedSampler` of a loaded run for
    ``n_samples`` (cached on it): the one sampler of ``infer`` and ``evaluate``."""
    from cvae_pms.model.sampler import KeyedSampler
    cache = run.__dict__.setdefault("_keyed_samplers", {})
    if (n_samples, batch) not in cache:
        cache[n_samples, batch] = KeyedSampler(run.net, n_samples, batch)
    return cache[n_samples, batch]


def keyed_samples(run, y: np.ndarray, source_id: np.ndarray, n_samples: int,
                  seed: int) -> np.ndarray:
    """Samples (n, S, 7) float32, physical units, of features ``y`` (n, D); source i is keyed
    on (seed, source_id[i])."""
    u = keyed_sampler(run, n_samples).sample_unit(y, source_seeds(seed, source_id))
    return params.from_unit(u).astype(np.float32)
