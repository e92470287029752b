"""The CVAE objective: bounded log-variances, the distributions r1, q, r2, the Monte Carlo
KL, the loss H + beta KL, and the KL annealing schedule.

Loss (Gabbard et al. 2022): ``L = H + beta * KL`` with ``H = -mean log r2(x | z_q, y)``,
``z_q`` a reparameterised draw from ``q(z|x,y)`` and
``KL ~ -entropy(q) - log r1(z_q | y)`` (KL(q || mixture) has no closed form).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from cvae_pms.model.networks import CVAENetworks

tfd = tfp.distributions

#: Smooth bounds of the log-variances (natural log): decoder and latent.
DECODER_LOGVAR = (-14.0, 0.0)
LATENT_LOGVAR = (-7.0, 1.0)
#: Truncation bounds of the decoder at the start of the optional ramp (VItamin).
RAMP_START_BOUNDS = (-10.0, 11.0)


def bounded(raw: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """Squash ``raw`` smoothly into ``(low, high)`` with a sigmoid."""
    return low + (high - low) * tf.sigmoid(raw)


@dataclass(frozen=True)
class Annealing:
    """KL weight schedule: beta = 0 before ``start`` (epoch), rising to 1 at ``end``, then 1.

    ``shape = "log"``: linear in log(epoch + 1) between start and end (Gabbard et al.:
    "logarithmically"); ``"linear"``: linear in epoch. ``truncation_ramp``: move the
    decoder's truncation bounds from [-10, 11] to [0, 1] on the same schedule.
    """

    start: int = 50
    end: int = 150
    shape: str = "log"
    truncation_ramp: bool = True

    def __post_init__(self):
        if self.end <= self.start or self.start < 0:
            raise ValueError(f"annealing needs 0 <= start < end, got {self.start}, {self.end}")
        if self.shape not in ("log", "linear"):
            raise ValueError(f"annealing shape must be 'log' or 'linear', got {self.shape!r}")

    def beta(self, epoch: float) -> float:
        """KL weight at (0-based) ``epoch``."""
        if epoch <= self.start:
            return 0.0
        if epoch >= self.end:
            return 1.0
        if self.shape == "linear":
            return (epoch - self.start) / (self.end - self.start)
        return (math.log(epoch + 1) - math.log(self.start + 1)) / (
            math.log(self.end + 1) - math.log(self.start + 1))

    def truncation_bounds(self, epoch: float) -> tuple[float, float]:
        """Decoder truncation bounds (low, high) in unit-box parameter space at ``epoch``."""
        if not self.truncation_ramp:
            return 0.0, 1.0
        r = self.beta(epoch)
        lo0, hi0 = RAMP_START_BOUNDS
        return lo0 * (1 - r), 1.0 + (hi0 - 1.0) * (1 - r)

    def to_dict(self) -> dict:
        return asdict(self)


def prior_distribution(logits: tf.Tensor, loc: tf.Tensor, logvar_raw: tf.Tensor
                       ) -> tfd.Distribution:
    """r1(z|y): Gaussian mixture with diagonal components."""
    scale = tf.exp(0.5 * bounded(logvar_raw, *LATENT_LOGVAR))
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                 tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale))


def decoder_moments(mean_raw: tf.Tensor, logvar_raw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """r2's location (sigmoid, in [0, 1]) and scale from the raw network outputs."""
    return tf.sigmoid(mean_raw), tf.exp(0.5 * bounded(logvar_raw, *DECODER_LOGVAR))


def decoder_distribution(mean_raw: tf.Tensor, logvar_raw: tf.Tensor,
                         low: tf.Tensor | float = 0.0, high: tf.Tensor | float = 1.0
                         ) -> tfd.Distribution:
    """r2(x|z,y): independent truncated normals on [low, high] for the 7 scaled parameters."""
    loc, scale = decoder_moments(mean_raw, logvar_raw)
    low = tf.cast(low, loc.dtype)
    high = tf.cast(high, loc.dtype)
    return tfd.Independent(tfd.TruncatedNormal(loc, scale, low, high),
                           reinterpreted_batch_ndims=1)


def cvae_terms(net: CVAENetworks, y: tf.Tensor, x_unit: tf.Tensor, seed: tf.Tensor,
               low: tf.Tensor | float = 0.0, high: tf.Tensor | float = 1.0,
               with_prior_fit: bool = False) -> tuple[tf.Tensor, ...]:
    """Per-batch means of H = -log r2(x|z_q,y) and the Monte Carlo KL.

    ``x_unit`` are the parameters scaled to [0, 1] (clipped exactly to the box here),
    ``seed`` a stateless-RNG seed (shape (2,), int32/int64) for the reparameterised draw.
    With ``with_prior_fit`` also ``-mean log r1(stop_gradient(z_q)|y)``: its gradient reaches
    r1 only (it is the r1-part of the KL's gradient), see :func:`training_loss`.
    """
    x = tf.clip_by_value(tf.cast(x_unit, tf.float32), 0.0, 1.0)
    h = net.encode(y)
    logits, loc, logvar = net.prior_params(h)
    q_loc, q_logvar_raw = net.posterior_params(h, x)
    q_logvar = bounded(q_logvar_raw, *LATENT_LOGVAR)
    eps = tf.random.stateless_normal(tf.shape(q_loc), seed=seed, dtype=tf.float32)
    z = q_loc + tf.exp(0.5 * q_logvar) * eps
    mean_raw, dec_logvar_raw = net.decode_from_y_part(net.decoder_y_part(h), z)
    log_r2 = decoder_distribution(mean_raw, dec_logvar_raw, low, high).log_prob(x)
    latent = tf.cast(tf.shape(q_loc)[-1], tf.float32)
    entropy_q = 0.5 * tf.reduce_sum(q_logvar, axis=-1) + 0.5 * latent * (
        1.0 + math.log(2 * math.pi))
    prior = prior_distribution(logits, loc, logvar)
    log_r1 = prior.log_prob(z)
    h_loss, kl = -tf.reduce_mean(log_r2), tf.reduce_mean(-entropy_q - log_r1)
    if not with_prior_fit:
        return h_loss, kl
    return h_loss, kl, -tf.reduce_mean(prior.log_prob(tf.stop_gradient(z)))


def training_loss(h_loss: tf.Tensor, kl: tf.Tensor, prior_fit: tf.Tensor, beta: tf.Tensor,
                  prior_warmup: bool) -> tf.Tensor:
    """The minimised loss ``H + beta KL`` (+ ``(1 - beta) prior_fit`` with ``prior_warmup``).

    With ``prior_warmup`` the prior network r1 receives the full KL gradient from the start
    while q and r2 see ``beta KL``: r1 learns to predict q's latents during the warm-up, so
    the KL is already small when beta rises and the ramp does not squeeze z to nothing
    (posterior collapse). The reported loss is always ``L = H + beta KL``.
    """
    loss = h_loss + beta * kl
    if prior_warmup:
        loss += (1.0 - beta) * prior_fit
    return loss


def unit_targets(params_physical: np.ndarray) -> np.ndarray:
    """Physical parameters (n, 7) -> float32 unit-box targets clipped to [0, 1]."""
    from cvae_pms import params
    return np.clip(params.to_unit(params_physical), 0.0, 1.0).astype(np.float32)
