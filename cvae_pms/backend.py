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
    """Uniforms (n, count) float32 in (0, 1), on the grid (j + 1/2) 2^-23, j = 0..2^23-1
    (every value exact in float32, so none is 0 or 1)."""
    from keras import ops
    bits = ops.right_shift(random_bits(keys, count), _u32(9))
    return (ops.cast(bits, "float32") + 0.5) * (2.0 ** -23)


def normal_from_uniform(u):
    """Standard normals from uniforms in (0, 1) by the inverse CDF, ``sqrt(2) erfinv(2u - 1)``
    (|z| <= 5.3 on the grid of :func:`uniform`)."""
    from keras import ops
    return float(np.sqrt(2.0)) * ops.erfinv(2.0 * u - 1.0)


def categorical_from_uniform(logits, u):
    """Category indices (n, S) int32 of logits (n, K) from uniforms u (n, S) by the inverse
    CDF of the softmax."""
    from keras import ops
    cdf = ops.cumsum(ops.softmax(logits, axis=-1), axis=-1)         # (n, K)
    k = ops.sum(ops.cast(u[:, :, None] > cdf[:, None, :-1], "int32"), axis=-1)
    return k


# -- stream keys (noise path) -----------------------------------------------------------------
# One key (2,) uint32 per stream: ``stream_key`` makes it from a seed, ``split_key`` and
# ``fold_in`` derive unrelated keys, ``uniform_like`` and ``normal`` draw tensors of any shape
# from a key. All are keras.ops functions of the key (tf.function, XLA and jax.jit alike;
# under TensorFlow dimensions may be tensors), so a key gives the same numbers under every
# backend (to the last bit for the uniforms; the normals to the rounding of log/cos/sin).

#: Words a key is re-keyed with by :func:`split_key`; the high word has its top bit set, so
#: no :func:`fold_in` of a non-negative integer reaches the split's base key.
_SPLIT_WORDS = (0x2545F491, 0xC13FA9A9)


def _rekey(key, w0, w1):
    """(2,) uint32 key and two uint32 words -> a new (2,) uint32 key (hash, xor, hash)."""
    from keras import ops
    t = random_bits(ops.reshape(key, (1, 2)), 2)[0]
    t = ops.bitwise_xor(t, ops.stack([w0, w1]))
    return random_bits(ops.reshape(t, (1, 2)), 2)[0]


def _int_words(x):
    """Integers (a Python int, numpy or a tensor) -> (low, high) uint32 words of their int64
    two's complement value (numpy integers are split exactly, tensors with keras.ops)."""
    from keras import ops
    if isinstance(x, (int, np.integer, np.ndarray, list, tuple)):
        w = key_words(np.asarray(x, np.int64))
        return (ops.convert_to_tensor(w[..., 0], "uint32"),
                ops.convert_to_tensor(w[..., 1], "uint32"))
    x = ops.cast(x, "int64")
    hi = ops.right_shift(x, ops.convert_to_tensor(32, "int64"))
    return ops.cast(x, "uint32"), ops.cast(hi, "uint32")


def _is_key(seed) -> bool:
    import keras
    dtype = getattr(seed, "dtype", None)
    return dtype is not None and keras.backend.standardize_dtype(dtype) == "uint32"


def stream_key(seed):
    """The (2,) uint32 key of a seed: a Python int ``s`` (= the pair ``(s, 0)``), a pair of
    integers ``(a, b)`` (a TF-style stateless seed: tuple, numpy or an int32/int64 tensor of
    shape (2,), e.g. ``tf.constant([seed, step], tf.int64)``) or a (2,) uint32 key (returned
    as it is). Pairs are hashed as int64 values: the same pair gives the same key whatever
    its container or integer dtype."""
    from keras import ops
    if _is_key(seed):
        return ops.convert_to_tensor(seed, "uint32")
    if isinstance(seed, (int, np.integer)):
        seed = (int(seed), 0)
    lo, hi = _int_words(seed)
    return _rekey(ops.stack([lo[0], hi[0]]), lo[1], hi[1])


def fold_in(key, data):
    """A new key from ``key`` (anything :func:`stream_key` takes) and an integer ``data`` (a
    Python int or a scalar int tensor, e.g. a replica id), as ``stateless_fold_in``."""
    lo, hi = _int_words(data)
    return _rekey(stream_key(key), lo, hi)


def split_key(key, k: int):
    """``k`` unrelated keys (k, 2) uint32 from ``key`` (anything :func:`stream_key` takes);
    each differs from ``key`` itself and from every :func:`fold_in` of it with data >= 0."""
    from keras import ops
    base = _rekey(stream_key(key), _u32(_SPLIT_WORDS[0]), _u32(_SPLIT_WORDS[1]))
    return ops.reshape(random_bits(ops.reshape(base, (1, 2)), 2 * int(k))[0], (int(k), 2))


def _numel(shape):
    n = 1
    for d in shape:
        n = n * d
    return n


def _flat_uniform(key, count, dtype: str):
    """``count`` uniforms (count,) in (0, 1) from one key: float32 on the grid
    (j + 1/2) 2^-23, j < 2^23 (one word each); float64 on (j + 1/2) 2^-52, j < 2^52 (two
    words each, 26 bits of each). Every grid value is exact, so none is 0 or 1."""
    from keras import ops
    key = ops.reshape(stream_key(key), (1, 2))
    if dtype == "float32":
        return uniform(key, count)[0]
    if dtype != "float64":
        raise ValueError(f"uniforms and normals are float32 or float64, not {dtype!r}")
    bits = ops.cast(ops.right_shift(random_bits(key, 2 * count)[0], _u32(6)), "float64")
    return (bits[:count] * 2.0 ** 26 + bits[count:] + 0.5) * (2.0 ** -52)


def uniform_like(key, shape, dtype: str = "float32"):
    """Uniforms in (0, 1) of ``shape`` (Python ints or, under TensorFlow, scalar int tensors)
    and ``dtype`` (float32: 23-bit grid; float64: 52-bit grid; see :func:`_flat_uniform`)
    from one key (anything :func:`stream_key` takes)."""
    from keras import ops
    return ops.reshape(_flat_uniform(key, _numel(shape), dtype), tuple(shape))


def normal(key, shape, dtype: str = "float32"):
    """Standard normals of ``shape`` and ``dtype`` (float32 or float64) from one key.

    Box-Muller on pairs of uniforms of :func:`uniform_like` (log, sqrt, cos and sin are
    accurate on every backend, unlike erfinv near +-1): ``r = sqrt(-2 ln u1)`` with
    ``u1 >= 2^-24`` (float32) or ``2^-53`` (float64), so ``|z| <= 5.77`` (float32, tail
    probability 8e-9 cut) or ``8.57`` (float64, 1e-17).
    """
    from keras import ops
    count = _numel(shape)
    m = (count + 1) // 2
    u = _flat_uniform(key, 2 * m, dtype)
    r = ops.sqrt(-2.0 * ops.log(u[:m]))
    cos, sin = _cos_sin((2.0 * np.pi) * u[m:])
    z = ops.concatenate([r * cos, r * sin], axis=0)[:count]
    return ops.reshape(z, tuple(shape))


def _cos_sin(theta):
    """cos and sin of ``theta`` in its own dtype (``keras.ops.cos``/``sin`` round float64
    to float32 under JAX: Keras's type promotion maps float64 to float32 off TensorFlow)."""
    from keras import ops
    if name() == "jax":
        import jax.numpy as jnp
        return jnp.cos(theta), jnp.sin(theta)
    return ops.cos(theta), ops.sin(theta)
