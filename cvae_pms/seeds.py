"""Per-source random streams keyed on (seed, source_id): the SplitMix64 mixer.

One definition for every place that derives reproducible per-source numbers from an integer
key, independent of batch order or chunking (``infer`` sampler seeds, prior resampling).
SplitMix64: Steele, Lea & Flood 2014 (OOPSLA), the output function of Java's SplittableRandom.
"""
from __future__ import annotations

import numpy as np

#: The SplitMix64 increment (golden-ratio constant 2^64 / phi).
GAMMA = np.uint64(0x9E3779B97F4A7C15)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 output function on uint64 arrays (wrap-around arithmetic, no warnings)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_state(seed: int, keys: np.ndarray, salt: int = 0) -> np.ndarray:
    """uint64 stream states (n,) for integer ``keys`` (e.g. source_id): ``keys ^ (seed GAMMA
    + salt)``; different ``salt`` values give unrelated streams for the same key."""
    with np.errstate(over="ignore"):
        return (np.asarray(keys, dtype=np.int64).astype(np.uint64)
                ^ (np.uint64(seed) * GAMMA + np.uint64(salt)))


def source_seeds(seed: int, source_id: np.ndarray) -> np.ndarray:
    """Per-source sampler keys (n,) int64 >= 0: splitmix64 of (seed, source_id)."""
    with np.errstate(over="ignore"):
        x = mix64(keyed_state(seed, source_id) + GAMMA)
    return (x >> np.uint64(1)).astype(np.int64)
