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
from keras import ops

from cvae_pms.backend import Tensor
from cvae_pms.model.networks import CVAENetworks

#: Smooth bounds of the log-variances (natural log): decoder and latent.
DECODER_LOGVAR = (-14.0, 0.0)
LATENT_LOGVAR = (-7.0, 1.0)
#: Truncation bounds of the decoder at the start of the optional ramp (VItamin).
RAMP_START_BOUNDS = (-10.0, 11.0)


def bounded(raw: Tensor, low: float, high: float) -> Tensor:
    """Squash ``raw`` smoothly into ``(low, high)`` with a sigmoid."""
    return low + (high - low) * ops.sigmoid(raw)


@dataclass(frozen=True)
class Annealing:
    """KL weight schedule: beta = 0 before ``start`` (epoch), rising to 1 at ``end``, then 1.
    ``start == end``: a step, beta = 1 from epoch ``start`` on (``0``: no annealing, for a
    warm start from a trained model).

    ``shape = "log"``: linear in log(epoch + 1) between start and end (Gabbard et al.:
    "logarithmically"); ``"linear"``: linear in epoch. ``truncation_ramp``: move the
    decoder's truncation bounds from [-10, 11] to [0, 1] on the same schedule.
    """

    start: int = 50
    end: int = 150
    shape: str = "log"
    truncation_ramp: bool = True

    def __post_init__(self):
        if self.end < self.start or self.start < 0:
            raise ValueError(f"annealing needs 0 <= start <= end, got {self.start}, {self.end}")
        if self.shape not in ("log", "linear"):
            raise ValueError(f"annealing shape must be 'log' or 'linear', got {self.shape!r}")

    def beta(self, epoch: float) -> float:
        """KL weight at (0-based) ``epoch``."""
        if self.end == self.start:
            return 1.0 if epoch >= self.start else 0.0
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


_LOG_2PI = math.log(2 * math.pi)


def _normal_log_pdf(x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    return -0.5 * ops.square((x - loc) / scale) - ops.log(scale) - 0.5 * _LOG_2PI


def prior_log_prob(logits: Tensor, loc: Tensor, logvar_raw: Tensor, z: Tensor) -> Tensor:
    """log r1(z|y) (n,) of latents z (n, L): the Gaussian mixture (logits (n, K), means and raw
    log-variances (n, K, L)) with diagonal components."""
    scale = ops.exp(0.5 * bounded(logvar_raw, *LATENT_LOGVAR))
    comp = ops.sum(_normal_log_pdf(z[:, None, :], loc, scale), axis=-1)        # (n, K)
    return ops.logsumexp(ops.log_softmax(logits, axis=-1) + comp, axis=-1)


def decoder_moments(mean_raw: Tensor, logvar_raw: Tensor) -> tuple[Tensor, Tensor]:
    """r2's location (sigmoid, in [0, 1]) and scale from the raw network outputs."""
    return ops.sigmoid(mean_raw), ops.exp(0.5 * bounded(logvar_raw, *DECODER_LOGVAR))


def decoder_log_prob(mean_raw: Tensor, logvar_raw: Tensor, x: Tensor,
                     low: Tensor | float = 0.0, high: Tensor | float = 1.0) -> Tensor:
    """log r2(x|z,y) (...,): independent normals truncated to [low, high] for the 7 scaled
    parameters, x inside the bounds. The location is inside [0, 1] and the bounds contain
    [0, 1], so the normaliser Phi(b) - Phi(a) is >= 0.34 and needs no tail care."""
    loc, scale = decoder_moments(mean_raw, logvar_raw)
    low = ops.cast(low, loc.dtype)
    high = ops.cast(high, loc.dtype)
    r = 1.0 / math.sqrt(2.0)
    mass = 0.5 * (ops.erf((high - loc) / scale * r) - ops.erf((low - loc) / scale * r))
    return ops.sum(_normal_log_pdf(x, loc, scale) - ops.log(mass), axis=-1)


def cvae_terms(net: CVAENetworks, y: Tensor, x_unit: Tensor, eps: Tensor,
               low: Tensor | float = 0.0, high: Tensor | float = 1.0,
               with_prior_fit: bool = False) -> tuple[Tensor, ...]:
    """Per-batch means of H = -log r2(x|z_q,y) and the Monte Carlo KL.

    ``x_unit`` are the parameters scaled to [0, 1] (clipped exactly to the box here),
    ``eps`` standard normals (n, latent) for the reparameterised draw ``z_q = mu + sigma eps``
    (the caller draws them, so the loss is a pure function of weights and inputs under every
    backend). With ``with_prior_fit`` also ``-mean log r1(stop_gradient(z_q)|y)``: its
    gradient reaches r1 only (it is the r1-part of the KL's gradient), see :func:`training_loss`.
    """
    x = ops.clip(ops.cast(x_unit, "float32"), 0.0, 1.0)
    h = net.encode(y)
    logits, loc, logvar = net.prior_params(h)
    q_loc, q_logvar_raw = net.posterior_params(h, x)
    q_logvar = bounded(q_logvar_raw, *LATENT_LOGVAR)
    z = q_loc + ops.exp(0.5 * q_logvar) * ops.cast(eps, "float32")
    mean_raw, dec_logvar_raw = net.decode_from_y_part(net.decoder_y_part(h), z)
    log_r2 = decoder_log_prob(mean_raw, dec_logvar_raw, x, low, high)
    latent = float(net.config.latent)
    entropy_q = 0.5 * ops.sum(q_logvar, axis=-1) + 0.5 * latent * (1.0 + _LOG_2PI)
    log_r1 = prior_log_prob(logits, loc, logvar, z)
    h_loss, kl = -ops.mean(log_r2), ops.mean(-entropy_q - log_r1)
    if not with_prior_fit:
        return h_loss, kl
    return h_loss, kl, -ops.mean(prior_log_prob(logits, loc, logvar, ops.stop_gradient(z)))


def training_loss(h_loss: Tensor, kl: Tensor, prior_fit: Tensor, beta: Tensor,
                  prior_warmup: bool) -> Tensor:
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
