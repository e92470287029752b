"""The compiled training and validation steps under JAX (``KERAS_BACKEND=jax``).

The same step as :mod:`cvae_pms.training.steps_tf` (noise path, loss ``H + beta KL`` with the
optional prior warm-up, one Adam update) written stateless: ``jax.value_and_grad`` of the
loss evaluated with the network variables mapped to arrays (``keras.StatelessScope``) and
``optimizer.stateless_apply``, all in one ``jax.jit``. The arrays live on the device between
steps; :meth:`JaxSteps.push` writes them into the Keras variables (before saving weights or a
checkpoint), :meth:`JaxSteps.pull` reads them back (after a restore).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .config import TrainingError


class JaxSteps:
    """``train(batch, seed, beta, t_low, t_high)`` -> (H, KL, L) and ``val(y, x, seed, t_low,
    t_high)`` -> (val_H, val_KL) as numpy, for one device (the default JAX device)."""

    def __init__(self, state, inputs, batching, strategy=None, *, prior_warmup: bool,
                 mixed_precision: bool, jit_compile: bool) -> None:
        import jax
        import jax.numpy as jnp
        import keras

        from cvae_pms import backend
        from cvae_pms.model.cvae import cvae_terms, training_loss

        del mixed_precision, jit_compile         # refused by select_device; JAX always compiles                          # every JAX step is compiled (XLA)
        self.state, self.batching = state, batching
        net, opt = state.net, state.opt
        copies, latent = batching.copies, net.config.latent
        trainable, fixed = net.trainable_variables, net.non_trainable_variables

        def terms(tv, ntv, y, x, eps, t_low, t_high, with_prior_fit):
            mapping = list(zip(trainable, tv)) + list(zip(fixed, ntv))
            with keras.StatelessScope(state_mapping=mapping):
                return cvae_terms(net, y, x, eps, t_low, t_high, with_prior_fit=with_prior_fit)

        def objective(tv, ntv, y, x, eps, beta, t_low, t_high):
            h_loss, kl, prior_fit = terms(tv, ntv, y, x, eps, t_low, t_high, True)
            loss = training_loss(h_loss, kl, prior_fit, beta, prior_warmup)
            return loss, jnp.stack([h_loss, kl, h_loss + beta * kl])

        grad = jax.value_and_grad(objective, has_aux=True)

        def train_step(tv, ntv, ov, bp0, rp0, g0, x, seed, beta, t_low, t_high):
            y, x, eps = inputs.step_draws(bp0, rp0, g0, x, backend.fold_in(seed, 0),  # replica 0
                                          copies, latent)
            (_, vals), grads = grad(tv, ntv, y, x, eps, beta, t_low, t_high)
            tv, ov = opt.stateless_apply(ov, grads, tv)
            return tv, ov, vals

        def val_step(tv, ntv, y, x, seed, t_low, t_high):
            eps = backend.normal(backend.stream_key(seed), (x.shape[0], latent))
            return jnp.stack(terms(tv, ntv, y, x, eps, t_low, t_high, False))

        self._train = jax.jit(train_step)
        self._val = jax.jit(val_step)
        self.pull()

    # -- device state <-> Keras variables --------------------------------------------------
    def pull(self) -> None:
        """Read the network and optimizer variables (after a build or a restore)."""
        net, opt = self.state.net, self.state.opt
        self._tv = [v.value for v in net.trainable_variables]
        self._ntv = [v.value for v in net.non_trainable_variables]
        self._ov = [v.value for v in opt.variables]

    def push(self) -> None:
        """Write the device arrays into the Keras variables (weights, checkpoints, history)."""
        net, opt = self.state.net, self.state.opt
        for v, a in zip(net.trainable_variables, self._tv):
            v.assign(a)
        for v, a in zip(opt.variables, self._ov):
            v.assign(a)

    # -- steps -----------------------------------------------------------------------------
    def batches(self, rows, perm: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
        """The epoch's batches (bp0, rp0, g0, x) of ``rows`` in the order ``perm``."""
        b = self.batching.rows
        for i in range(0, len(perm) - b + 1, b):
            sl = perm[i:i + b]
            yield rows.bp[sl], rows.rp[sl], rows.g[sl], rows.x[sl]

    def train(self, batch, seed: np.ndarray, beta: float, t_low: float, t_high: float
              ) -> np.ndarray:
        """One step on ``batch``; (H, KL, L) of it."""
        self._tv, self._ov, vals = self._train(
            self._tv, self._ntv, self._ov, *batch, np.asarray(seed, np.int64),
            np.float32(beta), np.float32(t_low), np.float32(t_high))
        return np.asarray(vals, np.float64)

    def val(self, y: np.ndarray, x: np.ndarray, seed: np.ndarray, t_low: float, t_high: float
            ) -> np.ndarray:
        """(val_H, val_KL) of one validation block at the current weights."""
        return np.asarray(self._val(self._tv, self._ntv, y, x, np.asarray(seed, np.int64),
                                    np.float32(t_low), np.float32(t_high)), np.float64)

    def scalars(self, folder, epoch: int, row: dict) -> None:
        """No TensorBoard file under JAX (it needs TensorFlow): ``history.csv`` has the same."""


def select_device(mixed_precision: bool, log: Callable[[str], None]):
    """(device description, None): the default JAX device (one; no multi-device strategy)."""
    import jax
    d = jax.devices()[0]
    device = f"{d.platform.upper()} ({d.device_kind}; jax backend)"
    if d.platform == "cpu" and jax.__version__.startswith("0.10."):
        raise TrainingError(
            f"JAX {jax.__version__} on the CPU never returns from the training step (its CPU "
            f"runtime deadlocks on this step: all threads idle; JAX 0.8.3 and 0.9.2 run it); "
            f"pip install 'jax<0.10' or use --backend tensorflow")
    if mixed_precision:
        raise TrainingError("--mixed-precision is not supported under the jax backend yet "
                            "(train in float32, or use --backend tensorflow)")
    log(f"training on {device}" + (f", the first of {jax.device_count()} devices"
                                   if jax.device_count() > 1 else ""))
    return device, None


#: The steps class of this backend (what :func:`cvae_pms.training.loop.make_steps` builds).
Steps = JaxSteps
