"""Per-source keyed posterior sampling: the one sampler of ``infer``, the Python API and ``evaluate``.

The samples of a source depend only on (model, global seed, source_id, S): each source is
sampled with its own key (:func:`source_seeds`); :class:`KeyedSampler` draws them, ``batch``
sources per compiled call.
"""
from __future__ import annotations

import numpy as np

from cvae_pms import params

#: Sources per compiled call of the keyed sampler.
KEYED_BATCH = 32


def source_seeds(seed: int, source_id: np.ndarray) -> np.ndarray:
    """Per-source sampler seeds (n,) int64 >= 0: splitmix64 of (seed, source_id)."""
    from cvae_pms.seeds import GAMMA, keyed_state, mix64
    with np.errstate(over="ignore"):
        x = mix64(keyed_state(seed, source_id) + GAMMA)
    return (x >> np.uint64(1)).astype(np.int64)


class KeyedSampler:
    """:class:`cvae_pms.model.sampler.PosteriorSampler` with one stateless seed per source.

    Same algorithm and the same random streams as ``PosteriorSampler(net, S, batch=1)
    .sample_unit(y[i:i+1], seed=key_i)`` for every source i (a test checks this), but
    ``batch`` sources per compiled call: the per-source draws (mixture component, latent
    normal, truncated-normal uniforms) are made row by row with each row's own seed
    ``(key_i, 0)``, the networks run on the whole batch. So a source's samples depend on
    (model, key, S) only, not on its neighbours in a batch.
    """

    def __init__(self, net, n_samples: int = 1000, batch: int = KEYED_BATCH) -> None:
        import tensorflow as tf

        self.net = net
        self.n_samples = int(n_samples)
        self.batch = int(batch)
        self._fn = tf.function(self._draw_batch)

    def _draw_batch(self, y, seeds):
        import tensorflow as tf

        from cvae_pms.model.sampler import draw_samples

        def keyed_draws(logits, n_samples, latent, x_dim):
            comp, eps, uni = [], [], []
            for r in range(self.batch):                                    # unrolled
                s = tf.random.experimental.stateless_split(seeds[r], 3)
                comp.append(tf.random.stateless_categorical(logits[r:r + 1], n_samples,
                                                            seed=s[0]))
                eps.append(tf.random.stateless_normal((1, n_samples, latent), seed=s[1]))
                uni.append(tf.random.stateless_uniform((1, n_samples, x_dim), seed=s[2]))
            return tf.concat(comp, 0), tf.concat(eps, 0), tf.concat(uni, 0)

        return draw_samples(self.net, y, self.n_samples, keyed_draws)

    def sample_unit(self, y: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Unit-box samples (n, S, 7) float32 of features y (n, D), source i keyed on keys[i]."""
        import tensorflow as tf

        y = np.asarray(y, dtype=np.float32)
        keys = np.asarray(keys, dtype=np.int64)
        n = y.shape[0]
        out = np.empty((n, self.n_samples, self.net.config.x_dim), dtype=np.float32)
        for start in range(0, n, self.batch):
            block, kb = y[start:start + self.batch], keys[start:start + self.batch]
            k = block.shape[0]
            if k < self.batch:
                block = np.concatenate([block, np.repeat(block[-1:], self.batch - k, 0)])
                kb = np.concatenate([kb, np.repeat(kb[-1:], self.batch - k)])
            seeds = np.stack([kb, np.zeros_like(kb)], axis=1)
            out[start:start + k] = self._fn(tf.constant(block), tf.constant(seeds)).numpy()[:k]
        return out


def keyed_sampler(run, n_samples: int, batch: int = KEYED_BATCH) -> KeyedSampler:
    """The compiled :class:`KeyedSampler` of a loaded run for ``n_samples`` (cached on it):
    the one sampler of ``infer`` and ``evaluate``."""
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
