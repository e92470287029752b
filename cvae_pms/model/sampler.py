"""Fast posterior sampling from a trained CVAE: z ~ r1(z|y), x ~ r2(x|z,y).

Per source the trunk, the mixture parameters and the y-part of r2's first layer are
computed once; per sample only the mixture component is drawn (then only that Gaussian),
followed by the rest of r2 and an inverse-CDF truncated normal on [0, 1]
(``x = mu + s * ndtri(Phi(a) + u (Phi(b) - Phi(a)))``), instead of TFP's samplers.
Everything runs in one ``tf.function`` over fixed-size source batches (the last batch is
padded), with stateless random numbers keyed on (seed, batch index): a fixed seed gives
identical samples, also after a save/load round trip.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from cvae_pms.model.cvae import LATENT_LOGVAR, bounded, decoder_moments
from cvae_pms.model.networks import CVAENetworks

_SQRT2 = float(np.sqrt(2.0))


def _ndtr(x: tf.Tensor) -> tf.Tensor:
    return 0.5 * tf.math.erfc(-x / _SQRT2)


def truncated_normal_icdf(loc: tf.Tensor, scale: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Inverse-CDF draw of Normal(loc, scale) truncated to [0, 1] from uniforms ``u``."""
    a = _ndtr((0.0 - loc) / scale)
    b = _ndtr((1.0 - loc) / scale)
    p = tf.clip_by_value(a + u * (b - a), 1e-7, 1.0 - 1e-7)
    x = loc + scale * tf.math.ndtri(p)
    return tf.clip_by_value(x, 0.0, 1.0)


def draw_samples(net: CVAENetworks, y: tf.Tensor, n_samples: int, random_draws) -> tf.Tensor:
    """Unit-box samples (n, S, 7) of features ``y`` (n, y_dim): the one sampling algorithm.

    ``random_draws(logits (n, K), S, latent, x_dim)`` supplies the random numbers: mixture
    components (n, S) int, standard normals (n, S, latent) and uniforms (n, S, x_dim); the
    samplers differ only in how they key them (per batch or per source).
    """
    h = net.encode(y)
    logits, loc, logvar_raw = net.prior_params(h)
    scale = tf.exp(0.5 * bounded(logvar_raw, *LATENT_LOGVAR))         # (n, K, L)
    pre_y = net.decoder_y_part(h)[:, None, :]                          # (n, 1, W)
    comp, eps, uni = random_draws(logits, n_samples, loc.shape[-1], net.config.x_dim)
    mu = tf.gather(loc, comp, batch_dims=1)                            # (n, S, L)
    sd = tf.gather(scale, comp, batch_dims=1)
    mean_raw, logvar = net.decode_from_y_part(pre_y, mu + sd * eps)
    m, s = decoder_moments(mean_raw, logvar)
    return truncated_normal_icdf(m, s, uni)


class PosteriorSampler:
    """Draw unit-box posterior samples (n, S, 7) from features y (n, y_dim).

    ``batch`` sources are processed per call of the compiled function; ``n_samples`` is
    fixed per sampler so the function is traced once.
    """

    def __init__(self, net: CVAENetworks, n_samples: int = 1000, batch: int = 64):
        self.net = net
        self.n_samples = int(n_samples)
        self.batch = int(batch)
        self._fn = tf.function(self._draw_batch)

    def _draw_batch(self, y: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        def batch_draws(logits, n_samples, latent, x_dim):
            seeds = tf.random.experimental.stateless_split(seed, 3)
            n = tf.shape(logits)[0]
            return (tf.random.stateless_categorical(logits, n_samples, seed=seeds[0]),
                    tf.random.stateless_normal(tf.stack([n, n_samples, latent]), seed=seeds[1]),
                    tf.random.stateless_uniform(tf.stack([n, n_samples, x_dim]), seed=seeds[2]))

        return draw_samples(self.net, y, self.n_samples, batch_draws)

    def sample_unit(self, y: np.ndarray, seed: int = 0) -> np.ndarray:
        """Samples (n, S, 7) float32 in the unit box for features ``y`` (n, y_dim)."""
        y = np.asarray(y, dtype=np.float32)
        n = y.shape[0]
        out = np.empty((n, self.n_samples, self.net.config.x_dim), dtype=np.float32)
        for i, start in enumerate(range(0, n, self.batch)):
            block = y[start:start + self.batch]
            k = block.shape[0]
            if k < self.batch:
                block = np.concatenate([block, np.repeat(block[-1:], self.batch - k, 0)])
            seed_t = tf.constant([int(seed), i], dtype=tf.int64)
            out[start:start + k] = self._fn(tf.constant(block), seed_t).numpy()[:k]
        return out
