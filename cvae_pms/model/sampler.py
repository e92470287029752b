"""Fast posterior sampling from a trained CVAE: z ~ r1(z|y), x ~ r2(x|z,y), under any backend.

Per source the trunk, the mixture parameters and the y-part of r2's first layer are
computed once; per sample only the mixture component is drawn (then only that Gaussian),
followed by the rest of r2 and an inverse-CDF truncated normal on [0, 1]
(``x = mu + s * Phi^-1(Phi(a) + u (Phi(b) - Phi(a)))``). Every random number of a source
comes from its own 64-bit key through :func:`cvae_pms.backend.uniform`, so a source's samples
depend on (model, key, S) only: not on its neighbours in a batch, the batch size, or the
backend (TensorFlow and JAX give the same samples to float32 round-off). The compiled
function runs on fixed-size source batches (the last one is padded).
"""
from __future__ import annotations

import math

import numpy as np
from keras import ops

from cvae_pms import backend
from cvae_pms.model.cvae import LATENT_LOGVAR, bounded, decoder_moments
from cvae_pms.backend import Tensor
from cvae_pms.model.networks import CVAENetworks

_R2 = 1.0 / math.sqrt(2.0)


def _ndtr(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + ops.erf(x * _R2))


def truncated_normal_icdf(loc: Tensor, scale: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw of Normal(loc, scale) truncated to [0, 1] from uniforms ``u``."""
    a = _ndtr((0.0 - loc) / scale)
    b = _ndtr((1.0 - loc) / scale)
    p = ops.clip(a + u * (b - a), 1e-7, 1.0 - 1e-7)
    x = loc + scale * backend.normal_from_uniform(p)
    return ops.clip(x, 0.0, 1.0)


def draw_samples(net: CVAENetworks, y: Tensor, keys: Tensor, n_samples: int) -> Tensor:
    """Unit-box samples (n, S, 7) of features ``y`` (n, y_dim): the one sampling algorithm.

    ``keys`` (n, 2) uint32 are the rows' key words (:func:`cvae_pms.backend.key_words`); a
    row's counters 0..S-1 pick the mixture components, the next S*L the latent normals and
    the last S*7 the truncated-normal uniforms.
    """
    S, L, X = int(n_samples), net.config.latent, net.config.x_dim
    h = net.encode(y)
    logits, loc, logvar_raw = net.prior_params(h)
    scale = ops.exp(0.5 * bounded(logvar_raw, *LATENT_LOGVAR))         # (n, K, L)
    pre_y = net.decoder_y_part(h)[:, None, :]                          # (n, 1, W)
    u = backend.uniform(keys, S * (1 + L + X))
    comp = backend.categorical_from_uniform(logits, u[:, :S])           # (n, S)
    eps = backend.normal_from_uniform(ops.reshape(u[:, S:S * (1 + L)], (-1, S, L)))
    uni = ops.reshape(u[:, S * (1 + L):], (-1, S, X))
    pick = ops.one_hot(comp, net.config.components, dtype="float32")    # (n, S, K)
    mu = ops.einsum("nsk,nkl->nsl", pick, loc)
    sd = ops.einsum("nsk,nkl->nsl", pick, scale)
    mean_raw, logvar = net.decode_from_y_part(pre_y, mu + sd * eps)
    m, s = decoder_moments(mean_raw, logvar)
    return truncated_normal_icdf(m, s, uni)


class KeyedSampler:
    """Draw unit-box posterior samples (n, S, 7) from features y (n, y_dim), row i keyed on
    its own int64 key (``batch`` rows per compiled call; ``n_samples`` fixed per sampler so
    the function is traced once)."""

    def __init__(self, net: CVAENetworks, n_samples: int = 1000, batch: int = 32) -> None:
        self.net = net
        self.n_samples = int(n_samples)
        self.batch = int(batch)
        self._fn = backend.compile_fn(self._draw_batch)

    def _draw_batch(self, y, keys):
        return draw_samples(self.net, y, keys, self.n_samples)

    def sample_unit(self, y: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Unit-box samples (n, S, 7) float32 of features y (n, D), row i keyed on keys[i]."""
        y = np.asarray(y, dtype=np.float32)
        words = backend.key_words(keys)
        n = y.shape[0]
        out = np.empty((n, self.n_samples, self.net.config.x_dim), dtype=np.float32)
        for start in range(0, n, self.batch):
            block, kb = y[start:start + self.batch], words[start:start + self.batch]
            k = block.shape[0]
            if k < self.batch:
                block = np.concatenate([block, np.repeat(block[-1:], self.batch - k, 0)])
                kb = np.concatenate([kb, np.repeat(kb[-1:], self.batch - k, 0)])
            out[start:start + k] = backend.to_numpy(self._fn(block, kb))[:k]
        return out


class PosteriorSampler(KeyedSampler):
    """:class:`KeyedSampler` with the rows keyed on (seed, row index): for arrays of spectra
    without source ids (:meth:`cvae_pms.model.rundir.LoadedRun.sample`)."""

    def sample_unit(self, y: np.ndarray, seed: int = 0) -> np.ndarray:  # type: ignore[override]
        """Samples (n, S, 7) float32 in the unit box for features ``y`` (n, y_dim)."""
        from cvae_pms.seeds import source_seeds
        n = np.asarray(y).shape[0]
        return super().sample_unit(y, source_seeds(seed, np.arange(n, dtype=np.int64)))
