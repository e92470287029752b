"""The Keras backend: which one runs (TensorFlow by default, or JAX), compiling functions
for it, and the counter-based random numbers every sampler and loss draws from.

Select the backend with ``KERAS_BACKEND=tensorflow|jax`` or ``cvae-pms --backend ...``
(:func:`select`, before Keras is first imported). The tensor code of the networks, the loss,
the features and the sampler is written in ``keras.ops``; this module is the only place that
knows the backend's own compile call (``tf.function`` or ``jax.jit``).

Random numbers are made by hashing a 32-bit counter with a per-row 64-bit key (two uint32
words) in ``keras.ops`` integer arithmetic (:func:`uniform`), so a key gives the same
numbers, bit for bit, under every backend: a model trained under one backend samples the same
posterior for the same seed under the other. The mixer is the two-multiply 32-bit integer
hash "lowbias32" (C. Wellons, "Prospecting for hash functions", 2018; bias 0.17 of an ideal
hash), applied in three rounds with the key words folded in between.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

from cvae_pms.errors import CvaePmsError

#: A tensor of the backend in use (TensorFlow or JAX).
Tensor = Any

#: The backends cvae-pms runs on (Keras 3 names).
BACKENDS = ("tensorflow", "jax")

_M1, _M2 = 0x7FEB352D, 0x846CA68B
#: Odd 32-bit constant (2^32 / golden ratio) that spreads the key's low word over the counter.
_GOLDEN32 = 0x9E3779B9


class BackendError(CvaePmsError):
    """A backend that is not installed, unknown, or asked for after Keras chose another."""


def select(name: str | None) -> str:
    """Use backend ``name`` (``tensorflow`` or ``jax``; None keeps ``KERAS_BACKEND`` or the
    default ``tensorflow``); returns the backend in use. Must run before Keras is imported:
    once it is, asking for another backend is an error (Keras cannot switch in-process)."""
    want = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if want not in BACKENDS:
        raise BackendError(f"unknown backend {want!r}: choose one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        have = sys.modules["keras"].backend.backend()
        if have != want:
            raise BackendError(f"backend {want!r} asked for, but Keras is already running on "
                         f"{have!r} in this process (set KERAS_BACKEND={want} before starting)")
        return have
    os.environ["KERAS_BACKEND"] = want
    if want == "jax":
        _enable_jax_x64()
    return want


def _enable_jax_x64() -> None:
    """The float64 parts (covariance Cholesky, information-matrix solves) stay float64 under
    JAX: x64 on before the first JAX array is made (float32 stays the network dtype)."""
    try:
        import jax
    except ImportError as exc:
        raise BackendError("the jax backend needs JAX: pip install 'cvae-pms[jax]' "
                     "(or '[jax-cuda]' on an NVIDIA GPU)") from exc
    jax.config.update("jax_enable_x64", True)


def name() -> str:
    """The backend Keras runs on in this process (imports Keras; see :func:`select`)."""
    select(None)
    import keras
    return keras.backend.backend()


def compile_fn(fn: Callable, static_argnames: tuple[str, ...] = ()) -> Callable:
    """``fn`` compiled for the backend: ``tf.function`` (retracing reduced) or ``jax.jit``
    (``static_argnames`` are Python values that select a trace, e.g. ``standardise``)."""
    if name() == "jax":
        import jax
        return jax.jit(fn, static_argnames=static_argnames)
    import tensorflow as tf
    return tf.function(fn, reduce_retracing=True)


def to_numpy(x) -> np.ndarray:
    """A backend tensor (or nested tuple of them) as numpy."""
    import keras
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(v) for v in x)
    return keras.ops.convert_to_numpy(x)


# -- counter-based random numbers -------------------------------------------------------------
def key_words(keys: np.ndarray) -> np.ndarray:
    """Per-row int64 keys (n,) -> (n, 2) uint32 words (low, high): the ``keys`` of
    :func:`uniform`."""
    k = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    return np.stack([(k & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                     (k >> np.uint64(32)).astype(np.uint32)], axis=-1)


def fold_keys(keys: np.ndarray, salt: int) -> np.ndarray:
    """(n, 2) uint32 key words -> unrelated words for another stream (``salt`` >= 0)."""
    from cvae_pms.seeds import GAMMA, mix64
    k = np.asarray(keys, np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        joined = mix64((k[..., 0] | (k[..., 1] << np.uint64(32))) + np.uint64(salt + 1) * GAMMA)
    return key_words(joined.view(np.int64))


def _u32(v: int):
    import keras
    return keras.ops.convert_to_tensor(np.uint32(v), dtype="uint32")


def _mix32(x):
    """lowbias32: x ^= x >> 16; x *= M1; x ^= x >> 15; x *= M2; x ^= x >> 16 (mod 2^32)."""
    from keras import ops
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(_M1))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(_M2))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def random_bits(keys, count: int):
    """uint32 hashes (n, count) of counters 0..count-1 under per-row key words ``keys`` (n, 2)
    uint32 (a backend tensor or numpy)."""
    from keras import ops
    keys = ops.convert_to_tensor(keys, dtype="uint32")
    k0, k1 = keys[:, 0:1], keys[:, 1:2]
    c = ops.cast(ops.arange(count), "uint32")[None, :]
    h = _mix32(ops.add(c, ops.multiply(k0, _u32(_GOLDEN32))))
    h = _mix32(ops.bitwise_xor(h, k1))
    return _mix32(ops.add(h, k0))


def uniform(keys, count: int):
    """Uniforms (n, count) float32 in (0, 1), on the grid (j + 1/2) 2^-24, j = 0..2^24-1."""
    from keras import ops
    bits = ops.right_shift(random_bits(keys, count), _u32(8))
    return (ops.cast(bits, "float32") + 0.5) * (2.0 ** -24)


def normal_from_uniform(u):
    """Standard normals from uniforms in (0, 1) by the inverse CDF, ``sqrt(2) erfinv(2u - 1)``
    (|z| <= 5.4 on the grid of :func:`uniform`)."""
    from keras import ops
    return float(np.sqrt(2.0)) * ops.erfinv(2.0 * u - 1.0)


def categorical_from_uniform(logits, u):
    """Category indices (n, S) int32 of logits (n, K) from uniforms u (n, S) by the inverse
    CDF of the softmax."""
    from keras import ops
    cdf = ops.cumsum(ops.softmax(logits, axis=-1), axis=-1)         # (n, K)
    k = ops.sum(ops.cast(u[:, :, None] > cdf[:, None, :-1], "int32"), axis=-1)
    return k
