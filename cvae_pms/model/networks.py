"""The three CVAE networks as Keras 3 layers: a shared trunk on the spectrum features y,
the prior encoder r1(z|y), the recognition encoder q(z|x,y) and the decoder r2(x|z,y).

The networks return plain tensors (logits, means, raw log-variances); the distributions
are built from them in :mod:`cvae_pms.model.cvae` and :mod:`cvae_pms.model.sampler`
(``tfp.layers`` does not work inside Keras 3 models). The decoder's first layer is split
into a y-part (with bias) and a z-part (without), so the sampler can compute the y-part
once per source.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import ops

from cvae_pms.backend import Tensor


#: Default relative variance floor of the whitening (caps the gain of any direction at 100).
WHITEN_FLOOR = 1e-4


@dataclass(frozen=True)
class NetworkConfig:
    """Shapes of the CVAE networks (every default visible here and in ``training/*.toml``).

    ``trunk``: widths of the dense trunk on y; ``conv_filters``/``conv_kernel``: optional
    1-D convolutions over the pixel axis before it (y is read as (pixels, channels));
    ``components``/``latent``: mixture size and latent dimension of r1;
    ``r1_hidden``, ``q_hidden``, ``r2_hidden``: head widths; ``activation``: Keras name;
    ``whiten``: principal components kept by a fixed (non-trainable) PCA-whitening projection
    of the first ``whiten_dim`` inputs (the spectral features) in front of the trunk, set once
    from the training draws by :func:`whitening_matrix` (0 = no projection); inputs past
    ``whiten_dim`` (the luminosity channel) pass through unchanged; ``whiten_floor``: the
    variance floor of :func:`whitening_matrix` relative to the mean variance (the gain of any
    direction is at most ``1 / sqrt(whiten_floor)``).
    """

    y_dim: int
    x_dim: int = 7
    trunk: tuple[int, ...] = (512, 512, 256)
    conv_filters: tuple[int, ...] = ()
    conv_kernel: int = 5
    conv_channels: int = 2
    latent: int = 10
    components: int = 16
    r1_hidden: tuple[int, ...] = (256,)
    q_hidden: tuple[int, ...] = (256,)
    r2_hidden: tuple[int, ...] = (256, 256)
    activation: str = "swish"
    prior_mean_init_std: float = 1.0
    logvar_bias_init: float = -1.0
    whiten: int = 0
    whiten_dim: int = 0
    whiten_floor: float = WHITEN_FLOOR

    def __post_init__(self) -> None:
        if self.whiten < 0 or self.whiten > self.whiten_dim or self.whiten_dim > self.y_dim:
            raise ValueError(f"whiten = {self.whiten} components of whiten_dim = "
                             f"{self.whiten_dim} inputs: need 0 <= whiten <= whiten_dim <= "
                             f"y_dim ({self.y_dim})")
        if self.whiten and self.conv_filters:
            raise ValueError("whiten and conv_filters exclude each other (the convolutions "
                             "need the pixel order that the projection removes)")

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        """Build from a config dict (lists become tuples; unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise KeyError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _mlp(widths: tuple[int, ...], activation: str, name: str, seed: int
         ) -> list[keras.layers.Layer]:
    return [keras.layers.Dense(w, activation=activation, name=f"{name}_{i}",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i))
            for i, w in enumerate(widths)]


class CVAENetworks(keras.Model):
    """Trunk, r1, q and r2 of the Gabbard-style CVAE.

    Output heads are float32 even under a mixed-precision policy.
    """

    def __init__(self, config: NetworkConfig, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        c = config
        init = lambda s: keras.initializers.GlorotUniform(seed=seed + s)  # noqa: E731
        self.trunk_layers: list[keras.layers.Layer] = []
        self.whiten_layer = (keras.layers.Dense(c.whiten, use_bias=False, trainable=False,
                                                name="whiten") if c.whiten else None)
        if c.conv_filters:
            n_pix = c.y_dim // c.conv_channels
            if n_pix * c.conv_channels != c.y_dim:
                raise ValueError(f"y_dim {c.y_dim} is not a multiple of {c.conv_channels} channels")
            self.trunk_layers += [keras.layers.Reshape((c.conv_channels, n_pix)),
                                  keras.layers.Permute((2, 1))]
            for i, f in enumerate(c.conv_filters):
                self.trunk_layers += [
                    keras.layers.Conv1D(f, c.conv_kernel, padding="same", activation=c.activation,
                                        kernel_initializer=init(100 + i), name=f"conv_{i}"),
                    keras.layers.MaxPooling1D(2)]
            self.trunk_layers.append(keras.layers.Flatten())
        for i, w in enumerate(c.trunk):
            self.trunk_layers.append(keras.layers.Dense(
                w, activation=c.activation, kernel_initializer=init(i), name=f"trunk_{i}"))
        kl = c.components * c.latent
        self.r1_hidden = _mlp(c.r1_hidden, c.activation, "r1", seed + 200)
        self.r1_logits = keras.layers.Dense(c.components, dtype="float32", name="r1_logits",
                                            kernel_initializer=init(500))
        self.r1_loc = keras.layers.Dense(
            kl, dtype="float32", name="r1_loc", kernel_initializer=init(501),
            bias_initializer=keras.initializers.RandomNormal(stddev=c.prior_mean_init_std,
                                                             seed=seed + 7))
        self.r1_logvar = keras.layers.Dense(
            kl, dtype="float32", name="r1_logvar", kernel_initializer=init(502),
            bias_initializer=keras.initializers.Constant(c.logvar_bias_init))
        self.q_hidden = _mlp(c.q_hidden, c.activation, "q", seed + 300)
        self.q_loc = keras.layers.Dense(c.latent, dtype="float32", name="q_loc",
                                        kernel_initializer=init(503))
        self.q_logvar = keras.layers.Dense(
            c.latent, dtype="float32", name="q_logvar", kernel_initializer=init(504),
            bias_initializer=keras.initializers.Constant(c.logvar_bias_init))
        w0 = c.r2_hidden[0]
        self.r2_first_y = keras.layers.Dense(w0, name="r2_first_y", kernel_initializer=init(505))
        self.r2_first_z = keras.layers.Dense(w0, use_bias=False, name="r2_first_z",
                                             kernel_initializer=init(506))
        self.r2_act = keras.layers.Activation(c.activation)
        self.r2_hidden = _mlp(c.r2_hidden[1:], c.activation, "r2", seed + 400)
        self.r2_mean = keras.layers.Dense(c.x_dim, dtype="float32", name="r2_mean",
                                          kernel_initializer=init(507))
        self.r2_logvar = keras.layers.Dense(c.x_dim, dtype="float32", name="r2_logvar",
                                            kernel_initializer=init(508))

    # -- pieces -------------------------------------------------------------------------
    def encode(self, y: Tensor) -> Tensor:
        """Trunk: features y (n, y_dim) -> encoding h (n, trunk[-1])."""
        h = y
        if self.whiten_layer is not None:
            d = self.config.whiten_dim
            h = ops.concatenate([self.whiten_layer(h[:, :d]), h[:, d:]], axis=-1)
        for layer in self.trunk_layers:
            h = layer(h)
        return h

    def prior_params(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """r1(z|y): mixture logits (n, K), means (n, K, L), raw log-variances (n, K, L)."""
        c = self.config
        a = h
        for layer in self.r1_hidden:
            a = layer(a)
        shape = (-1, c.components, c.latent)
        return (self.r1_logits(a), ops.reshape(self.r1_loc(a), shape),
                ops.reshape(self.r1_logvar(a), shape))

    def posterior_params(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x,y): means (n, L) and raw log-variances (n, L); x is scaled to [0, 1]."""
        a = ops.concatenate([h, ops.cast(x, h.dtype)], axis=-1)
        for layer in self.q_hidden:
            a = layer(a)
        return self.q_loc(a), self.q_logvar(a)

    def decoder_y_part(self, h: Tensor) -> Tensor:
        """The y-part (with bias) of r2's first layer, computed once per source."""
        return self.r2_first_y(h)

    def decode_from_y_part(self, pre_y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """r2(x|z,y) from the y-part: raw means (..., 7) and raw log-variances (..., 7).

        ``pre_y`` broadcasts against the leading axes of ``z`` (e.g. (n, 1, W) with (n, S, L)).
        """
        a = self.r2_act(pre_y + self.r2_first_z(ops.cast(z, pre_y.dtype)))
        for layer in self.r2_hidden:
            a = layer(a)
        return self.r2_mean(a), self.r2_logvar(a)

    def call(self, inputs, training: bool = False):
        """Run every piece once (used to build the weights): inputs = (y, x, z)."""
        y, x, z = inputs
        h = self.encode(y)
        logits, loc, logvar = self.prior_params(h)
        q_loc, q_logvar = self.posterior_params(h, x)
        mean, dec_logvar = self.decode_from_y_part(self.decoder_y_part(h), z)
        return logits, loc, logvar, q_loc, q_logvar, mean, dec_logvar


def whitening_matrix(y: np.ndarray, k: int, floor: float = WHITEN_FLOOR) -> np.ndarray:
    """PCA-whitening projection (d, k) of standardised features ``y`` (n, d).

    The first ``k`` principal axes divided by ``sqrt(variance + floor * mean variance)``:
    directions well above the floor come out with unit variance, so small-variance ones
    (band depths, subtle shape changes: variances 1e-2..1e-4 of the largest) reach the trunk
    at the scale of the overall colour, which speeds up training of the first layer; the
    floor caps the gain (at ``1/sqrt(floor)``) of directions the training draws hardly
    populate, which a real spectrum's systematics could otherwise blow up.
    """
    y = np.asarray(y, np.float64)
    if y.ndim != 2 or not 0 < k <= y.shape[1]:
        raise ValueError(f"whitening: need (n, d) features and 0 < k <= d, got {y.shape}, k={k}")
    yc = y - y.mean(0)
    var, vec = np.linalg.eigh(yc.T @ yc / max(y.shape[0] - 1, 1))
    order = np.argsort(var)[::-1][:k]
    eps = floor * max(float(np.mean(np.maximum(var, 0.0))), 1e-30)
    return (vec[:, order] / np.sqrt(np.maximum(var[order], 0.0) + eps)).astype(np.float32)


def build_networks(config: NetworkConfig, seed: int = 0) -> CVAENetworks:
    """Create the networks with seeded initialisers and build their weights."""
    net = CVAENetworks(config, seed=seed)
    net((ops.zeros((1, config.y_dim)), ops.zeros((1, config.x_dim)),
         ops.zeros((1, config.latent))))
    return net
